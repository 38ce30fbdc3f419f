import argparse
import dataclasses

import pytest

from spml_lab.method.relations import RELATIONS, RelationSetting
from spml_lab.training import config
from spml_lab.training.config import TrainConfig

FIELDS = [spec.name for spec in dataclasses.fields(TrainConfig)]


def _other_value(name):
    """A valid value different from the default, by the default's type."""
    default = getattr(TrainConfig(), name)
    strings = {
        "data": "embedded:parts",
        "annotation": "points",
        "split": "val",
        "model": "resnet101",
        "pretrained": "weights/resnet101.pth",
        "lr_policy": "constant",
        "device": "cpu",
        "out_dir": "elsewhere/run",
    }
    if isinstance(default, bool):
        return not default
    if isinstance(default, tuple):
        return tuple(v + 1 if isinstance(v, int) else v / 2 for v in default)
    if isinstance(default, int):
        return default + 2  # keeps `width` even
    if isinstance(default, float):
        return default / 2
    if default is None:  # "unset" float fields (the paper's value for the annotation)
        return 0.25
    return strings[name]


def _flags(name, value, *, underscore=False):
    flag = name if underscore else name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    if isinstance(value, tuple):
        return [f"--{flag}", *map(str, value)]
    return [f"--{flag}", str(value)]


def _parser():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser


def test_yaml_round_trip_keeps_every_field(tmp_path):
    cfg = TrainConfig(**{name: _other_value(name) for name in FIELDS if name != "out_dir"})
    path = tmp_path / "run.yaml"
    cfg.to_yaml(path)
    back = TrainConfig.from_yaml(path)
    assert back == cfg
    assert isinstance(back.kmeans_grid, tuple) and isinstance(back.scale_range[0], float)


def test_yaml_may_leave_fields_out_and_write_floats_as_yaml_does(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nkmeans_grid: [6, 6]\nmax_steps: 5\nlow_level_weight: 1\n")
    cfg = TrainConfig.from_yaml(path)
    assert cfg.lr == 0.001 and cfg.kmeans_grid == (6, 6) and cfg.max_steps == 5
    assert isinstance(cfg.low_level_weight, float) and cfg.batch_size == TrainConfig().batch_size


def test_yaml_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rat: 0.1\nkmeans_grd: [2, 2]\n")
    with pytest.raises(ValueError, match=r"run\.yaml: unknown field 'learning_rat'"):
        TrainConfig.from_yaml(path)
    path.write_text("kmeans_grd: [2, 2]\n")
    with pytest.raises(ValueError, match="did you mean 'kmeans_grid'"):
        TrainConfig.from_yaml(path)


def test_missing_yaml_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "name, value",
    [
        ("batch_size", 0),
        ("annotation", "crayon"),
        ("data", "embedded:cars"),
        ("lr", -0.1),
        ("lr", "fast"),
        ("momentum", 1.0),
        ("kmeans_grid", (4,)),
        ("kmeans_grid", (0, 3)),
        ("scale_range", (1.5, 0.5)),
        ("width", 7),
        ("low_level_concentration", 0.0),
        ("cooccurrence_weight", -1.0),
        ("affinity_threshold", 1.5),
        ("memory_size", -1),
        ("seed", True),
        ("amp", "yes"),
        ("lr_policy", "cosine"),
        ("device", "gpu0"),
        ("checkpoint_every", 0),
        ("crop_size", 96.5),
    ],
)
def test_bad_values_name_the_field(name, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name}\b"):
        TrainConfig(**{name: value})


def test_no_relation_enabled_is_refused():
    with pytest.raises(ValueError, match="at least one relation"):
        TrainConfig(**dict.fromkeys(RELATIONS, False))


@pytest.mark.parametrize(
    ("annotation", "ann", "occ"),
    [
        ("scribbles", (6.0, 1.0), (12.0, 0.5)),
        ("points", (6.0, 0.1), (8.0, 0.1)),
        ("cam_boxes", (6.0, 0.3), (8.0, 0.3)),
        ("cam_tags", (6.0, 0.3), (8.0, 0.3)),
    ],
)
def test_unset_relation_knobs_take_the_papers_per_kind_values(annotation, ann, occ):
    # bashscripts/voc12/train_spml_{scribble,point,box,tag}.sh of the paper's code
    settings = TrainConfig(annotation=annotation).relation_settings()
    assert (
        settings["semantic_annotation"].concentration,
        settings["semantic_annotation"].weight,
    ) == ann
    assert (settings["cooccurrence"].concentration, settings["cooccurrence"].weight) == occ
    assert settings["low_level"] == RelationSetting(16.0, 0.1)
    # (CE + L_ann) x w_ann
    assert TrainConfig(annotation=annotation).resolved_softmax_weight == ann[1]
    given = TrainConfig(annotation=annotation, cooccurrence_weight=0.7).relation_settings()
    assert given["cooccurrence"].weight == 0.7 and given["cooccurrence"].concentration == occ[0]


def test_unset_knobs_follow_a_changed_annotation_and_stay_unset_in_yaml(tmp_path):
    cfg = TrainConfig(annotation="scribbles").replace(annotation="points")
    assert cfg.relation_settings()["semantic_annotation"].weight == 0.1
    cfg.to_yaml(tmp_path / "c.yaml")
    back = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert back.semantic_annotation_weight is None and back == cfg


def test_resolved_softmax_weight_and_contrast_set():
    baseline = TrainConfig(head_trains_embedding=True, annotation="points")
    assert baseline.resolved_softmax_weight == 1.0
    assert TrainConfig(softmax_weight=0.5).resolved_softmax_weight == 0.5
    assert TrainConfig(head_dropout=0.75).head_dropout == TrainConfig().head_dropout
    # the paper's contrast set: 16 live images + 2 memory batches of 16 = 48 images
    assert TrainConfig(batch_size=16).memory_batches() == 2
    assert TrainConfig(batch_size=4, contrast_images=48).memory_batches() == 11
    assert TrainConfig(batch_size=4, contrast_images=48).memory_batches(world_size=4) == 2
    assert TrainConfig(batch_size=4, contrast_images=4).memory_batches() == 0
    with pytest.raises(ValueError, match="contrast_images"):
        TrainConfig(contrast_images=-1)


def test_relation_settings_follow_the_flat_fields():
    cfg = TrainConfig(cooccurrence=False, feature_affinity=True, feature_affinity_weight=0.25)
    settings = cfg.relation_settings()
    assert list(settings) == ["low_level", "semantic_annotation", "feature_affinity"]
    assert settings["feature_affinity"].weight == 0.25
    assert settings["low_level"].concentration == cfg.low_level_concentration


def test_every_field_has_help_and_a_cli_flag():
    parser = _parser()
    for name in FIELDS:
        assert TrainConfig.help(name)
        value = _other_value(name)
        for underscore in (False, True):
            args = parser.parse_args(_flags(name, value, underscore=underscore))
            cfg = config.from_arguments(args)
            assert getattr(cfg, name) == value, name


def test_flags_left_out_keep_defaults_and_override_the_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    TrainConfig(lr=0.5, batch_size=2, low_level=False).to_yaml(path)
    args = _parser().parse_args(["--config", str(path), "--lr", "0.25", "--kmeans-grid", "2", "3"])
    cfg = config.from_arguments(args)
    assert (cfg.lr, cfg.batch_size, cfg.low_level, cfg.kmeans_grid) == (0.25, 2, False, (2, 3))
    assert cfg.max_steps == TrainConfig().max_steps


def test_cli_rejects_a_bad_choice():
    with pytest.raises(SystemExit):
        _parser().parse_args(["--annotation", "crayon"])


def test_differences_and_replace():
    cfg = TrainConfig()
    other = cfg.replace(lr=0.5, device="cpu")
    assert cfg.differences(other) == {"lr": (cfg.lr, 0.5), "device": ("auto", "cpu")}
    assert cfg.differences(other, ignore=config.RESUMABLE_CHANGES) == {"lr": (cfg.lr, 0.5)}
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        cfg.replace(batch_size=-3)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: [0.1\nmax_steps: 3\n")
    with pytest.raises(ValueError, match=r"run.yaml: not valid YAML"):
        TrainConfig.from_yaml(path)
