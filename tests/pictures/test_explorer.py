import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from spml_lab.classroom import lesson_batch
from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import memory, relations
from spml_lab.nets import embedding_nets
from spml_lab.pictures import embedding_viz, explorer
from spml_lab.pictures.explorer import ExplorerState  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    net = embedding_nets.SmallEmbeddingNet(embedding_dim=8, width=8)
    return lesson_batch.make_batch("objects", "scribbles", indices=(0, 1), net=net)


@pytest.fixture(scope="module")
def ex(batch):
    return explorer.Explorer.from_batch(batch)


def decode(png):
    return np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGB"))


def test_widget_has_stable_descriptions_and_css_classes(ex):
    widget = ex.widget
    assert "spml-explorer" in widget._dom_classes
    controls, picture, table = widget.children
    assert [c.description for c in controls.children] == ["image", "x", "y", "relation"]
    assert "spml-similarity" in picture._dom_classes and picture.format == "png"
    assert list(controls.children[3].options) == ["none", *relations.RELATIONS]
    assert controls.children[1].max == 23 and controls.children[0].max == 1
    assert "segment" in table.value


def test_moving_the_x_slider_redraws_the_picture(ex):
    controls, picture, table = ex.widget.children
    before, before_table = bytes(picture.value), table.value
    controls.children[1].value = 5  # x
    assert bytes(picture.value) != before and table.value != before_table
    assert bytes(picture.value) == ex.render(ExplorerState(0, 12, 5))
    controls.children[3].value = "semantic_annotation"
    assert bytes(picture.value) == ex.render(ExplorerState(0, 12, 5, "semantic_annotation"))
    controls.children[3].value = "none"


def test_render_is_deterministic_and_a_png_of_the_picture(ex):
    state = ExplorerState(1, 7, 9, "low_level")
    png = ex.render(state)
    assert png == ex.render(state)
    picture = ex.picture(state)
    assert (decode(png) == picture).all()
    # two rows of two 192-px panels (96-px images at zoom 2) under 16-px titles
    assert picture.shape[0] == 2 * (192 + 16) + 6 + 14


def test_bottom_row_shows_the_cosine_to_the_query(ex, batch):
    state = ExplorerState(1, 7, 9)
    picture = ex.picture(state)
    emb = batch.embeddings.numpy()  # (B, h, w, D) unit rows
    q = emb[1, 7, 9]
    top = 16 + 192 + 6 + 16  # first pixel row of the bottom panels
    for b, y, x in [(0, 3, 20), (1, 22, 2), (0, 20, 21)]:
        colour = picture[top + 8 * y + 4, b * (192 + 6) + 8 * x + 4]  # centre of the 8x8 block
        cosine = float(emb[b, y, x] @ q)
        assert (colour == embedding_viz.heat_rgb(np.array(cosine))).all()


def test_relation_overlay_uses_the_relation_positives(ex, batch):
    state = ExplorerState(0, 12, 20, "cooccurrence")
    pixel = lesson_batch.pixel_index(batch, 0, 12, 20)
    pos, neg = relations.positives_negatives(
        "cooccurrence", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    assert ex.summary(state).startswith(f"cooccurrence: {int(pos.sum())} positive, ")
    plain, drawn = ex.picture(ExplorerState(0, 12, 20)), ex.picture(state)
    assert (plain[16 : 16 + 192] != drawn[16 : 16 + 192]).any()  # the top row changed
    bottom = slice(16 + 192 + 6 + 16, 16 + 192 + 6 + 16 + 192)
    assert (plain[bottom] == drawn[bottom]).all()  # the similarity row did not


def test_nearest_segments_are_the_most_similar_prototypes(ex, batch):
    state = ExplorerState(1, 20, 11)
    rows = ex.nearest_segments(state, k=5)
    q = batch.embeddings[1, 20, 11].double()
    cosine = (batch.segments.prototypes.double() @ q).numpy()
    assert [r["segment"] for r in rows] == np.argsort(-cosine)[:5].tolist()
    assert [r["cosine"] for r in rows] == pytest.approx(np.sort(cosine)[::-1][:5].tolist())
    own = int(batch.segments.segment_ids[1, 20, 11])
    assert all(r["own"] == (r["segment"] == own) for r in rows)
    labels = batch.segments.labels[[r["segment"] for r in rows]].tolist()
    names = [batch.class_names[v] if v != IGNORE_INDEX else "unlabelled" for v in labels]
    assert [r["label"] for r in rows] == names


def test_static_figure_shows_the_picture(ex):
    state = ExplorerState(1, 3, 4, "feature_affinity")
    fig = ex.static_figure(state)
    assert isinstance(fig, plt.Figure)
    assert (fig.axes[0].images[0].get_array() == ex.picture(state)).all()
    assert "feature_affinity" in fig._suptitle.get_text()
    assert any("nearest segments" in t.get_text() for t in fig.texts)
    plt.close(fig)
    fig = ex.static_figure()  # the widget's current state
    plt.close(fig)


def test_tensor_input_and_no_segments():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(3, 12, 12, 3), dtype=np.uint8)
    emb = rng.normal(size=(3, 4, 6, 6)).transpose(0, 2, 3, 1)  # (B, h, w, D)
    ex = explorer.Explorer(images, torch.from_numpy(emb), zoom=1)
    assert ex.relations == () and ex.nearest_segments(ExplorerState()) == []
    array = explorer.Explorer(images, emb, zoom=1)
    state = ExplorerState(2, 5, 1)
    assert ex.render(state) == array.render(state)
    fig = ex.static_figure(state)
    plt.close(fig)


def test_bad_states_and_inputs_are_refused(ex):
    with pytest.raises(ValueError, match="must lie inside"):
        ex.render(ExplorerState(0, 32, 0))
    with pytest.raises(ValueError, match="not available"):
        ex.render(ExplorerState(0, 0, 0, "friendship"))
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="images must be"):
        explorer.Explorer(images[..., 0], np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="embeddings hold 3"):
        explorer.Explorer(images, np.zeros((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="value_range"):
        explorer.Explorer(images, np.zeros((2, 3, 2, 2)), value_range=(1, 0))
    with pytest.raises(ValueError, match="labels hold 1"):
        explorer.Explorer(images, np.zeros((2, 3, 2, 2)), labels=np.zeros((1, 8, 8)))
    no_tags = explorer.Explorer(images, np.ones((2, 3, 2, 2)))
    assert "cooccurrence" not in no_tags.relations


def test_memory_segments_are_counted_in_the_summary(batch):
    bank = memory.PrototypeMemory(1)
    bank.push(batch.segments, tags=batch.tags)
    ex = explorer.Explorer.from_batch(batch, memory=bank)
    state = ExplorerState(0, 12, 20, "cooccurrence")
    pixel = lesson_batch.pixel_index(batch, 0, 12, 20)
    pos, neg = relations.positives_negatives(
        "cooccurrence", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments, bank
    )
    count = batch.segments.num_segments
    assert len(pos) == 2 * count
    expected = f"(+ memory: {int(pos[count:].sum())} positive, {int(neg[count:].sum())} negative)"
    assert ex.summary(state).endswith(expected)
    # the memory changes the counts, not the picture of the batch's segments
    assert (ex.picture(state) == explorer.Explorer.from_batch(batch).picture(state)).all()
