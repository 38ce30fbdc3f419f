"""Scribble on your own photo in JupyterLab and watch SPML learn to segment it.

`ScribbleWidget` puts a photo on an `ipycanvas.Canvas`: paint strokes with a brush per class
(or the eraser), press **Train** (or turn on **live**, which retrains after every stroke), and
the forest's mask, then SPML's, appear beside it, SPML's refining every few training steps.
Training runs in a background thread (`scribbling.Training`), so the canvas keeps taking
strokes while it trains; a new Train press stops the old run.

The canvas is as many pixels as the photo (at `photos.SIDE`, 256 px, on its longer side) and
drawn larger by CSS: ipycanvas reports mouse positions in canvas pixels, so a mouse position is
a photo pixel. The label map in the kernel is the source of truth; each brush movement redraws
only its own box of the canvas from it (`scribbling.paint` returns that box).

A headless run (papermill, nbval) has no front end: `ScribbleWidget.static_figure` draws the
same photo, scribbles and masks with matplotlib.
"""

from __future__ import annotations

import html
import io

import numpy as np
from PIL import Image

from spml_lab.classroom import photos, scribbling
from spml_lab.constants import IGNORE_INDEX
from spml_lab.pictures import viz

__all__ = ["ERASER", "ScribbleWidget"]

ERASER = "eraser"
DISPLAY = 512  # CSS pixels of the canvas's longer side: a 256 px photo at twice its size


def _png(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="png", compress_level=1)  # fast, still lossless
    return buffer.getvalue()


class ScribbleWidget:
    """A photo to scribble on, and its SPML and forest masks as they train.

    Parameters
    ----------
    photo : str, Path or (H, W, 3) ndarray, optional
        One of `photos.PHOTOS`, the path of your own photo, or an image array; scaled to
        `side` px on its longer side.
    class_names : list of str, optional
        At least two. Default: the stored classes of a bundled photo that has stored strokes,
        else ``["background", "object"]``.
    scribbles : (H, W) int ndarray, optional
        Strokes to start from (class ids, 255 = unlabelled). Default: the stored strokes of a
        bundled photo (`photos.stored`), else none.
    steps : int, optional
        SPML's training steps (default ``one_image.RECIPE.steps``).
    seed : int, optional
    side : int, optional
        Longer side of the photo in pixels: 256 keeps a Train press within seconds on a CPU.
    radius : int, optional
        Starting brush radius in pixels (a slider changes it).
    live : bool, optional
        Start with live mode on (retrain after every stroke).

    Attributes
    ----------
    image : (H, W, 3) uint8 ndarray
    scribbles : (H, W) uint8 ndarray
        The painted label map; 255 = unlabelled.
    masks : dict
        ``{"forest": mask, "spml": mask}``, (H, W) uint8 ndarrays, None until trained.
    training : scribbling.Training
    widget : ipywidgets.VBox
        The user interface, CSS class ``spml-scribble``: the canvas (class
        ``spml-scribble-canvas``), the masks (``img.spml-mask-spml``, ``img.spml-mask-forest``)
        and a status line (``spml-scribble-status``).

    Examples
    --------
    >>> pad = ScribbleWidget(np.zeros((32, 48, 3), np.uint8), side=48)
    >>> pad.paint((2, 2), (20, 2))  # (x, y) to (x, y), with the first class's brush
    >>> pad.scribbles[2, :23].tolist() == [0] * 23, pad.scribbles[6, 2]  # radius 3 reaches row 5
    (True, np.uint8(255))
    """

    def __init__(
        self,
        photo="chelsea",
        *,
        class_names=None,
        scribbles=None,
        steps=None,
        seed=0,
        side=photos.SIDE,
        radius=3,
        live=False,
    ):
        self.side = side
        self.image = None  # set by `load`
        self.masks = {method: None for method in scribbling.ORDER}
        self.training = scribbling.Training(
            self._show_mask, self._show_status, steps=steps, seed=seed
        )
        self._build_widget(radius, live)
        self.load(photo, class_names=class_names, scribbles=scribbles)
        scribbling.warm_up()  # while the user paints, so that the first Train is quick

    # ------------------------------------------------------------------ state

    @property
    def class_names(self):
        """The class names, in id order (edit them in the "classes" box, comma-separated)."""
        return [n.strip() for n in self._controls["classes"].value.split(",") if n.strip()]

    @property
    def colours(self):
        """(K, 3) uint8 colour of each class (`viz.palette`)."""
        return viz.palette(len(self.class_names))

    def load(self, photo, *, class_names=None, scribbles=None):
        """Show another photo, with its stored strokes if it has some, and forget the masks.

        Parameters
        ----------
        photo, class_names, scribbles
            As in the class.

        Raises
        ------
        FileNotFoundError, ValueError
            If `photo` cannot be read or `scribbles` does not fit it; the widget is unchanged.
        """
        stored = photos.stored().get(photo) if isinstance(photo, str) else None
        if isinstance(photo, np.ndarray):
            image = photos.fit(photo, self.side)
        else:
            image = photos.load(photo, self.side)
        if scribbles is None and stored is not None:
            scribbles = photos.stored_scribbles(photo, image.shape[:2])
        if scribbles is None:
            scribbles = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        scribbles = np.asarray(scribbles)
        names = list(class_names or (stored["classes"] if stored else ["background", "object"]))
        if len(names) < 2 or len(set(names)) < len(names) or ERASER in names:
            raise ValueError(f"class_names: need two or more different names, got {names}")
        if scribbles.shape != image.shape[:2]:
            raise ValueError(
                f"scribbles are {scribbles.shape} but the photo is {image.shape[:2]} at side "
                f"{self.side}; draw them on the photo at that size"
            )
        ids = set(np.unique(scribbles).tolist()) - {IGNORE_INDEX}
        if ids and (min(ids) < 0 or max(ids) >= len(names)):
            raise ValueError(f"scribbles: ids {sorted(ids)} but {len(names)} class_names")
        self.training.stop()
        self.image, self.scribbles = image, scribbles.astype(np.uint8)
        self.masks = {method: None for method in scribbling.ORDER}
        height, width = image.shape[:2]
        zoom = DISPLAY / max(height, width)
        self.canvas.width, self.canvas.height = width, height
        self.canvas.layout.width = f"{round(width * zoom)}px"
        self.canvas.layout.height = f"{round(height * zoom)}px"
        self._controls["classes"].value = ", ".join(names)  # the brushes follow
        # the drop-down names the photo shown, or none (an array, a file)
        self._controls["photo"].index = (
            photos.PHOTOS.index(photo)
            if isinstance(photo, str) and photo in photos.PHOTOS
            else None
        )
        for method, picture in self._masks.items():
            picture.layout.width = f"{round(width * zoom / 2)}px"
            picture.value = _png(image)  # the plain photo until a mask comes
            self._titles[method].value = f"<b>{method}</b>: not trained yet"
        self._redraw()
        self._show_status("paint strokes, then press Train")

    # ------------------------------------------------------------------ painting

    def paint(self, start, end=None, brush=None):
        """Paint one brush movement with the selected brush (or `brush`), and redraw its box.

        Parameters
        ----------
        start, end : (float, float)
            ``(x, y)`` in photo pixels; `end` defaults to `start` (one dab).
        brush : str, optional
            A class name or `ERASER`; default the selected one.
        """
        brush = self._controls["brush"].value if brush is None else brush
        value = IGNORE_INDEX if brush == ERASER else self.class_names.index(brush)
        radius = self._controls["radius"].value
        box = scribbling.paint(self.scribbles, start, start if end is None else end, radius, value)
        if box is not None:
            self._redraw(box)

    def clear(self):
        """Erase every stroke."""
        self.scribbles[:] = IGNORE_INDEX
        self._redraw()

    def _redraw(self, box=None):
        """Draw the photo with its strokes on the canvas, all of it or one (rows, cols) box."""
        from ipycanvas import hold_canvas

        rows, cols = box or (slice(None), slice(None))
        rgb = viz.overlay(self.image[rows, cols], self.scribbles[rows, cols], self.colours, 1.0)
        # RGBA: ipycanvas sends 3-channel arrays as JPEG, which would blur the strokes' edges
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        with hold_canvas():
            self.canvas.put_image_data(rgba, cols.start or 0, rows.start or 0)

    def _mouse_down(self, x, y):
        self._last = (x, y)
        self.paint((x, y))

    def _mouse_move(self, x, y):
        if self._last is not None:
            self.paint(self._last, (x, y))
            self._last = (x, y)

    def _mouse_up(self, x, y):
        if self._last is None:
            return
        self._last = None
        if self._controls["live"].value:
            self.train()

    # ------------------------------------------------------------------ training

    def train(self, _button=None):
        """Train the forest, then SPML, on the strokes as they are now (in the background)."""
        for method in self.masks:
            self._titles[method].value = f"<b>{method}</b>: training..."
        self.training.start(self.image, self.scribbles, num_classes=len(self.class_names))

    def _show_mask(self, method, step, mask):
        self.masks[method] = mask
        self._masks[method].value = _png(viz.overlay(self.image, mask, self.colours, alpha=0.5))
        seconds = self.training.times[(method, step)]
        where = "" if method == "forest" else f"step {step} of {self.training.steps}, "
        self._titles[method].value = f"<b>{method}</b>: {where}{seconds:.1f} s after Train"

    def _show_status(self, text):
        self._status.value = html.escape(text)

    # ------------------------------------------------------------------ the widget

    def _build_widget(self, radius, live):
        import ipywidgets as widgets
        from ipycanvas import Canvas

        self._controls = {
            "photo": widgets.Dropdown(options=photos.PHOTOS, description="photo"),
            "path": widgets.Text(placeholder="or the path of your photo", description="file"),
            "load": widgets.Button(description="Load"),
            "classes": widgets.Text(description="classes"),
            "brush": widgets.ToggleButtons(options=(), style={"button_width": "auto"}),
            "radius": widgets.IntSlider(radius, 1, 15, description="brush size"),
            "train": widgets.Button(description="Train", button_style="primary"),
            "live": widgets.Checkbox(value=live, description="live", indent=False),
            "clear": widgets.Button(description="Clear"),
        }
        self._legend = widgets.HTML()
        self.canvas = Canvas(width=16, height=16)
        self.canvas.add_class("spml-scribble-canvas")
        self._last = None  # the previous mouse position while the button is down
        self.canvas.on_mouse_down(self._mouse_down)
        self.canvas.on_mouse_move(self._mouse_move)
        self.canvas.on_mouse_up(self._mouse_up)
        self.canvas.on_mouse_out(self._mouse_up)
        self.canvas.on_client_ready(lambda: self._redraw())  # a new view starts blank
        self._masks, self._titles = {}, {}
        for method in scribbling.ORDER:
            self._masks[method] = widgets.Image(format="png")
            self._masks[method].add_class(f"spml-mask-{method}")
            self._titles[method] = widgets.HTML()
        self._status = widgets.HTML()
        self._status.add_class("spml-scribble-status")
        c = self._controls
        c["load"].on_click(self._load_clicked)
        c["classes"].observe(self._classes_changed, names="value")
        c["train"].on_click(self.train)
        c["clear"].on_click(lambda _button: self.clear())
        masks = widgets.VBox(
            [w for m in ("spml", "forest") for w in (self._titles[m], self._masks[m])]
        )
        self.widget = widgets.VBox([
            widgets.HBox([c["photo"], c["path"], c["load"]]),
            widgets.HBox([c["classes"], self._legend]),
            widgets.HBox([c["brush"], c["radius"]]),
            widgets.HBox([c["train"], c["live"], c["clear"]]),
            widgets.HBox([self.canvas, masks]),
            self._status,
        ])  # fmt: skip
        self.widget.add_class("spml-scribble")

    def _load_clicked(self, _button):
        source = self._controls["path"].value.strip() or self._controls["photo"].value
        if source is None:
            self._show_status("choose a photo, or type the path of yours")
            return
        try:
            self.load(source)
        except (OSError, ValueError) as error:
            self._show_status(f"cannot load {source}: {error}")

    def _classes_changed(self, _change):
        names = self.class_names
        if len(names) < 2 or len(set(names)) < len(names) or ERASER in names:
            self._show_status(f"classes: need two or more different names, got {names}")
            return
        brush = self._controls["brush"]
        selected = brush.value
        brush.options = [*names, ERASER]
        brush.value = selected if selected in brush.options else names[0]
        # strokes of a class that no longer exists become unlabelled
        self.scribbles[(self.scribbles >= len(names)) & (self.scribbles != IGNORE_INDEX)] = (
            IGNORE_INDEX
        )
        swatches = " ".join(
            f'<span style="background: rgb{tuple(int(v) for v in colour)}; padding: 0 6px">'
            f"&nbsp;</span> {html.escape(name)}"
            for name, colour in zip(names, self.colours, strict=True)
        )
        self._legend.value = swatches
        if self.image is not None:
            self._redraw()

    # ------------------------------------------------------------------ headless

    def static_figure(self, *, title=None):
        """Draw the photo, its scribbles and the masks so far (matplotlib, for headless runs).

        Returns
        -------
        fig : matplotlib.figure.Figure
        """
        masks = {m: self.masks[m] for m in ("spml", "forest")}
        return scribbling.masks_figure(
            self.image, self.scribbles, masks, self.class_names, title=title
        )
