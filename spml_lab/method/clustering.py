"""Segments for SPML: batched spherical k-means, location features, segment construction.

SPML contrasts pixels with *segments*. Each training image is over-segmented by spherical
(von Mises-Fisher) k-means on its pixel embeddings ``v_i`` concatenated with their location,
started from a regular ``gy x gx`` grid; each cluster is then split by superpixel id and by
weak semantic label, so that every segment is pure in both. A segment's prototype ``u_s`` is
the normalised mean of its pixels' embeddings.

Everything works on a whole batch at once: k-means offsets each image's cluster ids into one
shared id space (one ``index_add`` for all means, one ``bmm`` for all assignments), and the
segments come from one ``torch.unique`` over a combined (image, cluster, superpixel, label) key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spml_lab.constants import KMEANS_GRID, KMEANS_ITERATIONS

__all__ = [
    "grid_labels",
    "location_features",
    "with_location",
    "spherical_kmeans",
    "Segments",
    "segment_prototypes",
    "build_segments",
    "segment_batch",
    "segment_statistics",
]


def grid_labels(height, width, grid, *, device=None):
    """Label pixels by a regular grid of ``gy x gx`` cells: the initial k-means clusters.

    Parameters
    ----------
    height, width : int
        Image size H, W in pixels.
    grid : (int, int)
        ``(gy, gx)``, cells along y and x.
    device : torch.device, optional

    Returns
    -------
    labels : (H, W) int64 tensor
        ``y(r) + gy * x(c)`` with ``y = round(linspace(0, gy - 1, H))`` (half to even, as
        numpy), likewise x; ids lie in ``[0, gy * gx)``. Some are absent when H < gy or W < gx.

    Raises
    ------
    ValueError
        If a size or a grid count is not a positive integer.

    Examples
    --------
    >>> grid_labels(3, 4, (2, 2))
    tensor([[0, 0, 2, 2],
            [0, 0, 2, 2],
            [1, 1, 3, 3]])
    """
    gy, gx = (int(g) for g in grid)
    if min(height, width) < 1 or min(gy, gx) < 1:
        raise ValueError(f"height, width and grid must be positive, got {height, width, grid}")
    # float64 linspace, so exact halves (rounded to even) match numpy's round(linspace)
    y = torch.linspace(0, gy - 1, height, dtype=torch.float64, device=device).round().long()
    x = torch.linspace(0, gx - 1, width, dtype=torch.float64, device=device).round().long()
    return y[:, None] + gy * x[None, :]


def location_features(height, width, *, dtype=torch.float32, device=None):
    """Pixel coordinates scaled to ``[-0.5, 0.5]``, the location half of k-means features.

    Parameters
    ----------
    height, width : int
        Image size H, W.
    dtype, device : optional
        Of the result.

    Returns
    -------
    locations : (H, W, 2) float tensor
        ``[..., 0]`` is y, ``[..., 1]`` is x; first row/column -0.5, last +0.5.
        ``locations.reshape(-1, 2)`` gives the ``(H * W, 2)`` row-major form.

    Examples
    --------
    >>> location_features(2, 3)[..., 1]
    tensor([[-0.5000,  0.0000,  0.5000],
            [-0.5000,  0.0000,  0.5000]])
    """
    y = torch.linspace(0, 1, height, dtype=dtype, device=device) - 0.5
    x = torch.linspace(0, 1, width, dtype=dtype, device=device) - 0.5
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy, xx], dim=-1)


def with_location(embeddings, locations, *, weight=1.0):
    """Concatenate ``[v_i, weight * location_i]`` and re-normalise each row.

    Parameters
    ----------
    embeddings : (..., D) float tensor
        Unit-row embeddings.
    locations : (..., 2) float tensor
        From `location_features`, broadcastable against `embeddings`' leading dimensions.
    weight : float, optional
        Scale of the location part. The paper's code uses 1: a unit embedding next to
        coordinates of at most 0.5 each, so location nudges but does not dominate the clusters.

    Returns
    -------
    features : (..., D + 2) float tensor
        Unit rows.

    Examples
    --------
    >>> with_location(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([[1., 0., 0., 0.]])
    """
    locations = (weight * locations).to(embeddings.dtype)
    locations = locations.expand(*embeddings.shape[:-1], locations.shape[-1])
    return F.normalize(torch.cat([embeddings, locations], dim=-1), dim=-1)


def spherical_kmeans(
    embeddings, init_labels, iterations=KMEANS_ITERATIONS, *, num_clusters=None, valid=None
):
    """Spherical k-means on every image of a batch at once, from given initial labels.

    Parameters
    ----------
    embeddings : (B, N, D) float tensor
        Unit-row features of N pixels per image.
    init_labels : (B, N) int tensor
        Initial cluster id of each pixel, in ``[0, K)`` (e.g. `grid_labels` flattened).
    iterations : int, optional
        Rounds of (mean, assignment); 0 returns `init_labels`. Default: training's
        (`constants.KMEANS_ITERATIONS`, the paper's 10).
    num_clusters : int, optional
        K shared by all images. Default ``init_labels.max() + 1``, which reads one value back
        from the device; pass it (e.g. ``gy * gx``) to avoid that sync.
    valid : (B, N) bool tensor, optional
        False for pixels to leave out (padding): they neither move a mean nor get a cluster.

    Returns
    -------
    labels : (B, N) int64 tensor
        Each image's cluster ids in the same space as its `init_labels`; -1 where not `valid`.

    Raises
    ------
    ValueError
        On mismatched shapes, or (CPU only, where checking costs no sync) ids outside [0, K).

    Notes
    -----
    Image b's cluster k is row ``b * K + k`` of one ``(B * K, D)`` table: one ``index_add``
    forms every cluster sum, one ``bmm`` scores every pixel against its own image's K
    prototypes. A cluster that runs empty gets a zero prototype, whose similarity 0 still
    wins for a pixel with negative similarity to every other prototype (ties go to the lowest
    id), as in the paper's code. Runs without autograd: assignments are not differentiable.

    Examples
    --------
    >>> emb = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    >>> spherical_kmeans(F.normalize(emb, dim=-1), torch.tensor([[0, 1, 1, 1]]), 3)
    tensor([[0, 0, 1, 1]])
    """
    shapes = [tuple(t.shape) for t in (embeddings, init_labels, valid) if t is not None]
    if embeddings.ndim != 3 or any(shape != shapes[0][:2] for shape in shapes[1:]):
        raise ValueError(f"need embeddings (B, N, D), init_labels and valid (B, N), got {shapes}")
    num_images, num_pixels, dim = embeddings.shape
    labels = init_labels.long()
    if valid is not None:
        labels = torch.where(valid, labels, 0)
    if num_clusters is None:
        num_clusters = int(labels.max()) + 1 if labels.numel() else 1
    if labels.device.type == "cpu" and labels.numel():
        if labels.min() < 0 or labels.max() >= num_clusters:
            raise ValueError(f"init_labels must lie in [0, {num_clusters}) for valid pixels")
    with torch.no_grad():
        embeddings = embeddings.detach().to(torch.promote_types(embeddings.dtype, torch.float32))
        weighted = embeddings if valid is None else embeddings * valid[..., None]
        weighted = weighted.reshape(-1, dim)  # (B * N, D)
        offsets = torch.arange(num_images, device=labels.device)[:, None] * num_clusters
        for _ in range(iterations):
            sums = embeddings.new_zeros(num_images * num_clusters, dim)
            sums.index_add_(0, (labels + offsets).reshape(-1), weighted)  # (B * K, D)
            prototypes = F.normalize(sums, dim=1)  # empty cluster: 0 / eps = zero prototype
            prototypes = prototypes.view(num_images, num_clusters, dim)
            similarity = torch.bmm(embeddings, prototypes.transpose(1, 2))  # (B, N, K)
            labels = similarity.argmax(2)
    return labels if valid is None else torch.where(valid, labels, -1)


@dataclass
class Segments:
    """The segments of a batch: who belongs where, and what each segment is.

    Attributes
    ----------
    segment_ids : (B, ...) int64 tensor
        Each pixel's row in the per-segment fields, -1 for pixels left out.
    prototypes : (S, D) float tensor
        Normalised mean embedding per segment; differentiable w.r.t. the embeddings.
    labels : (S,) int64 tensor
        The segment's weak label, ``ignore_index`` (255) if unlabelled.
    image_ids : (S,) int64 tensor
        Image of the batch the segment lies in; segments are sorted by image.
    superpixels : (S,) int64 tensor
        Superpixel id of the segment within its image.
    clusters : (S,) int64 tensor
        k-means cluster id of the segment within its image.
    sizes : (S,) int64 tensor
        Pixels per segment.
    tags : (S, C) bool tensor or None
        Tags of the segment's image (when image tags were given).
    first_image : int
        Index in the global batch of the first image of ``segment_ids``: 0, except for the
        segments of several processes joined by `distributed.gather_segments`.
    num_images : int or None
        Images of the global batch the rows come from; None: those of ``segment_ids``.
    """

    segment_ids: torch.Tensor
    prototypes: torch.Tensor
    labels: torch.Tensor
    image_ids: torch.Tensor
    superpixels: torch.Tensor
    clusters: torch.Tensor
    sizes: torch.Tensor
    tags: torch.Tensor | None = None
    first_image: int = 0
    num_images: int | None = None

    @property
    def num_segments(self):
        """Number of segments S."""
        return self.prototypes.shape[0]

    @property
    def is_global(self):
        """Whether the rows are those of a global batch larger than this process's images."""
        return self.num_images is not None


def segment_prototypes(features, segment_ids, num_segments):
    """Normalised mean feature of each segment (differentiable).

    Parameters
    ----------
    features : (..., D) float tensor
        Per-pixel features (embeddings, or embeddings with location).
    segment_ids : (...) int tensor
        Segment of each pixel in ``[0, num_segments)``; negative ids are left out.
    num_segments : int
        S.

    Returns
    -------
    prototypes : (S, D) float tensor
        Unit rows, float32 or wider; a segment without pixels gets a zero row.

    Examples
    --------
    >>> segment_prototypes(torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0]]),
    ...                    torch.tensor([1, 0, 0]), 2)
    tensor([[0., 1.],
            [1., 0.]])
    """
    # sums of many bf16 / fp16 rows lose too much: average in float32 or wider
    dtype = torch.promote_types(features.dtype, torch.float32)
    features = features.reshape(-1, features.shape[-1]).to(dtype)
    segment_ids = segment_ids.reshape(-1).long()
    keep = (segment_ids >= 0).to(features.dtype)[:, None]
    sums = features.new_zeros(num_segments, features.shape[1])
    sums = sums.index_add(0, segment_ids.clamp(min=0), features * keep)
    return F.normalize(sums, dim=1)


def build_segments(
    embeddings, clusters, superpixels=None, labels=None, *, tags=None, valid=None, ignore_index=255
):
    """Split k-means clusters by superpixel and weak label into segments with prototypes.

    Parameters
    ----------
    embeddings : (B, ..., D) float tensor
        Unit-row pixel embeddings, e.g. (B, N, D) or (B, H, W, D).
    clusters : (B, ...) int tensor
        Cluster id per pixel within its image (from `spherical_kmeans`); -1 = left out.
    superpixels : (B, ...) int tensor, optional
        Non-negative superpixel id per pixel within its image; None = no split.
    labels : (B, ...) int tensor, optional
        Weak semantic label per pixel; negative or `ignore_index` = unlabelled. None = all
        unlabelled.
    tags : (B, C) bool tensor, optional
        Image-level tags, copied to each segment of the image.
    valid : (B, ...) bool tensor, optional
        False for pixels to leave out (padding).
    ignore_index : int, optional
        Label given to unlabelled segments.

    Returns
    -------
    segments : Segments
        Segments sorted by (image, cluster, superpixel, label); pixels with the same four
        values share a segment, so every segment is pure in superpixel and in label.

    Raises
    ------
    ValueError
        On mismatched shapes or a negative superpixel id.

    Notes
    -----
    One ``torch.unique(return_inverse=True)`` over the combined integer key
    ``((image * K + cluster) * Ksp + superpixel) * Kl + label code`` finds all segments of the
    batch; reading K, Ksp, Kl and the number of segments back from the device is a sync, as
    any variable-size output is. Unlabelled pixels form their own segments (label code 0).

    Examples
    --------
    >>> emb = F.normalize(torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]), dim=-1)
    >>> seg = build_segments(emb, torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0, 1]]),
    ...                      torch.tensor([[2, 255, 255]]))
    >>> seg.segment_ids, seg.labels, seg.superpixels
    (tensor([[1, 0, 2]]), tensor([255,   2, 255]), tensor([0, 0, 1]))
    """
    shape = tuple(clusters.shape)
    if tuple(embeddings.shape[:-1]) != shape:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} must be clusters {shape} plus a feature axis"
        )
    for name, value in (("superpixels", superpixels), ("labels", labels), ("valid", valid)):
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if tags is not None and (tags.ndim != 2 or tags.shape[0] != shape[0]):
        raise ValueError(f"tags must be (B, C) with B={shape[0]}, got {tuple(tags.shape)}")
    device = clusters.device
    clusters = clusters.reshape(-1).long()
    per_image = clusters.numel() // max(shape[0], 1)
    image = torch.arange(shape[0], device=device).repeat_interleave(per_image)
    sp = torch.zeros_like(clusters) if superpixels is None else superpixels.reshape(-1).long()
    code = torch.zeros_like(clusters)  # label + 1, 0 = unlabelled
    if labels is not None:
        labels = labels.reshape(-1).long()
        code = torch.where((labels < 0) | (labels == ignore_index), 0, labels + 1)
    keep = clusters >= 0
    if valid is not None:
        keep = keep & valid.reshape(-1)

    # radices of the combined key (and the superpixel check), read back in one transfer
    k_cluster = k_sp = k_code = 1
    if clusters.numel():
        kept = [torch.where(keep, x, 0) for x in (clusters, sp, code)]
        stats = torch.stack([kept[0].max(), kept[1].max(), kept[2].max(), kept[1].min()])
        k_cluster, k_sp, k_code, low = (stats + 1).tolist()
        if low < 1:
            raise ValueError("superpixels must be non-negative for kept pixels")
    if shape[0] * k_cluster * k_sp * k_code >= 2**62:
        raise ValueError("too many distinct (image, cluster, superpixel, label) values")
    key = ((image * k_cluster + clusters) * k_sp + sp) * k_code + code
    unique, inverse = torch.unique(key[keep], return_inverse=True)  # sorted keys
    num_segments = unique.numel()

    segment_ids = torch.full_like(clusters, -1)
    segment_ids[keep] = inverse
    flat_embeddings = embeddings.reshape(-1, embeddings.shape[-1])
    prototypes = segment_prototypes(flat_embeddings[keep], inverse, num_segments)
    seg_code = unique % k_code
    rest = unique // k_code
    image_ids = rest // (k_sp * k_cluster)
    return Segments(
        segment_ids=segment_ids.view(shape),
        prototypes=prototypes,
        labels=torch.where(seg_code == 0, ignore_index, seg_code - 1),
        image_ids=image_ids,
        superpixels=rest % k_sp,
        clusters=(rest // k_sp) % k_cluster,
        sizes=torch.bincount(inverse, minlength=num_segments),
        tags=None if tags is None else tags.bool()[image_ids],
    )


def segment_batch(
    embeddings,
    superpixels=None,
    labels=None,
    grid=KMEANS_GRID,
    iterations=KMEANS_ITERATIONS,
    *,
    tags=None,
    valid=None,
    location_weight=1.0,
    ignore_index=255,
):
    """Segment a batch as SPML does: k-means on ``[v, location]``, then the two splits.

    Parameters
    ----------
    embeddings : (B, H, W, D) float tensor
        Unit-row pixel embeddings, channels last.
    superpixels, labels : (B, H, W) int tensors, optional
        As in `build_segments`.
    grid : (int, int), optional
        ``(gy, gx)`` cells of the initial grid (`grid_labels`). Default: training's
        (`constants.KMEANS_GRID`, 2 x 2 for the 24 x 24 maps of the embedded scenes).
    iterations : int, optional
        k-means rounds (default `constants.KMEANS_ITERATIONS`, the paper's 10).
    tags, valid, ignore_index
        As in `build_segments`.
    location_weight : float, optional
        `with_location` weight; 0 clusters on embeddings alone.

    Returns
    -------
    segments : Segments
        With ``segment_ids`` of shape (B, H, W).

    Examples
    --------
    >>> emb = torch.zeros(1, 4, 4, 3)
    >>> emb[..., 0] = 1.0
    >>> emb[0, :, 2:] = torch.tensor([0.0, 1.0, 0.0])  # two halves of different colour
    >>> segment_batch(emb, grid=(1, 2), iterations=3).segment_ids[0]
    tensor([[0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 1, 1]])
    """
    if embeddings.ndim != 4:
        raise ValueError(f"embeddings must be (B, H, W, D), got {tuple(embeddings.shape)}")
    num_images, height, width, dim = embeddings.shape
    gy, gx = grid
    locations = location_features(height, width, dtype=embeddings.dtype, device=embeddings.device)
    features = with_location(embeddings.detach(), locations, weight=location_weight)
    init = grid_labels(height, width, grid, device=embeddings.device).reshape(1, -1)
    clusters = spherical_kmeans(
        features.reshape(num_images, height * width, dim + 2),
        init.expand(num_images, -1),
        iterations,
        num_clusters=gy * gx,
        valid=None if valid is None else valid.reshape(num_images, -1),
    )
    return build_segments(
        embeddings,
        clusters.view(num_images, height, width),
        superpixels,
        labels,
        tags=tags,
        valid=valid,
        ignore_index=ignore_index,
    )


def segment_statistics(segments, superpixels=None, valid=None):
    """How coarse the segments of a batch are: what the pixel-to-segment loss compares with.

    A segment should hold tens of embedding pixels; when superpixels are much finer than the
    k-means clusters, the splits leave segments of a few pixels and the loss degenerates into
    pixel-to-pixel contrast.

    Parameters
    ----------
    segments : Segments
        With ``segment_ids`` of shape (B, ...), at the embedding resolution.
    superpixels : (B, ...) int tensor, optional
        The superpixel map the segments were split by (same shape as ``segment_ids``).
    valid : (B, ...) bool tensor, optional
        Pixels that count (crop padding excluded); default: pixels kept by a segment.

    Returns
    -------
    stats : dict of str to float
        ``segments_per_image``, ``pixels_per_segment``, ``pixels_per_segment_of_a_pixel``
        (the pixel-weighted mean size) and, with `superpixels`,
        ``superpixels_per_image`` and ``pixels_per_superpixel`` (means over the batch).

    Examples
    --------
    >>> seg = build_segments(torch.ones(1, 2, 4, 1), torch.zeros(1, 2, 4, dtype=torch.long),
    ...                      torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]]))
    >>> stats = segment_statistics(seg, torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]]))
    >>> {key: round(value, 2) for key, value in stats.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'segments_per_image': 3.0, 'pixels_per_segment': 2.67, 'pixels_per_segment_of_a_pixel': 3.0,
     'superpixels_per_image': 3.0, 'pixels_per_superpixel': 2.67}
    """
    ids = segments.segment_ids
    num_images = ids.shape[0]
    kept = (ids >= 0) if valid is None else valid.bool()
    pixels = int(kept.sum())
    sizes = segments.sizes.double()
    stats = {
        "segments_per_image": segments.num_segments / max(num_images, 1),
        "pixels_per_segment": pixels / max(segments.num_segments, 1),
        # the size of the segment a random pixel lies in: thin scribble fragments are many
        # but hold few pixels, so this is the size most pixels see
        "pixels_per_segment_of_a_pixel": float((sizes**2).sum() / sizes.sum().clamp(min=1)),
    }
    if superpixels is not None:
        image = torch.arange(num_images, device=ids.device).view(-1, *[1] * (ids.ndim - 1))
        key = image * (int(superpixels.max()) + 1) + superpixels.long()
        count = int(torch.unique(key[kept]).numel())
        stats["superpixels_per_image"] = count / max(num_images, 1)
        stats["pixels_per_superpixel"] = pixels / max(count, 1)
    return stats
