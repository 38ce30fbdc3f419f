import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from spml_lab.classroom import trained_runs  # noqa: E402
from spml_lab.nets import embedding_nets, heads  # noqa: E402
from spml_lab.prediction import evaluate, metrics, predict  # noqa: E402
from spml_lab.training import run_folders, runs  # noqa: E402


def test_lesson_folder_is_the_given_one_or_a_fresh_temporary_one(tmp_path):
    given = trained_runs.lesson_folder(tmp_path / "a" / "b", "x")
    assert given == tmp_path / "a" / "b" and given.is_dir()
    one, two = trained_runs.lesson_folder("", "inference"), trained_runs.lesson_folder("", "x")
    assert one != two and one.is_dir() and one.name.startswith("spml_inference_")


def test_compared_runs_loads_the_shipped_runs_the_baseline_without_relations():
    loaded = trained_runs.compared_runs("shipped", out_dir="never written")
    assert list(loaded) == list(trained_runs.COMPARED)
    baseline, spml, points = loaded.values()
    assert baseline.cfg.relation_settings() == {} and baseline.cfg.head_trains_embedding
    assert spml.cfg.relation_settings() and not spml.cfg.head_trains_embedding
    assert (spml.cfg.annotation, points.cfg.annotation) == ("scribbles", "points")
    rows = trained_runs.describe_runs(loaded)
    assert [r["steps"] for r in rows] == [1000, 1000, 1000]


def test_compared_runs_trains_what_is_not_named_from_the_one_recipe(tmp_path):
    loaded = trained_runs.compared_runs(
        {"SPML points": "shipped:spml_points"}, out_dir=tmp_path, max_steps=2, crop_size=32,
        width=8, seed=3,
    )  # fmt: skip
    baseline, spml, points = loaded.values()
    assert baseline.path == tmp_path / "baseline" and spml.path == tmp_path / "spml_scribbles"
    assert (baseline.step, spml.step, points.step) == (2, 2, 1000)
    assert baseline.cfg.differences(spml.cfg, ignore=("out_dir",)).keys() >= {
        "low_level", "semantic_annotation", "cooccurrence", "head_trains_embedding"
    }  # fmt: skip
    assert spml.cfg.width == 8 and spml.cfg.seed == 3 and spml.cfg.lr == points.cfg.lr
    with pytest.raises(ValueError, match="not compared"):
        trained_runs.compared_runs({"SPML boxes": "x"}, out_dir=tmp_path)


def _brute_within_across(emb, classes):
    """Mean over images of the mean cosine of distinct same- / different-class pixel pairs."""
    within, across = [], []
    for e, c in zip(emb, classes, strict=True):
        v, c = e.reshape(-1, e.shape[-1]).double(), c.reshape(-1)
        cos = v @ v.T
        same = (c[:, None] == c[None, :]) & ~torch.eye(len(c), dtype=torch.bool)
        other = c[:, None] != c[None, :]
        within.append(float(cos[same].mean()))
        across.append(float(cos[other].mean()))
    return np.mean(within), np.mean(across)


def test_embed_and_score_matches_the_predictor_and_brute_force_numbers():
    torch.manual_seed(0)
    net, head = embedding_nets.SmallEmbeddingNet(8, 8), heads.SoftmaxHead(8, 3)
    images = torch.rand(2, 3, 16, 16)
    truth = torch.randint(0, 3, (2, 16, 16))
    view = trained_runs.embed_and_score(net, head, images, truth, batch_size=1)
    expected = predict.predict(net, head, images, flip=False)
    assert torch.equal(view.labels, expected)
    assert torch.allclose(view.embeddings, embedding_nets.embed(net, images))
    within, across = _brute_within_across(view.embeddings, truth[:, ::4, ::4])
    assert view.within == pytest.approx(within) and view.across == pytest.approx(across)
    assert view.gap == pytest.approx(within - across)
    # mIoU by hand: per class, intersection over union of the two masks
    ious = []
    for k in range(3):
        p, t = expected == k, truth == k
        if (p | t).any():
            ious.append(float((p & t).sum() / (p | t).sum()))
    assert view.miou == pytest.approx(np.mean(ious))
    assert view.scores == {"within": view.within, "across": view.across, "gap": view.gap,
                           "miou": view.miou}  # fmt: skip


def test_embed_and_score_runs_the_network_at_the_training_scale():
    net, head = embedding_nets.SmallEmbeddingNet(8, 8), heads.SoftmaxHead(8, 3)
    images, truth = torch.rand(1, 3, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long)
    view = trained_runs.embed_and_score(net, head, images, truth, scale=2.0)
    bigger = F.interpolate(images, scale_factor=2.0, mode="bilinear")
    assert torch.allclose(view.embeddings, embedding_nets.embed(net, bigger))
    assert view.labels.shape == (1, 16, 16)


def test_compare_embeddings_finds_a_perfect_embedding_perfect():
    classes = torch.tensor([[0, 0, 1, 1]] * 4)[None].repeat(2, 1, 1)  # (2, 4, 4)
    perfect = F.one_hot(classes, 4).float()  # one direction per class: (2, 4, 4, 4)
    same = torch.ones(2, 4, 4, 4) / 2  # every pixel alike
    batches = {n: SimpleNamespace(embeddings=e, truth=classes.numpy())
               for n, e in (("perfect", perfect), ("same", same))}  # fmt: skip
    rows, distributions = trained_runs.compare_embeddings(batches, samples=32, seed=0)
    perfect_row, same_row = rows
    assert perfect_row["model"] == "perfect" and perfect_row["gap"] == pytest.approx(1.0)
    assert perfect_row["silhouette"] == pytest.approx(1.0) and same_row["gap"] == pytest.approx(0)
    intra, inter = distributions["perfect"]
    assert np.allclose(intra, 1.0) and np.allclose(inter, 0.0)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = run_folders.copy_run(
        runs.run_folder("shipped:full"), tmp_path_factory.mktemp("run") / "run"
    )
    results = evaluate.evaluate_run(folder, methods=["softmax"], max_images=6, batch_size=3)
    run = runs.load_run(folder)
    return run, predict.dataset_for(run.cfg, "val", "full"), results


def test_failure_cases_are_the_lowest_scored_images_with_their_largest_confusion(scored):
    run, val, results = scored
    failures = trained_runs.failure_cases(run, val, results, "softmax", count=2)
    per_image = results["softmax"]["per_image_miou"]
    order = sorted(range(len(per_image)), key=lambda i: per_image[i])
    assert [f.name for f in failures] == [val.names[i] for i in order[:2]]
    for f, i in zip(failures, order, strict=False):
        assert f.miou == pytest.approx(per_image[i])
        assert np.array_equal(f.truth, val[i]["label"].numpy())
        own = metrics.image_miou(torch.from_numpy(f.labels)[None], torch.from_numpy(f.truth)[None],
                                 run.num_classes)  # fmt: skip
        assert float(own[0]) == pytest.approx(f.miou)  # the labels are the ones scored
        g, p = f.confused
        assert g != p and f.pixels == int(((f.truth == g) & (f.labels == p)).sum())
        wrong = (f.truth != f.labels) & ~np.isin(f.truth, [g])  # no other pair is larger
        for other in np.unique(f.truth[wrong]):
            counts = np.bincount(f.labels[(f.truth == other) & (f.labels != other)], minlength=256)
            assert counts.max() <= f.pixels


def test_shipped_record_gives_the_time_the_run_recorded_itself():
    timing = json.loads((runs.SHIPPED_RUNS / "spml_scribbles" / "bench_timing.json").read_text())
    record = trained_runs.shipped_record("shipped:spml_scribbles")
    assert record["train_seconds"] == pytest.approx(timing["train_seconds"])
    assert record["stage2_seconds"] == pytest.approx(timing["stage2_seconds"])
    assert trained_runs.shipped_record("runs/mine") == {} and trained_runs.shipped_record("") == {}


def test_loss_summary_sums_a_known_log_up(tmp_path):
    from spml_lab.training.config import TrainConfig

    folder = tmp_path / "run"
    folder.mkdir()
    TrainConfig(annotation="scribbles").to_yaml(folder / runs.CONFIG)
    totals, speeds = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.4, 0.2], [1.0, 8.0, 10.0, 9.0] * 2
    columns = ["step", "lr", *TrainConfig().relation_settings(), "total", "softmax_ce",
               "images_per_s"]  # fmt: skip
    lines = [",".join(columns)] + [
        ",".join([str(10 * (i + 1)), "0.01", *["0.5"] * (len(columns) - 5), str(t), "0.7", str(s)])
        for i, (t, s) in enumerate(zip(totals, speeds, strict=True))
    ]
    (folder / runs.METRICS).write_text("\n".join(lines) + "\n")
    summary = trained_runs.loss_summary(folder)
    assert summary["steps"] == 80 and summary["final_total"] == 0.2
    assert summary["final_softmax_ce"] == 0.7 and summary["final_low_level"] == 0.5
    assert summary["total_first_quarter"] == pytest.approx((4.0 + 3.0) / 2)  # 8 rows: 2 each
    assert summary["total_last_quarter"] == pytest.approx((0.4 + 0.2) / 2)
    assert summary["images_per_s"] == pytest.approx(sum(speeds[1:]) / 7)  # the first row left out
