"""A run folder's names, the shipped runs' names, and the one loader (`runs.load_run`)."""

import warnings

import pytest
import torch

from spml_lab.nets.build import build_model
from spml_lab.training import checkpoints, runs
from spml_lab.training.config import TrainConfig


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """A finished ResNet run whose ImageNet file is gone: final.pt + config.yaml by hand."""
    folder = tmp_path_factory.mktemp("resnet") / "run"
    folder.mkdir()
    missing = folder.parent / "nowhere" / "resnet50-imagenet.pth"
    cfg = TrainConfig(model="resnet50", embedding_dim=8, pretrained=str(missing))
    torch.manual_seed(0)
    net, head = build_model(cfg, 3, load_pretrained=False)
    cfg.to_yaml(folder / runs.CONFIG)
    state = {"model": net.state_dict(), "head": head.state_dict(), "config": cfg.to_dict()}
    state.update(num_classes=3, class_names=["a", "b", "c"], step=7)
    checkpoints.save_checkpoint(state, folder / runs.FINAL)
    return folder, net


def test_a_resnet_run_loads_where_its_imagenet_file_is_absent(resnet_run):
    folder, trained = resnet_run
    run = runs.load_run(folder)
    assert run.cfg.model == "resnet50" and not run.net.training and run.step == 7
    pairs = zip(run.net.state_dict().items(), trained.state_dict().values(), strict=True)
    for (key, a), b in pairs:
        assert torch.equal(a, b), key
    assert run.class_names == ["a", "b", "c"]
    # starting a run is what reads the ImageNet file, and that fails without it
    with pytest.raises(FileNotFoundError):
        build_model(run.cfg, 3)


def test_shipped_names_resolve_and_the_old_spelling_warns_with_the_new_one():
    folder = runs.run_folder("shipped:spml_scribbles")
    assert folder == runs.SHIPPED_RUNS / "spml_scribbles" and (folder / runs.FINAL).is_file()
    with pytest.warns(FutureWarning, match="'shipped:spml_scribbles'"):
        assert runs.run_folder("embedded:spml_scribbles") == folder


def test_bad_run_names_say_what_is_shipped():
    with pytest.raises(FileNotFoundError, match=r"no shipped run 'nope'.*spml_scribbles"):
        runs.run_folder("shipped:nope")
    # a dataset's name given as a run: the message tells the two prefixes apart
    with pytest.raises(FileNotFoundError, match=r"'embedded:' names the embedded datasets"):
        runs.run_folder("embedded:objects")
    # names only: no path can pose as a shipped (read-only) run
    for sneaky in ("shipped:../runs/full", "shipped:/tmp"):
        with pytest.raises(FileNotFoundError, match="no shipped run"):
            runs.run_folder(sneaky)


def test_every_shipped_run_loads_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in runs.shipped_runs():
            assert runs.load_run(f"shipped:{name}").path == runs.SHIPPED_RUNS / name


def test_read_metrics_gives_each_column_as_numbers(tmp_path):
    (tmp_path / runs.METRICS).write_text("step,total\n1,0.5\n2,0.25\n")
    history = runs.read_metrics(tmp_path)
    assert history["step"].tolist() == [1.0, 2.0] and history["total"].tolist() == [0.5, 0.25]
    (tmp_path / runs.METRICS).write_text("step,total\n")
    with pytest.raises(ValueError, match="no logged row"):
        runs.read_metrics(tmp_path)


def test_describe_says_what_a_run_is(resnet_run):
    folder, _ = resnet_run
    run = runs.load_run(folder)
    assert run.describe() == (
        "resnet50 net, 7 steps on 'scribbles' labels, D = 8, 3 classes, stage-2 head: not yet"
    )
