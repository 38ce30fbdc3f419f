import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spml_lab.classroom import lesson_batch, lessons  # noqa: E402
from spml_lab.method import memory, relations  # noqa: E402
from spml_lab.nets import embedding_nets  # noqa: E402
from spml_lab.pictures import viz  # noqa: E402
from spml_lab.training import train  # noqa: E402


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(0)
    net = embedding_nets.SmallEmbeddingNet(8, 8)
    # two images without a tag in common (besides background): co-occurrence has positives
    # and negatives in each
    batch = lesson_batch.make_batch("objects", "scribbles", indices=(0, 2), net=net)
    earlier = lesson_batch.make_batch("objects", "scribbles", indices=(1, 3), net=net)
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
    pixel = lesson_batch.pick_pixel(batch, relation, memory=bank)
    pos, neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments, bank
    )
    kappas = [1.0, 8.0]
    sweep = lessons.kappa_sweep(batch, pixel, relation, kappas, pos, neg, bank)
    want = [float(direct_loss(relation, batch, bank, k)) for k in kappas]
    assert sweep.batch_loss == pytest.approx(want, rel=1e-6)
    for kappa, w, share in zip(kappas, sweep.weights, sweep.shares, strict=True):
        assert torch.equal(
            w, lesson_batch.segment_weights(batch, pixel, relation, pos, neg, kappa, bank)
        )
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


def test_kappa_sweep_losses_are_finite_and_each_pixels_weights_sum_to_one(batches):
    batch, bank = batches
    pixel = lesson_batch.pick_pixel(batch, "cooccurrence", memory=bank)
    roles = relations.positives_negatives(
        "cooccurrence", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments, bank
    )
    sweep = lessons.kappa_sweep(batch, pixel, "cooccurrence", [0.5, 16.0, 256.0], *roles, bank)
    assert all(math.isfinite(loss) for loss in sweep.batch_loss)  # even at a large kappa
    for w in sweep.weights:
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)
        assert len(w) == batch.segments.num_segments + bank.bank().num_prototypes


def test_relation_alone_runs_in_a_new_temporary_folder_unless_told(tmp_path):
    first, second = (lessons.relation_alone("low_level") for _ in range(2))
    for cfg in (first, second):
        run = Path(cfg.out_dir)
        assert run.name == "low_level" and not run.exists()
        assert run.parent.is_dir() and not any(run.parent.iterdir())  # fresh and empty
    assert first.out_dir != second.out_dir
    chosen = str(tmp_path / "mine")
    assert lessons.relation_alone("low_level", out_dir=chosen).out_dir == chosen


def test_a_relation_trained_alone_logs_every_step_up_to_max_steps():
    cfg = lessons.relation_alone(
        "semantic_annotation", max_steps=4, log_every=2, crop_size=32, batch_size=2,
        width=8, embedding_dim=8, memory_size=0,
    )  # fmt: skip
    run = train.fit(cfg)
    figure, rows = lessons.show_training(run, "semantic_annotation")
    assert [row["step"] for row in rows] == [2.0, 4.0]
    assert all(math.isfinite(row["semantic_annotation"]) for row in rows)
    assert len(figure.axes[0].lines) == 2  # scribbles: the head has a loss too
    plt.close(figure)


def test_show_positives_negatives_draws_show_relation_at_the_pixels_position(batches):
    batch, _ = batches
    _, height, width, _ = batch.embeddings.shape
    pixel = height * width + 2 * width + 3  # image 1, row 2, column 3
    pos, neg = relations.positives_negatives(
        "low_level", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    figure = lessons.show_positives_negatives(batch, pixel, pos, neg, title="t", zoom=4)
    direct = viz.show_relation(
        batch.images, batch.segments.segment_ids, pos, neg, (1, 2, 3),
        col_titles=batch.names, title="t", zoom=4,
    )  # fmt: skip
    drawn, want = figure.axes, direct.axes
    assert [ax.get_title() for ax in drawn] == [ax.get_title() for ax in want]
    assert [ax.get_title() for ax in drawn][: len(batch.names)] == list(batch.names)
    for ax, other in zip(drawn, want, strict=True):
        for image, expected in zip(ax.images, other.images, strict=True):
            assert (image.get_array() == expected.get_array()).all()
    titled = lessons.show_positives_negatives(batch, pixel, pos, neg, col_titles=["a", "b"])
    assert [ax.get_title() for ax in titled.axes][:2] == ["a", "b"]
    plt.close("all")
