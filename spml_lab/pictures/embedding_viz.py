"""Pictures of embeddings: UMAP scatters, cosine-similarity maps, cosine distributions.

A contrastive embedding is good when pixels of one class point the same way and pixels of
different classes do not. Three pictures show it: a UMAP of sampled pixels and segments coloured
by class, annotation state and image (do classes form islands? do unlabelled pixels join the
labelled ones?); the cosine of one query pixel against every pixel of several images (what
does the network think is "the same"?); and the distributions of same-class and different-class
cosines (`embedding_stats.cosine_distributions`). PCA colours are `viz.pca_rgb`.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np

from spml_lab.pictures import viz
from spml_lab.pictures.arrays import embedding_array, to_numpy

__all__ = [
    "umap_project",
    "umap_scatter",
    "similarity_maps",
    "similarity_range",
    "heat_rgb",
    "show_similarity",
    "plot_cosine_distributions",
]

QUERY_STAR = {"marker": "*", "markersize": 14, "markerfacecolor": "white", "markeredgecolor": "k"}


def umap_project(vectors, *, random_state=0, n_neighbors=15, min_dist=0.1, metric="cosine"):
    """Project embeddings to 2-d with UMAP, repeatably.

    Parameters
    ----------
    vectors : (N, D) float ndarray or tensor
        E.g. ``sample["vectors"]`` of `embedding_stats.sample_pixels`; N >= 3.
    random_state : int, optional
        Seed: the same vectors and seed give the same points (UMAP then runs on one thread).
    n_neighbors : int, optional
        Size of the neighbourhood UMAP preserves (larger: more global structure); at most N - 1.
    min_dist : float, optional
        How tightly points may pack in the picture.
    metric : str, optional
        ``"cosine"``: only directions matter, as in the contrastive loss.

    Returns
    -------
    points : (N, 2) float32 ndarray

    Notes
    -----
    umap-learn compiles its kernels with numba on the first call of a session (about 10 to 15 s
    on a laptop CPU); later calls on a few thousand points take about a second. Keep N to a few
    thousand (`sample_pixels`' ``num_samples``). Two warnings are silenced: the one about a
    seed disabling parallelism, and the one about a disconnected neighbour graph, which is
    what well-separated classes give.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> points = umap_project(rng.normal(size=(30, 4)), n_neighbors=5)  # ~10 s: numba compiles
    >>> points.shape
    (30, 2)
    """
    vectors = to_numpy(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) < 3:
        raise ValueError(f"vectors must be (N, D) with N >= 3, got shape {vectors.shape}")
    with warnings.catch_warnings():
        # umap's __init__ warns that TensorFlow (for ParametricUMAP) is missing
        warnings.simplefilter("ignore", ImportWarning)
        import umap

    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, len(vectors) - 1),
        min_dist=min_dist,
        metric=metric,
        random_state=random_state,
        n_jobs=1,  # what a seed forces anyway; saying so avoids umap's warning
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not fully connected.*")
        return reducer.fit_transform(vectors).astype(np.float32)


def _legend(ax, colours, labels, segments):
    """Legend of the colours (round markers), plus the segment marker when segments are drawn."""
    handles = [
        plt.Line2D([], [], linestyle="", marker="o", markersize=6, color=c, label=t)
        for c, t in zip(colours, labels, strict=True)
    ]
    if segments:
        handles.append(
            plt.Line2D([], [], linestyle="", marker="D", color="w", mec="k", label="segment")
        )
    # under the panel: a legend of many classes inside it would hide points
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2, frameon=False)  # fmt: skip


def umap_scatter(
    points,
    sample,
    *,
    by=("classes", "labelled", "images"),
    class_names=None,
    colours=None,
    size=3.6,
    title=None,
):
    """Scatter 2-d points once per colouring: true class, annotation state, image.

    Parameters
    ----------
    points : (N, 2) float ndarray
        From `umap_project` (or any 2-d projection) of ``sample["vectors"]``.
    sample : dict of (N,) ndarrays
        From `embedding_stats.sample_pixels` / ``sample_segments`` / ``join_samples``; uses the
        keys named in `by` and ``"segment"`` (segments are drawn as larger outlined diamonds).
    by : sequence of {"classes", "labelled", "images"}, optional
        One panel per entry, in this order.
    class_names : list of str, optional
        Legend names of the class ids; default ``"class <id>"``.
    colours : (C, 3) uint8 ndarray, optional
        Class colours; default ``viz.palette`` (the colours of every other picture).
    size : float, optional
        Side of one panel in inches.
    title : str, optional
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
        One titled panel per colouring, each with a legend.

    Examples
    --------
    >>> sample = {"classes": np.array([0, 1, 1]), "labelled": np.array([True, False, False]),
    ...           "images": np.array([0, 0, 1]), "segment": np.array([False, False, True])}
    >>> fig = umap_scatter(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), sample)
    >>> [ax.get_title() for ax in fig.axes]
    ['true class', 'annotation', 'image']
    >>> plt.close(fig)
    """
    import seaborn as sns

    points = to_numpy(points, np.float64)
    names = {"classes": "true class", "labelled": "annotation", "images": "image"}
    unknown = [b for b in by if b not in names]
    if unknown:
        raise ValueError(f"by must name keys among {list(names)}, got {unknown}")
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(sample[by[0]]):
        raise ValueError(f"points must be (N, 2) with N = sample rows, got {points.shape}")
    segment = sample.get("segment", np.zeros(len(points), bool))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(by), figsize=(size * len(by), size), squeeze=False)
    for ax, key in zip(axes[0], by, strict=True):
        values = np.asarray(sample[key])
        if key == "classes":
            present = np.unique(values)
            table = viz.palette(int(present.max()) + 1) if colours is None else colours
            rgb = np.asarray(table, np.float64)[values] / 255
            labels = [class_names[c] if class_names else f"class {c}" for c in present]
            legend = (np.asarray(table)[present] / 255, labels)
        elif key == "labelled":
            values = values.astype(bool)
            two = np.array([[0.75, 0.75, 0.75], [0.1, 0.1, 0.1]])  # unlabelled light, labelled dark
            rgb = two[values.astype(int)]
            legend = (two[::-1], ["labelled", "unlabelled"])
        else:
            present = np.unique(values)
            table = np.asarray(sns.color_palette("tab10", max(int(present.max()) + 1, 1)))
            rgb = table[values % len(table)]
            legend = (table[present % len(table)], [f"image {i}" for i in present])
        # rare values drawn last, so sparse labels and small classes are not buried
        counts = {v: n for v, n in zip(*np.unique(values, return_counts=True), strict=True)}
        order = np.argsort([-counts[v] for v in values.tolist()], kind="stable")
        # segments (larger) first, so that the pixels stay visible on top of them
        for is_segment, marker, area in ((True, "D", 16), (False, "o", 5)):
            picked = order[segment[order] == is_segment]
            if len(picked):
                edge = "k" if is_segment else "none"
                ax.scatter(*points[picked].T, c=rgb[picked], s=area, marker=marker, lw=0.3,
                           edgecolors=edge)  # fmt: skip
        _legend(ax, *legend, segment.any())
        ax.set_title(names[key], fontsize=10)
        ax.set_xlabel("UMAP 1", fontsize=8)
        ax.set_ylabel("UMAP 2", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title + (" (diamonds: segments)" if segment.any() else ""), fontsize=11)
    fig.tight_layout()
    return fig


def similarity_maps(embeddings, query):
    """Cosine of one query pixel's embedding with every pixel of every image.

    Parameters
    ----------
    embeddings : (B, h, w, D) float ndarray or tensor
        Channels last, as `embedding_nets.embed` gives them.
    query : (int, int, int)
        ``(image, y, x)`` of the query pixel at embedding resolution.

    Returns
    -------
    maps : (B, h, w) float64 ndarray
        In [-1, 1]; 1 at the query pixel (0 for an all-zero embedding).

    Raises
    ------
    ValueError
        If `query` lies outside the map.

    Examples
    --------
    >>> emb = np.array([[[[1.0, 0.0], [0.0, 2.0]]]])  # (1, 1, 2, 2): pixels (1, 0), (0, 2)
    >>> similarity_maps(emb, (0, 0, 0)).tolist()
    [[[1.0, 0.0]]]
    """
    emb = embedding_array(embeddings)
    b, y, x = (int(q) for q in query)
    if not (0 <= b < emb.shape[0] and 0 <= y < emb.shape[1] and 0 <= x < emb.shape[2]):
        raise ValueError(f"query (image, y, x) must lie inside {emb.shape[:3]}, got {query}")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return np.clip(unit @ unit[b, y, x], -1.0, 1.0)  # (B, h, w)


def similarity_range(maps, *, quantile=0.02, widest=0.9):
    """Return the cosines a similarity map's colours span: from a low quantile up to 1.

    An untrained network's cosines all lie near 1: on the full range [-1, 1] its map would be
    a flat red. Each network gets its own range instead, written in the figure's title.

    Parameters
    ----------
    maps : (B, h, w) float ndarray
        From `similarity_maps`.
    quantile : float, optional
        The share of cosines allowed below the range.
    widest : float, optional
        The lower end is at most this, so the range is at least ``1 - widest`` wide.

    Returns
    -------
    low, high : float
        ``low`` floored to a tenth; ``high`` = 1.

    Examples
    --------
    >>> similarity_range(np.linspace(0.95, 1.0, 100)), similarity_range(np.linspace(-1, 1, 100))
    ((0.9, 1.0), (-1.0, 1.0))
    """
    low = np.floor(np.quantile(to_numpy(maps, np.float64), quantile) * 10) / 10
    return min(widest, float(low)), 1.0


def heat_rgb(maps, *, cmap="RdBu_r", vmin=-1.0, vmax=1.0):
    """Colour a value map with a matplotlib colour map (a lookup, fast enough for widgets).

    Parameters
    ----------
    maps : (...) float ndarray
    cmap : str, optional
        Diverging by default: red similar, blue opposite, white orthogonal.
    vmin, vmax : float, optional
        Values drawn at the two ends.

    Returns
    -------
    rgb : (..., 3) uint8 ndarray

    Examples
    --------
    >>> heat_rgb(np.array([-1.0, 1.0]), cmap="gray").tolist()
    [[0, 0, 0], [255, 255, 255]]
    """
    scaled = (np.asarray(maps, np.float64) - vmin) / max(vmax - vmin, 1e-12)
    rgba = np.asarray(plt.get_cmap(cmap)(np.clip(scaled, 0.0, 1.0)))  # a 0-d input gives a tuple
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def show_similarity(
    images, maps, query, *, col_titles=None, title=None, cmap="RdBu_r", value_range=(-1, 1),
    size=2.4,
):  # fmt: skip
    """Draw the images over their similarity maps, query marked, with a colour bar.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray
    maps : (B, h, w) float ndarray
        From `similarity_maps`; drawn stretched over each image (h, w may be coarser).
    query : (int, int, int)
        ``(image, y, x)`` at the resolution of `maps`; a star on both rows of its image.
    col_titles : list of str, optional
        One per image; default ``"image b"`` with ``"(query)"`` on the query's.
    title : str, optional
        Figure title.
    cmap : str, optional
        Colour map of the cosines.
    value_range : (float, float), optional
        Cosines at the two ends of the colour map; e.g. ``(0.5, 1)`` for an untrained network,
        whose cosines all lie near 1.
    size : float, optional
        Side of one panel in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> maps = similarity_maps(np.ones((2, 3, 4, 4)), (1, 2, 3))
    >>> fig = show_similarity(np.zeros((2, 8, 8, 3), np.uint8), maps, (1, 2, 3))
    >>> len(fig.axes)  # 2 x 2 panels and the colour bar
    5
    >>> plt.close(fig)
    """
    images, maps = np.asarray(images), to_numpy(maps, np.float64)
    if images.shape[0] != maps.shape[0]:
        raise ValueError(f"images hold {images.shape[0]} pictures, maps {maps.shape[0]}")
    b, y, x = (int(q) for q in query)
    count, height, width = images.shape[:3]
    titles = col_titles or [f"image {i}" + (" (query)" if i == b else "") for i in range(count)]
    # constrained layout shrinks every panel alike to make room for the colour bar
    fig, axes = plt.subplots(
        2, count, figsize=(size * count + 0.8, 2 * size), squeeze=False, layout="constrained"
    )
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the map covers the image exactly
    for i in range(count):
        axes[0, i].imshow(images[i])
        shown = axes[1, i].imshow(
            maps[i], cmap=cmap, vmin=value_range[0], vmax=value_range[1], extent=extent
        )
        axes[0, i].set_title(titles[i], fontsize=9)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("cosine to the query", fontsize=9)
    sy, sx = height / maps.shape[1], width / maps.shape[2]
    for ax in axes[:, b]:
        ax.plot((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, **QUERY_STAR)
    fig.colorbar(shown, ax=axes.ravel().tolist(), label="cosine", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_cosine_distributions(
    distributions, *, title=None, colours=None, size=(5.5, 3.2), cut=False
):
    """Plot same-class and different-class cosine distributions of one or more models.

    Parameters
    ----------
    distributions : dict of str to (intra, inter)
        Per model name, the two (n,) cosine arrays of `embedding_stats.cosine_distributions`.
    title : str, optional
    colours : list of colours, optional
        One per model; default seaborn's ``"deep"`` palette.
    size : (float, float), optional
        Figure size in inches.
    cut : bool, optional
        Cut the x axis to where the pairs lie (from the lowest 0.5 %, floored to a tenth, to
        1) and put the legend beside the axes: after a short training every cosine lies in a
        narrow band near 1, which the full range [-1, 1] would squash.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Kernel density curves (clipped to [-1, 1]): a model's colour, solid for same-class,
        dashed for different-class pairs; a good embedding separates the two.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> intra, inter = rng.uniform(0.5, 1, 50), rng.uniform(-1, 0.5, 50)
    >>> fig = plot_cosine_distributions({"net": (intra, inter)})
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['net: same class', 'net: different classes']
    >>> plt.close(fig)
    """
    import seaborn as sns

    if not distributions:
        raise ValueError("distributions is empty: give {model name: (intra, inter)}")
    colours = colours or sns.color_palette("deep", len(distributions))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=size)
    for colour, (name, (intra, inter)) in zip(colours, distributions.items(), strict=False):
        for values, style, kind in ((intra, "-", "same class"), (inter, "--", "different classes")):
            values = to_numpy(values, np.float64)
            sns.kdeplot(x=values, ax=ax, color=colour, linestyle=style, clip=(-1.0, 1.0),
                        label=f"{name}: {kind}", warn_singular=False)  # fmt: skip
    ax.set_xlim(-1.05, 1.05)
    if cut:
        pooled = np.concatenate([to_numpy(v, np.float64) for pair in distributions.values()
                                 for v in pair])  # fmt: skip
        ax.set_xlim(max(-1.0, np.floor(np.quantile(pooled, 0.005) * 10) / 10), 1.0)
    ax.set_xlabel("cosine similarity of a pixel pair")
    ax.set_ylabel("density")
    if cut:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
