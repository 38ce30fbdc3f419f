import pytest
import torch

from spml_lab import cli, devices
from spml_lab.labelling import tag_training
from spml_lab.prediction.evaluate import EvaluateOptions
from spml_lab.prediction.stage2 import Stage2Options
from spml_lab.training import runs
from spml_lab.training.config import TrainConfig


def test_auto_picks_cuda_when_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device() == torch.device("cpu")  # "auto" is the default


def test_an_explicit_cpu_is_honoured_with_cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "", "cuda:x", 3])
def test_a_bad_value_is_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match=r"^--device must be 'auto' or a torch device"):
        devices.resolve_device(bad, argument="--device")


def test_a_missing_gpu_is_refused_naming_the_argument(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^TrainConfig.device is 'cuda:1' but CUDA"):
        devices.resolve_device("cuda:1", argument="TrainConfig.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        devices.resolve_device("cuda:1")


def test_a_config_may_name_a_gpu_this_machine_lacks_but_not_a_bad_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainConfig(device="cuda:1").device == "cuda:1"  # written here, run elsewhere
    with pytest.raises(ValueError, match="TrainConfig.device must be 'auto'"):
        TrainConfig(device="gpu")


def _parameter_default(function):
    import inspect

    return inspect.signature(function).parameters["device"].default


def _command_default(command, argv):
    """The device a command hands on when --device is not given."""
    args = cli.build_parser().parse_args([command, *argv])
    if hasattr(args, "device"):  # a flag of its own
        return args.device
    options = {"train": TrainConfig, "evaluate": EvaluateOptions, "stage2": Stage2Options}
    return options[command]().device  # a flag made from a field: not given, the field's default


def test_every_command_and_entry_point_defaults_to_auto():
    commands = {
        "train": [],
        "evaluate": ["run"],
        "stage2": ["run"],
        "predict": ["run", "image.png"],
        "cam-labels": ["data"],
    }
    assert {name: _command_default(name, argv) for name, argv in commands.items()} == dict.fromkeys(
        commands, devices.DEFAULT
    )
    entry_points = (runs.load_run, tag_training.train_tag_classifier)
    assert [_parameter_default(f) for f in entry_points] == [devices.DEFAULT] * 2
    assert devices.DEFAULT == "auto"
