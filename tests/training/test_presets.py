"""Presets fill what is left open, the given fields win, and notebook names map to fields."""

import pytest

from spml_lab.training import presets
from spml_lab.training.config import TrainConfig


def test_auto_is_the_gpu_only_with_cuda():
    assert presets.choose("auto", cuda=True) == "gpu"
    assert presets.choose("auto", cuda=False) == "cpu"
    with pytest.raises(ValueError, match="needs CUDA"):
        presets.choose("gpu", cuda=False)
    with pytest.raises(ValueError, match="'benchmark'"):
        presets.choose("laptop")


def test_given_fields_win_and_none_means_the_preset_s():
    cfg = presets.preset_config("cpu", max_steps=7, warmup_steps=None, annotation="points")
    assert cfg.max_steps == 7 and cfg.warmup_steps == presets.PRESETS["cpu"]["warmup_steps"]
    assert cfg.annotation == "points"
    for name, value in presets.PRESETS["cpu"].items():
        if name != "max_steps":
            assert getattr(cfg, name) == value, name


@pytest.mark.parametrize("name", ["benchmark", "cpu"])
def test_the_embedded_presets_keep_the_recipe_and_add_a_budget(name):
    # the recipe is TrainConfig's defaults: a preset for the embedded data leaves it alone
    changed = presets.preset_config(name).differences(TrainConfig())
    assert set(changed) <= {"max_steps", "warmup_steps", "contrast_images"}, changed


def test_partial_cross_entropy_turns_every_relation_off():
    cfg = presets.preset_config("benchmark", **presets.PARTIAL_CROSS_ENTROPY)
    assert cfg.relation_settings() == {} and cfg.head_trains_embedding


def test_notebook_fields_keep_only_upper_case_train_config_fields():
    namespace = {"MAX_STEPS": 40, "SEED": 2, "PRESET": "cpu", "VAL_IMAGES": 8, "lr": 1.0,
                 "MODEL": None, "OUT_DIR": "runs/x"}  # fmt: skip
    assert presets.notebook_fields(namespace) == {"max_steps": 40, "seed": 2, "out_dir": "runs/x"}


def test_the_gpu_preset_brings_images_to_the_crop_size(monkeypatch):
    monkeypatch.setattr(presets.torch.cuda, "is_available", lambda: True)
    cfg = presets.preset_config("gpu", data="embedded:objects", pretrained="weights.pth")
    scale = 512 / 96  # the embedded objects are 96 px
    assert cfg.scale_range == pytest.approx((0.5 * scale, 1.5 * scale))
    assert cfg.lr == presets.PRETRAINED_LR and cfg.device == "cuda"
    mine = presets.preset_config("gpu", scale_range=(1.0, 1.0))
    assert mine.scale_range == (1.0, 1.0) and mine.lr == presets.PRESETS["gpu"]["lr"]
