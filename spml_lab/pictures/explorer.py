"""An ipywidgets explorer of one batch's embeddings: pick a pixel, see what is "the same".

Sliders choose a query pixel (image, y, x at embedding resolution) and a relation; one picture
shows, for every image of the batch, the relation's positive (green) and negative (red)
segments for that pixel over the image, and under it the cosine of the query's embedding with
every pixel (`embedding_viz.similarity_maps`); a table lists the segments whose prototypes are
nearest the query. The picture is composed with numpy and PIL, not matplotlib, so that moving a
slider redraws in a few hundredths of a second.

Rendering is one function of an `ExplorerState` (`Explorer.render`), used by the widget's
callbacks and by `Explorer.static_figure`: a notebook run headlessly (papermill, nbval) shows
the static figure, and the widget comes alive when a Jupyter front end is attached.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from spml_lab.constants import IGNORE_INDEX  # one definition of "unlabelled"
from spml_lab.method import relations
from spml_lab.pictures import viz
from spml_lab.pictures.arrays import embedding_array, nearest_resize, to_numpy
from spml_lab.pictures.embedding_viz import heat_rgb, similarity_maps

__all__ = ["ExplorerState", "Explorer", "NO_RELATION"]

NO_RELATION = "none"  # the relation selector's "draw no relation" entry
_GAP, _HEADER, _BAR = 6, 16, 14  # pixels between panels, above each row, colour bar width


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: a query pixel and a relation.

    Attributes
    ----------
    image, y, x : int
        Query pixel: image of the batch, row and column at embedding resolution.
    relation : str
        One of `relations.RELATIONS`, or `NO_RELATION` for the plain images.
    """

    image: int = 0
    y: int = 0
    x: int = 0
    relation: str = NO_RELATION


class Explorer:
    r"""Similarity maps, relation pictures and nearest segments of a query pixel, as a widget.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray
    embeddings : (B, h, w, D) float ndarray or tensor
        Channels last, as `embedding_nets.embed` gives them
        (``lesson_batch.LessonBatch.embeddings``; or use `Explorer.from_batch`).
    segments : clustering.Segments, optional
        The batch's segments (``segment_ids`` (B, h, w)); needed for relations and the list of
        nearest segments.
    labels : (B, H', W') int ndarray or tensor, optional
        Weak labels (255 = unlabelled) at any resolution, nearest-sampled to (h, w); enables
        the semantic-annotation relation.
    tags : (B, C) bool tensor, optional
        Image tags; enables the co-occurrence relation.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        Passed to `relations.positives_negatives`; its segments are counted, not drawn.
    class_names : list of str, optional
        Names of the weak labels in the nearest-segment list.
    top_k : int, optional
        Nearest segments listed.
    zoom : int, optional
        Each image pixel drawn as ``zoom x zoom``; default 2 for images up to 160 px, else 1.
    value_range : (float, float), optional
        Cosines drawn at the two ends of the colour map. An untrained network maps most pixels
        to nearly the same direction (cosines near 1): a range like ``(0.5, 1.0)`` shows its
        structure.

    Attributes
    ----------
    widget : ipywidgets.VBox
        Sliders ``"image"``, ``"x"``, ``"y"``, a ``"relation"`` dropdown, the picture (an
        ``ipywidgets.Image``, CSS class ``spml-similarity``) and the nearest-segment table;
        the container has CSS class ``spml-explorer``.
    relations : tuple of str
        The relations the given inputs allow.

    Examples
    --------
    >>> emb = np.random.default_rng(0).normal(size=(2, 2, 2, 4))  # (B, h, w, D)
    >>> ex = Explorer(np.zeros((2, 8, 8, 3), np.uint8), emb)
    >>> png = ex.render(ExplorerState(image=1, y=1, x=0))
    >>> png[:4], ex.relations
    (b'\x89PNG', ())
    """

    def __init__(
        self,
        images,
        embeddings,
        *,
        segments=None,
        labels=None,
        tags=None,
        memory=None,
        class_names=None,
        top_k=8,
        zoom=None,
        value_range=(-1.0, 1.0),
    ):
        self.images = np.asarray(images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (B, H, W, 3) uint8, got {self.images.shape}")
        emb = embedding_array(embeddings)  # (B, h, w, D)
        if emb.shape[0] != self.images.shape[0]:
            raise ValueError(f"embeddings hold {emb.shape[0]} images, images {len(self.images)}")
        self.embeddings = emb
        self.grid = emb.shape[1:3]  # (h, w)
        self.segments, self.memory = segments, memory
        self.tags = None if tags is None else torch.as_tensor(tags)  # relations take tensors
        self.labels = None
        if labels is not None:
            self.labels = torch.from_numpy(
                nearest_resize(labels, self.grid, ndim=3, name="labels").astype(np.int64)
            )
            if len(self.labels) != len(emb):
                raise ValueError(f"labels hold {len(self.labels)} images, embeddings {len(emb)}")
        if segments is not None and tuple(segments.segment_ids.shape) != emb.shape[:3]:
            raise ValueError(
                f"segments.segment_ids must be {emb.shape[:3]}, got "
                f"{tuple(segments.segment_ids.shape)}"
            )
        needs = {"semantic_annotation": self.labels, "cooccurrence": self.tags}
        self.relations = ()
        if segments is not None:
            self.relations = tuple(r for r in relations.RELATIONS if needs.get(r, 0) is not None)
        self.class_names = class_names
        self.top_k = top_k
        self.zoom = zoom or (2 if self.images.shape[1] <= 160 else 1)
        self.value_range = tuple(float(v) for v in value_range)
        if len(self.value_range) != 2 or self.value_range[0] >= self.value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        self.widget = self._build_widget()

    @classmethod
    def from_batch(cls, batch, *, memory=None, **options):
        """Explorer of a `lesson_batch.LessonBatch` (images, embeddings, segments, labels, tags).

        Parameters
        ----------
        batch : lesson_batch.LessonBatch
        memory : optional
            As in the class.
        **options
            Further keyword arguments of the class (``top_k``, ``zoom``).

        Returns
        -------
        explorer : Explorer
        """
        return cls(
            batch.images, batch.embeddings, segments=batch.segments, labels=batch.labels,
            tags=batch.tags, memory=memory, class_names=batch.class_names,
            **options,
        )  # fmt: skip

    # ------------------------------------------------------------------ the pure rendering

    def _check(self, state):
        b, y, x = state.image, state.y, state.x
        if not (0 <= b < len(self.images) and 0 <= y < self.grid[0] and 0 <= x < self.grid[1]):
            raise ValueError(
                f"state (image, y, x) must lie inside {(len(self.images), *self.grid)}, got "
                f"{(b, y, x)}"
            )
        if state.relation != NO_RELATION and state.relation not in self.relations:
            raise ValueError(
                f"relation {state.relation!r} is not available; choose from "
                f"{(NO_RELATION, *self.relations)}"
            )

    def roles(self, state):
        """Find the relation's positive and negative segments of the query pixel.

        Parameters
        ----------
        state : ExplorerState

        Returns
        -------
        positives, negatives : (S_total,) bool tensors or None
            As `relations.positives_negatives` (batch segments, then memory); None without
            a relation.
        """
        self._check(state)
        if state.relation == NO_RELATION:
            return None
        height, width = self.grid
        pixel = (state.image * height + state.y) * width + state.x
        return relations.positives_negatives(
            state.relation, pixel, torch.from_numpy(self.embeddings), self.labels, self.tags,
            self.segments, self.memory,
        )  # fmt: skip

    def picture(self, state):
        """Compose the explorer's picture for a state.

        Parameters
        ----------
        state : ExplorerState

        Returns
        -------
        rgb : (H', W', 3) uint8 ndarray
            Top row: each image (with the relation's segments when one is chosen); bottom row:
            the cosine with the query, blue `value_range` low to red high (colour bar on the
            right); the query
            is a ring with a cross on its image in both rows.
        """
        roles = self.roles(state)
        count, height, width = self.images.shape[:3]
        b = state.image
        if roles is None:
            top = list(self.images)
        else:
            ids = to_numpy(self.segments.segment_ids)
            own = int(ids[b, state.y, state.x])
            top = [
                viz.relation_picture(self.images[i], ids[i], *roles, own if i == b else None)
                for i in range(count)
            ]
        maps = similarity_maps(self.embeddings, (b, state.y, state.x))
        low, high = self.value_range
        bottom = heat_rgb(nearest_resize(maps, (height, width)), vmin=low, vmax=high)
        z = self.zoom
        panel_h, panel_w = height * z, width * z
        canvas = np.full(
            # room under the bottom row and right of the bar for the tick labels
            (2 * (panel_h + _HEADER) + _GAP + 14, count * (panel_w + _GAP) + _BAR + 30, 3),
            255,
            np.uint8,
        )
        for row, pictures in enumerate((top, bottom)):
            y0 = row * (panel_h + _HEADER + _GAP) + _HEADER
            for i, pic in enumerate(pictures):
                x0 = i * (panel_w + _GAP)
                canvas[y0 : y0 + panel_h, x0 : x0 + panel_w] = pic.repeat(z, 0).repeat(z, 1)
        # colour bar beside the bottom row: +1 at the top
        y0, x0 = panel_h + 2 * _HEADER + _GAP, count * (panel_w + _GAP)
        ramp = heat_rgb(np.linspace(high, low, panel_h), vmin=low, vmax=high)  # (panel_h, 3)
        canvas[y0 : y0 + panel_h, x0 : x0 + _BAR] = ramp[:, None]
        out = Image.fromarray(canvas)
        self._annotate(ImageDraw.Draw(out), state, (panel_h, panel_w), (y0, x0))
        return np.asarray(out)

    def _annotate(self, draw, state, panel, bar):
        """Titles, colour-bar ticks and the query marker, drawn on the composed picture."""
        font = ImageFont.load_default(size=11)
        (panel_h, panel_w), (bar_y, bar_x) = panel, bar
        relation = "" if state.relation == NO_RELATION else f" - {state.relation}"
        for i in range(len(self.images)):
            x0 = i * (panel_w + _GAP)
            title = f"image {i}" + (f" (query){relation}" if i == state.image else "")
            draw.text((x0 + 2, 2), title, fill=(0, 0, 0), font=font)
            draw.text((x0 + 2, bar_y - _HEADER + 2), "cosine to query", fill=(0, 0, 0), font=font)
        low, high = self.value_range
        for frac in (0.0, 0.5, 1.0):
            y = bar_y + frac * (panel_h - 1) - 6
            value = f"{high + frac * (low - high):+.2g}".replace("+0", "0")
            draw.text((bar_x + _BAR + 3, y), value, fill=(0, 0, 0), font=font)
        # the query, at the centre of its embedding pixel, in both rows
        sy, sx = panel_h / self.grid[0], panel_w / self.grid[1]
        cx = state.image * (panel_w + _GAP) + (state.x + 0.5) * sx
        for y0 in (_HEADER, bar_y):
            cy = y0 + (state.y + 0.5) * sy
            r = max(4.0, 0.6 * max(sx, sy))
            # a black ring around a white one reads on both light and dark pictures
            black = (cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
            draw.ellipse(black, outline=(0, 0, 0), width=3)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255), width=1)
            draw.line((cx - r - 3, cy, cx + r + 3, cy), fill=(0, 0, 0), width=1)
            draw.line((cx, cy - r - 3, cx, cy + r + 3), fill=(0, 0, 0), width=1)

    def render(self, state):
        """Encode the picture of a state as PNG bytes (what the widget's Image shows).

        Parameters
        ----------
        state : ExplorerState

        Returns
        -------
        png : bytes
            Same state, same bytes.
        """
        buffer = io.BytesIO()
        Image.fromarray(self.picture(state)).save(buffer, format="png", compress_level=1)
        return buffer.getvalue()

    def nearest_segments(self, state, k=None):
        """List the batch's segments whose prototypes are most similar to the query's embedding.

        Parameters
        ----------
        state : ExplorerState
        k : int, optional
            How many; default the explorer's ``top_k``.

        Returns
        -------
        rows : list of dict
            Most similar first: ``{"segment", "image", "size", "label", "cosine", "own"}``;
            ``label`` is the segment's weak label name (``"unlabelled"`` for 255), ``own``
            whether it is the query pixel's segment. Empty without segments.
        """
        self._check(state)
        if self.segments is None:
            return []
        vector = self.embeddings[state.image, state.y, state.x]
        vector = vector / max(np.linalg.norm(vector), 1e-12)
        protos = to_numpy(self.segments.prototypes, np.float64)  # (S, D) unit rows
        cosine = protos @ vector  # (S,)
        order = np.argsort(-cosine, kind="stable")[: k or self.top_k]
        own = int(to_numpy(self.segments.segment_ids)[state.image, state.y, state.x])
        labels = to_numpy(self.segments.labels)
        names = self.class_names
        return [
            {
                "segment": int(s),
                "image": int(self.segments.image_ids[s]),
                "size": int(self.segments.sizes[s]),
                "label": "unlabelled"
                if labels[s] == IGNORE_INDEX
                else (names[labels[s]] if names else str(labels[s])),
                "cosine": float(cosine[s]),
                "own": int(s) == own,
            }
            for s in order
        ]

    def summary(self, state):
        """Say in one line how many segments are positive and negative for the query."""
        roles = self.roles(state)
        if roles is None:
            return "no relation drawn"
        positives, negatives = (to_numpy(r, bool) for r in roles)
        if not (positives.any() or negatives.any()):
            return f"{state.relation}: the query pixel takes no part"
        count = self.segments.num_segments
        line = (
            f"{state.relation}: {positives[:count].sum()} positive, "
            f"{negatives[:count].sum()} negative segments in the batch"
        )
        if len(positives) > count:
            line += (
                f" (+ memory: {positives[count:].sum()} positive, "
                f"{negatives[count:].sum()} negative)"
            )
        return line

    def table_html(self, state):
        """Write the nearest-segment list and the relation summary as HTML (for the widget)."""
        rows = self.nearest_segments(state)
        head = f"<b>query</b> image {state.image}, y {state.y}, x {state.x}; "
        head += html.escape(self.summary(state))
        if not rows:
            return head + "<br>no segments given"
        cells = "".join(
            f"<tr><td>{r['segment']}{' (own)' if r['own'] else ''}</td><td>{r['image']}</td>"
            f"<td>{r['size']}</td><td>{html.escape(r['label'])}</td><td>{r['cosine']:.3f}</td></tr>"
            for r in rows
        )
        header = "<tr><th>segment</th><th>image</th><th>pixels</th><th>label</th><th>cosine</th>"
        return f"{head}<table>{header}</tr>{cells}</table>"

    def static_figure(self, state=None, *, dpi=100):
        """Draw the widget's picture and table as a matplotlib figure (for headless runs).

        Parameters
        ----------
        state : ExplorerState, optional
            Default the widget's current state.
        dpi : int, optional
            Picture pixels per inch: the figure shows the picture at its own size.

        Returns
        -------
        fig : matplotlib.figure.Figure
        """
        state = state or self.state
        picture = self.picture(state)
        rows = self.nearest_segments(state)
        lines = [f"{'segment':>12} {'image':>5} {'pixels':>6}  {'label':<14} cosine"]
        lines += [
            f"{str(r['segment']) + (' (own)' if r['own'] else ''):>12} {r['image']:>5} "
            f"{r['size']:>6}  {r['label']:<14} {r['cosine']:.3f}"
            for r in rows
        ]
        text_h = 0.16 * (len(lines) + 1) if rows else 0.0
        height, width = picture.shape[0] / dpi, picture.shape[1] / dpi
        total = height + text_h + 0.3  # inches: title, picture, table
        fig = plt.figure(figsize=(width, total), dpi=dpi)
        ax = fig.add_axes((0, text_h / total, 1, height / total))
        ax.imshow(picture, interpolation="nearest")
        ax.axis("off")
        fig.suptitle(
            f"query: image {state.image}, y {state.y}, x {state.x} - {self.summary(state)}",
            fontsize=9,
        )
        if rows:
            fig.text(0.01, 0.01, "nearest segments\n" + "\n".join(lines), family="monospace",
                     fontsize=7, va="bottom")  # fmt: skip
        return fig

    # ------------------------------------------------------------------ the widget

    @property
    def state(self):
        """The state the widget shows now (`ExplorerState`)."""
        return ExplorerState(
            image=self._controls["image"].value, y=self._controls["y"].value,
            x=self._controls["x"].value, relation=self._controls["relation"].value,
        )  # fmt: skip

    def _build_widget(self):
        import ipywidgets as widgets

        count, (height, width) = len(self.images), self.grid
        slider = {"continuous_update": True, "style": {"description_width": "50px"}}
        self._controls = {
            "image": widgets.IntSlider(0, 0, count - 1, description="image", **slider),
            "x": widgets.IntSlider(width // 2, 0, width - 1, description="x", **slider),
            "y": widgets.IntSlider(height // 2, 0, height - 1, description="y", **slider),
            "relation": widgets.Dropdown(
                options=[NO_RELATION, *self.relations], value=NO_RELATION, description="relation"
            ),
        }
        state = self.state
        self._picture = widgets.Image(value=self.render(state), format="png")
        self._picture.add_class("spml-similarity")
        self._table = widgets.HTML(self.table_html(state))
        for control in self._controls.values():
            control.observe(self._update, names="value")
        controls = widgets.HBox(list(self._controls.values()))
        box = widgets.VBox([controls, self._picture, self._table])
        box.add_class("spml-explorer")
        return box

    def _update(self, _change):
        state = self.state
        self._picture.value = self.render(state)
        self._table.value = self.table_html(state)
