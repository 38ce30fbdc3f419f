import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spml_lab.classroom import demo, lessons  # noqa: E402
from spml_lab.method import memory, relations  # noqa: E402
from spml_lab.nets import embedding_nets  # noqa: E402


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(0)
    net = embedding_nets.SmallEmbeddingNet(8, 8)
    batch = demo.make_batch("objects", "scribbles", indices=(0, 1), net=net)
    earlier = demo.make_batch("objects", "scribbles", indices=(2, 3), net=net)
    bank = memory.PrototypeMemory(1)
    bank.push(earlier.segments)
    return batch, bank


def direct_loss(relation, batch, bank, kappa):
    """The relation's own function, called as notebooks 05-08 used to call it."""
    emb, seg = batch.embeddings, batch.segments
    if relation == "low_level":
        return relations.low_level_similarity(emb, seg, concentration=kappa)
    if relation == "semantic_annotation":
        return relations.semantic_annotation(emb, batch.labels, seg, bank, concentration=kappa)
    if relation == "cooccurrence":
        return relations.semantic_cooccurrence(emb, batch.tags, seg, bank, concentration=kappa)
    return relations.feature_affinity(emb, seg, bank, concentration=kappa)


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_kappa_sweep_gives_each_relations_loss_and_the_pixels_softmax_shares(batches, relation):
    batch, bank = batches
    bank = None if relation == "low_level" else bank
    pixel = demo.pick_pixel(batch, relation, memory=bank)
    pos, neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments, bank
    )
    kappas = [1.0, 8.0]
    sweep = lessons.kappa_sweep(batch, pixel, relation, kappas, pos, neg, bank)
    want = [float(direct_loss(relation, batch, bank, k)) for k in kappas]
    assert sweep.batch_loss == pytest.approx(want, rel=1e-6)
    for kappa, w, share in zip(kappas, sweep.weights, sweep.shares, strict=True):
        assert torch.equal(w, demo.segment_weights(batch, pixel, pos, neg, kappa, bank))
        assert share == pytest.approx(float(w[pos].sum())) and 0 < share <= 1
    loss_figure, weights_figure = lessons.show_kappa_sweep(sweep, batch)
    assert list(loss_figure.axes[0].lines[0].get_ydata()) == sweep.batch_loss
    assert len([ax for ax in weights_figure.axes if ax.images]) == len(kappas) * 2
    plt.close("all")


def test_relation_alone_enables_one_relation_at_weight_one():
    cfg = lessons.relation_alone("semantic_annotation", annotation="points", max_steps=7)
    assert list(cfg.relation_settings()) == ["semantic_annotation"]
    assert cfg.relation_settings()["semantic_annotation"].weight == 1.0
    assert cfg.max_steps == 7 and cfg.annotation == "points" and not cfg.progress
    with pytest.raises(ValueError, match="relation must be one of"):
        lessons.relation_alone("friendship")


def test_show_training_plots_the_rows_of_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,lr,low_level,total,softmax_ce,images_per_s\n"
        "10,0.01,2.5,0.25,0.0,8.0\n20,0.01,2.0,0.2,0.0,8.0\n"
    )
    figure, rows = lessons.show_training(tmp_path, "low_level")
    lines = figure.axes[0].lines
    assert len(lines) == 1  # no head loss without pixel labels
    assert list(lines[0].get_xdata()) == [10.0, 20.0]
    assert list(lines[0].get_ydata()) == [2.5, 2.0]
    assert rows[1]["total"] == 0.2
    plt.close(figure)


def test_method_figure_draws_the_pipeline_and_one_pixel_per_relation(batches):
    batch, _ = batches
    figure = lessons.method_figure(batch, image=1)
    drawn = [ax for ax in figure.axes if ax.images]
    assert len(drawn) == 8
    assert [ax.get_xlabel() for ax in drawn[4:]] == [
        r.replace("_", " ") for r in relations.RELATIONS
    ]
    assert drawn[0].images[0].get_array().shape == batch.images[1].shape
    plt.close(figure)
