import csv

from spml_lab import cli
from spml_lab.training import config, runs
from spml_lab.training.config import TrainConfig

TINY = ["--crop-size", "64", "--batch-size", "2", "--width", "8", "--embedding-dim", "8"]
TINY += ["--kmeans-grid", "3", "3", "--no-progress", "--log-every", "1"]


def test_train_runs_and_writes_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--max-steps", "3", "--out-dir", str(run), "--annotation", "points"]
    assert cli.main([*args, "--no-cooccurrence", "--lr", "0.02"]) == 0
    assert str(run) in capsys.readouterr().out
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    assert (cfg.annotation, cfg.cooccurrence, cfg.lr, cfg.kmeans_grid) == (
        "points",
        False,
        0.02,
        (3, 3),
    )
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and "cooccurrence" not in rows[0]
    loaded = runs.load_run(run)
    assert loaded.cfg == cfg and loaded.head.classifier.out_channels == len(loaded.class_names)


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    TrainConfig(max_steps=2, lr=0.5, memory_size=0, out_dir=str(tmp_path / "x")).to_yaml(path)
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), *TINY, "--out-dir", str(run)]) == 0
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    assert (cfg.max_steps, cfg.lr, cfg.memory_size, cfg.out_dir) == (2, 0.5, 0, str(run))


def test_bad_values_exit_2_naming_the_field(tmp_path, capsys):
    assert cli.main(["train", "--batch-size", "0", "--out-dir", str(tmp_path / "r")]) == 2
    assert "TrainConfig.batch_size must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "unknown field 'learning_rate'" in capsys.readouterr().err


def test_a_second_run_in_the_same_folder_needs_resume(tmp_path, capsys):
    args = ["train", *TINY, "--max-steps", "1", "--out-dir", str(tmp_path / "run")]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main([*args, "--resume"]) == 0


def test_predict_refuses_two_images_that_would_write_one_mask(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--max-steps", "1", "--out-dir", str(run)]) == 0
    from PIL import Image

    for suffix in ("png", "jpg"):
        Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / f"a.{suffix}")
    out = tmp_path / "masks"
    args = [
        "predict",
        str(run),
        str(tmp_path / "a.png"),
        str(tmp_path / "a.jpg"),
        "--out",
        str(out),
    ]
    assert cli.main(args) == 2
    assert "would both write" in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_preset_lies_under_the_config_file_and_the_flags(tmp_path):
    from spml_lab.training import presets

    (tmp_path / "mine.yaml").write_text("crop_size: 64\nbatch_size: 4\n")
    run = tmp_path / "run"
    args = ["train", "--preset", "benchmark", "--config", str(tmp_path / "mine.yaml"),
            "--batch-size", "2", "--max-steps", "1", "--no-progress",
            "--out-dir", str(run)]  # fmt: skip
    assert cli.main(args) == 0
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    # the preset where nothing else speaks; the file over it; a flag over both
    assert cfg.contrast_images == presets.PRESETS["benchmark"]["contrast_images"]
    assert (cfg.crop_size, cfg.batch_size, cfg.max_steps) == (64, 2, 1)
    assert (cfg.lr, cfg.kmeans_grid) == (TrainConfig().lr, TrainConfig().kmeans_grid)


def test_the_plain_command_trains_the_recipe_the_shipped_runs_were_measured_with():
    # the README's command: no preset, no recipe flag, the embedded data
    argv = ["train", "--out-dir", "runs/scribbles", "--annotation", "scribbles"]
    cfg = config.from_arguments(cli.build_parser().parse_args([*argv, "--max-steps", "300"]))
    shipped = TrainConfig.from_yaml(runs.SHIPPED_RUNS / "spml_scribbles" / "config.yaml")
    # what a run's length and bookkeeping choose; the rest is the recipe
    budget = ("max_steps", "contrast_images", "log_every", "checkpoint_every", "cache_data")
    assert cfg.differences(shipped, ignore=(*config.RESUMABLE_CHANGES, *budget)) == {}
    # the shipped run pins 24 contrast images; the default's 2 memory batches of 8 are as many
    assert cfg.memory_batches() == shipped.memory_batches()
