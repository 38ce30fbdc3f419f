import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data, graph, transform

from spml_lab.data import superpixels

METHODS = sorted(superpixels.METHODS)


def quadrants(height, width, split=None, noise=0.05, seed=0):
    """Four flat colour quadrants plus Gaussian noise (scikit-image's SLIC test image)."""
    h, w = split or (height // 2, width // 2)
    image = np.zeros((height, width, 3))
    image[:h, w:] = (1, 0, 0)
    image[h:, :w] = (0, 1, 0)
    image[h:, w:] = (0, 0, 1)
    image += noise * np.random.default_rng(seed).standard_normal(image.shape)
    gt = np.zeros((height, width), int)
    gt[:h, w:], gt[h:, :w], gt[h:, w:] = 1, 2, 3
    return np.clip(image, 0, 1), gt


def same_partition(a, b):
    """True when two label maps split the pixels the same way, whatever the ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


@pytest.fixture(scope="module")
def photo():
    # bundled with scikit-image (no download); small so merging stays fast
    return transform.resize(data.coffee()[::4, ::4], (64, 96), anti_aliasing=True)


@pytest.fixture(scope="module")
def overseg(photo):
    return superpixels.segment(photo, "slic", n_segments=80)


# ----------------------------------------------------------------------------- segment()


@pytest.mark.parametrize("method", METHODS)
def test_ids_are_contiguous_int32_and_cover_the_image(method, photo):
    labels = superpixels.segment(photo, method)
    assert labels.shape == photo.shape[:2] and labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert labels.max() + 1 > 10


QUADRANT_CASES = [((20, 21), None, 0.05), ((70, 64), (29, 40), 0.05), ((70, 64), (29, 40), 0.0)]


@pytest.mark.parametrize("method", ["slic", "felzenszwalb", "quickshift"])
@pytest.mark.parametrize(("shape", "split", "noise"), QUADRANT_CASES)
def test_segments_never_straddle_quadrants(method, shape, split, noise):
    image, gt = quadrants(*shape, split=split, noise=noise)
    labels = superpixels.segment(image, method)
    assert superpixels.achievable_segmentation_accuracy(labels, gt) == 1.0
    assert superpixels.undersegmentation_error(labels, gt) == 0.0
    assert superpixels.boundary_recall(labels, gt, tolerance=0) == 1.0


@pytest.mark.parametrize(("shape", "split", "noise"), QUADRANT_CASES)
def test_watershed_straddles_quadrants_only_at_the_junction(shape, split, noise):
    # A step's Sobel ridge is two pixels wide; where the ridges of the four quadrants meet,
    # a corner pixel touches only ridge pixels, and noise decides which basin reaches it first.
    image, gt = quadrants(*shape, split=split, noise=noise)
    labels = superpixels.segment(image, "watershed")
    misassigned = (1 - superpixels.achievable_segmentation_accuracy(labels, gt)) * gt.size
    assert misassigned <= (0.5 if noise == 0 else 4)
    assert superpixels.boundary_recall(labels, gt, tolerance=1) == 1.0


def test_compact_watershed_is_at_most_one_pixel_off():
    # the documented price of compactness > 0: ridge pixels go to the nearer seed
    image, gt = quadrants(70, 64, split=(29, 40))
    labels = superpixels.segment(image, "watershed", compactness=1e-3)
    assert superpixels.boundary_recall(labels, gt, tolerance=1) == 1.0
    assert 0.97 < superpixels.achievable_segmentation_accuracy(labels, gt) < 1.0


@pytest.mark.parametrize("method", ["slic", "watershed"])
def test_n_segments_is_roughly_respected(method, photo):
    counts = [superpixels.segment(photo, method, n_segments=n).max() + 1 for n in (30, 100, 200)]
    assert counts == sorted(counts)
    for n, count in zip((30, 100, 200), counts, strict=True):
        assert 0.6 * n <= count <= 1.4 * n, (n, count)


def test_defaults_give_about_100_to_200_segments_at_128_px():
    image = transform.resize(data.astronaut(), (128, 128), anti_aliasing=True)
    for method in METHODS:
        assert 60 <= superpixels.segment(image, method).max() + 1 <= 250, method


def test_options_are_forwarded(photo):
    fine = superpixels.segment(photo, "felzenszwalb", scale=10)
    coarse = superpixels.segment(photo, "felzenszwalb", scale=1000)
    assert coarse.max() < fine.max()
    compact = superpixels.segment(photo, "watershed", compactness=10.0)
    assert not np.array_equal(compact, superpixels.segment(photo, "watershed"))


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="felzenszwalb.*quickshift.*slic.*watershed"):
        superpixels.segment(np.zeros((8, 8, 3)), "sticky")


@pytest.mark.parametrize("method", ["felzenszwalb", "quickshift"])
def test_n_segments_is_refused_where_it_means_nothing(method):
    with pytest.raises(ValueError, match="no n_segments"):
        superpixels.segment(np.zeros((8, 8, 3)), method, n_segments=10)


def test_uint8_float_and_grey_inputs(photo):
    as_uint8 = np.round(photo * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        superpixels.segment(as_uint8, "slic"), superpixels.segment(as_uint8 / 255.0, "slic")
    )
    grey = superpixels.segment(as_uint8[..., 0], "felzenszwalb")
    np.testing.assert_array_equal(
        grey, superpixels.segment(as_uint8[..., [0, 0, 0]], "felzenszwalb")
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        superpixels.segment(photo * 255, "slic")
    with pytest.raises(ValueError, match="shape"):
        superpixels.segment(np.zeros((8, 8, 4)), "slic")


@pytest.mark.parametrize("method", METHODS)
def test_repeatable(method, photo):
    np.testing.assert_array_equal(
        superpixels.segment(photo, method), superpixels.segment(photo, method)
    )


# ----------------------------------------------------------------------------- metrics


def stripes(*bounds, height=8, width=8):
    """Vertical stripes: label k from column bounds[k-1] on (bounds are the first columns)."""
    return np.repeat(np.searchsorted(bounds, np.arange(width), side="right")[None], height, 0)


def test_metrics_of_a_perfect_segmentation():
    _, gt = quadrants(16, 16)
    assert superpixels.boundary_recall(gt, gt) == 1.0
    assert superpixels.undersegmentation_error(gt, gt) == 0.0
    assert superpixels.achievable_segmentation_accuracy(gt, gt) == 1.0
    # splitting the regions further leaves UE and ASA perfect (boundary recall too)
    finer = gt * 4 + np.arange(16)[:, None] // 4
    assert superpixels.undersegmentation_error(finer, gt) == 0.0
    assert superpixels.achievable_segmentation_accuracy(finer, gt) == 1.0
    assert superpixels.boundary_recall(finer, gt) == 1.0


def test_metrics_of_a_stripe_that_straddles_by_one_column():
    gt = stripes(4)  # columns 0-3 | 4-7
    labels = stripes(5)  # segment 0 takes 8 pixels of region 1
    # segment 0: 32 px in region 0, 8 in region 1; segment 1: 24 px in region 1; N = 64
    assert superpixels.achievable_segmentation_accuracy(labels, gt) == (32 + 24) / 64
    # min(32, 8) for (s0, g0) + min(8, 32) for (s0, g1) + min(24, 0) for (s1, g1)
    assert superpixels.undersegmentation_error(labels, gt) == (8 + 8 + 0) / 64
    assert superpixels.boundary_recall(labels, gt, tolerance=1) == 1.0
    assert superpixels.boundary_recall(labels, gt, tolerance=0) == 0.0


def test_metrics_of_a_segment_covering_two_quadrants():
    gt = np.zeros((10, 10), int)
    gt[:5, 5:], gt[5:, :5], gt[5:, 5:] = 1, 2, 3
    labels = gt.copy()
    labels[labels == 2] = 0  # left half is one segment
    assert superpixels.achievable_segmentation_accuracy(labels, gt) == 0.75
    assert superpixels.undersegmentation_error(labels, gt) == 0.5  # (25 + 25) / 100
    # gt boundary: row 4 and column 4, 19 px; the segmentation lacks row 4, columns 0-3,
    # which lie 4, 3, 2, 1 px from its column-4 boundary
    assert superpixels.boundary_recall(labels, gt, tolerance=0) == 15 / 19
    assert superpixels.boundary_recall(labels, gt, tolerance=2) == 17 / 19
    assert superpixels.boundary_recall(labels, gt, tolerance=4) == 1.0


@pytest.mark.parametrize(("shift", "recalled"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0), (5, 0.0)])
def test_boundary_recall_of_a_shifted_boundary(shift, recalled):
    gt = stripes(10, width=32, height=32)
    assert superpixels.boundary_recall(stripes(10 + shift, 32, width=32, height=32), gt) == recalled
    assert superpixels.boundary_recall(stripes(10 - shift, 32, width=32, height=32), gt) == recalled


def test_boundary_recall_edge_cases():
    flat = np.zeros((6, 6), int)
    assert np.isnan(superpixels.boundary_recall(stripes(3, width=6, height=6), flat))
    assert superpixels.boundary_recall(flat, stripes(3, width=6, height=6)) == 0.0


def test_metrics_ignore_label_values():
    rng = np.random.default_rng(0)
    labels, gt = rng.integers(0, 6, (12, 12)), rng.integers(0, 3, (12, 12))
    renamed_labels = np.array([50, 7, 3, 999, 4, 12])[labels]
    renamed_gt = np.array([255, 0, 9])[gt]
    for metric in (
        superpixels.boundary_recall,
        superpixels.undersegmentation_error,
        superpixels.achievable_segmentation_accuracy,
    ):
        assert metric(renamed_labels, renamed_gt) == metric(labels, gt)


def test_metrics_match_brute_force():
    rng = np.random.default_rng(1)
    labels = ndi.zoom(rng.integers(0, 9, (6, 7)), 4, order=0)  # blocky: real boundaries
    gt = ndi.zoom(rng.integers(0, 4, (4, 5)), (6, 5.6), order=0)[:24, :28]
    n = labels.size
    asa = sum(
        max(np.sum((labels == s) & (gt == g)) for g in np.unique(gt)) for s in np.unique(labels)
    )
    ue = sum(
        min(np.sum((labels == s) & (gt == g)), np.sum((labels == s) & (gt != g)))
        for s in np.unique(labels)
        for g in np.unique(gt)
        if np.any((labels == s) & (gt == g))
    )
    seg_points = np.argwhere(superpixels.boundaries(labels))
    hits = [
        np.min(np.hypot(*(seg_points - p).T)) <= 2 for p in np.argwhere(superpixels.boundaries(gt))
    ]
    assert superpixels.achievable_segmentation_accuracy(labels, gt) == pytest.approx(asa / n)
    assert superpixels.undersegmentation_error(labels, gt) == pytest.approx(ue / n)
    assert superpixels.boundary_recall(labels, gt) == pytest.approx(np.mean(hits))


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        superpixels.achievable_segmentation_accuracy(np.zeros((4, 4)), np.zeros((4, 5)))


def test_boundaries_are_thin_and_on_the_top_left_side():
    labels = np.zeros((4, 4), int)
    labels[2:, 2:] = 1
    expected = np.zeros((4, 4), bool)
    expected[1, 2:] = True  # above the lower-right block
    expected[2:, 1] = True  # left of it
    np.testing.assert_array_equal(superpixels.boundaries(labels), expected)


# ----------------------------------------------------------------------------- merging


def test_merging_is_nested(photo, overseg):
    thresholds = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, np.inf]
    family = superpixels.merge_hierarchical(photo, overseg, thresholds)
    assert family.shape == (len(thresholds), *overseg.shape) and family.dtype == np.int32
    assert same_partition(family[0], overseg)  # nothing is below 0
    assert family[-1].max() == 0  # everything merges in the end
    counts = [f.max() + 1 for f in family]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) > 4
    for fine, coarse in zip(family[:-1], family[1:], strict=True):
        # each fine segment lies inside exactly one coarse one
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert pairs.shape[1] == fine.max() + 1


def test_merging_matches_scikit_image(photo, overseg):
    def weight(rag, src, dst, n):
        default = {"weight": 0.0, "count": 0}
        a, b = rag[src].get(n, default), rag[dst].get(n, default)
        count = a["count"] + b["count"]
        return {
            "count": count,
            "weight": (a["count"] * a["weight"] + b["count"] * b["weight"]) / count,
        }

    edges = superpixels.edge_strength(photo)
    for threshold in (0.03, 0.08, 0.15):
        rag = graph.rag_boundary(overseg, edges, connectivity=1)
        expected = graph.merge_hierarchical(
            overseg, rag, threshold, False, True, lambda *args: None, weight
        )
        ours = superpixels.merge_hierarchical(photo, overseg, threshold)
        assert same_partition(ours, expected), threshold
        np.testing.assert_array_equal(
            ours, superpixels.merge_hierarchical(None, overseg, threshold, edges=edges)
        )


def test_thresholds_in_any_order_equal_single_calls(photo, overseg):
    thresholds = [0.1, 0.02, 0.3, 0.05]
    family = superpixels.merge_hierarchical(photo, overseg, thresholds)
    for threshold, merged in zip(thresholds, family, strict=True):
        np.testing.assert_array_equal(
            merged, superpixels.merge_hierarchical(photo, overseg, threshold)
        )


def test_thresholding_the_ucm_gives_the_merged_boundaries(photo, overseg):
    contours = superpixels.ucm(photo, overseg)
    assert contours.shape == overseg.shape and np.all(contours >= 0)
    assert np.all(contours[~superpixels.boundaries(overseg)] == 0)
    levels = np.unique(contours[contours > 0])
    # every level itself (where `<` vs `<=` matters) and points between levels
    for t in [*levels[::7], *(levels[:-1:5] + levels[1::5]) / 2, levels[-1] + 1]:
        merged = superpixels.merge_hierarchical(photo, overseg, t)
        np.testing.assert_array_equal(contours >= t, superpixels.boundaries(merged))


def test_quadrants_merge_back_to_four_regions():
    image, gt = quadrants(40, 44, split=(17, 25), noise=0.02)
    labels = superpixels.segment(image, "slic", n_segments=60)
    merged = superpixels.merge_hierarchical(image, labels, 0.3)  # noise < 0.3 < colour steps
    assert same_partition(merged, gt)


def test_merging_one_segment_is_a_no_op():
    image = np.zeros((6, 6, 3))
    labels = np.full((6, 6), 7)
    assert np.all(superpixels.ucm(image, labels) == 0)
    assert np.all(superpixels.merge_hierarchical(image, labels, 1.0) == 0)


def test_edges_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        superpixels.ucm(None, np.zeros((4, 4), int), edges=np.zeros((4, 5)))
