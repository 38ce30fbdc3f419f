import numpy as np
import pytest

from spml_lab.data import synthetic, textures


@pytest.fixture(scope="module")
def objects():
    return synthetic.generate(200, kind="objects", seed=0)


@pytest.fixture(scope="module")
def parts():
    return synthetic.generate(200, kind="parts", seed=0)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    np.testing.assert_array_equal(a.instance, b.instance)


@pytest.mark.parametrize("kind", ["objects", "parts"])
def test_same_arguments_same_arrays_and_seed_matters(kind):
    a = synthetic.generate(5, kind=kind, seed=3)
    _assert_same(a, synthetic.generate(5, kind=kind, seed=3))
    other = synthetic.generate(5, kind=kind, seed=4)
    assert not np.array_equal(a.images, other.images)
    assert not np.array_equal(a.semantic, other.semantic)


@pytest.mark.parametrize("kind", ["objects", "parts"])
def test_shorter_run_is_a_prefix(kind):
    short = synthetic.generate(4, kind=kind, seed=7, difficulty=0.5)
    long = synthetic.generate(12, kind=kind, seed=7, difficulty=0.5)
    _assert_same(short, long[:4])


@pytest.mark.parametrize("kind, size", [("objects", 128), ("parts", 128), ("objects", 96)])
def test_dtypes_shapes_and_ranges(kind, size):
    s = synthetic.generate(3, kind=kind, size=size, seed=1)
    assert s.images.shape == (3, size, size, 3) and s.images.dtype == np.uint8
    assert s.semantic.shape == (3, size, size) and s.semantic.dtype == np.uint8
    assert s.instance.shape == (3, size, size) and s.instance.dtype == np.int32
    assert s.class_names[0] == "background" and len(set(s.class_names)) == len(s.class_names)
    assert s.semantic.max() < len(s.class_names)
    assert s.instance.min() == 0
    assert len(s) == 3 and s.kind == kind
    assert s.tags.shape == (3, len(s.class_names)) and s.tags.dtype == bool
    assert s.images.std() > 10  # not a blank picture


@pytest.mark.parametrize("which", ["objects", "parts"])
def test_instances_are_pure_visible_and_background_has_none(which, request):
    s = request.getfixturevalue(which)
    min_area = s.options["min_area"]
    for semantic, instance in zip(s.semantic, s.instance, strict=True):
        # background <=> no instance (distractors are background)
        np.testing.assert_array_equal(semantic == 0, instance == 0)
        ids = np.unique(instance[instance > 0])
        assert len(ids) >= 1
        for i in ids:
            inside = instance == i
            assert len(np.unique(semantic[inside])) == 1
            assert inside.sum() >= min_area


def test_every_class_appears(objects, parts):
    assert len(objects.class_names) - 1 >= 6
    for s in (objects, parts):
        present = np.unique(s.semantic)
        np.testing.assert_array_equal(present, np.arange(len(s.class_names)))
    assert parts.class_names == [
        "background",
        "head",
        "torso",
        "upper_arm",
        "lower_arm",
        "upper_leg",
        "lower_leg",
    ]


def test_one_to_four_objects_per_image(objects):
    counts = [len(np.unique(i[i > 0])) for i in objects.instance]
    assert min(counts) >= 1 and max(counts) <= 4
    assert len(set(counts)) == 4  # all of 1..4 occur


def test_no_single_cue_names_a_class():
    cues = synthetic.CLASS_CUES
    assert len(cues) >= 6
    for name, mine in cues.items():
        partners = [
            other
            for other, theirs in cues.items()
            if other != name and sum(mine[k] == theirs[k] for k in mine) == 2
        ]
        assert partners, f"{name} shares two cues with no other class"
    assert {shared for *_, shared in synthetic.shared_cues()} == {
        ("colour", "texture"),
        ("shape", "colour"),
        ("shape", "texture"),
    }


def test_scene_type_pairs_cooccur_more_than_chance(objects):
    names = objects.class_names
    present = np.stack([(objects.semantic == c).any(axis=(1, 2)) for c in range(len(names))], 1)
    np.testing.assert_array_equal(
        synthetic.cooccurrence(objects), present.T.astype(int) @ present.astype(int)
    )
    p = present.mean(0)
    for a, b in synthetic.SCENE_TYPES:
        ia, ib = names.index(a), names.index(b)
        joint = (present[:, ia] & present[:, ib]).mean()
        assert joint > 2 * p[ia] * p[ib], (a, b, joint, p[ia] * p[ib])
    # and with co-occurrence switched off the pairs are no more likely than chance
    flat = synthetic.generate(200, seed=0, cooccurrence=0.0)
    c = synthetic.cooccurrence(flat) / len(flat)
    ia, ib = (names.index(n) for n in synthetic.SCENE_TYPES[0])
    assert c[ia, ib] < 2 * c[ia, ia] * c[ib, ib]


def test_upper_and_lower_limbs_look_alike_but_not_like_the_torso(parts):
    names = parts.class_names
    mean = {n: parts.images[parts.semantic == names.index(n)].mean(0) for n in names[1:]}
    for limb in ("arm", "leg"):
        upper, lower = mean[f"upper_{limb}"], mean[f"lower_{limb}"]
        assert np.abs(upper - lower).max() < 6, (limb, upper, lower)
        assert np.linalg.norm(upper - mean["torso"]) > 25
        assert np.linalg.norm(upper - mean["head"]) > 25


@pytest.mark.parametrize("kind", ["objects", "parts"])
def test_difficulty_zero_has_a_calmer_background(kind, request):
    hard = request.getfixturevalue(kind)[:60]
    easy = synthetic.generate(60, kind=kind, seed=0, difficulty=0.0)

    def background_std(s):
        return np.mean(
            [
                img[sem == 0].astype(float).std(0).mean()
                for img, sem in zip(s.images, s.semantic, strict=True)
            ]
        )

    assert background_std(easy) < 0.5 * background_std(hard)
    assert easy.options["difficulty"] == 0.0
    assert hard.options["difficulty"] == synthetic.DEFAULT_DIFFICULTY


def test_easy_objects_do_not_overlap():
    s = synthetic.generate(30, seed=2, difficulty=0.0)
    for instance in s.instance:
        # no occlusion: every instance stays (nearly) whole, so none is removed as tiny
        areas = np.bincount(instance.ravel())[1:]
        assert areas.min() > 100


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"kind": "people"}, "kind"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.5}, "num_images"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"colour": "red"}, "colour"),
        ({"kind": "objects", "min_figures": 2}, "min_figures"),
        ({"kind": "parts", "cooccurrence": 0.5}, "cooccurrence"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"cooccurrence": 2}, "cooccurrence"),
        ({"min_area": 0}, "min_area"),
    ],
)
def test_bad_arguments_are_named(kwargs, word):
    kwargs = {"num_images": 1, **kwargs}
    with pytest.raises(ValueError, match=word):
        synthetic.generate(**kwargs)


def test_scenes_container():
    s = synthetic.generate(4, seed=5)
    assert len(s[1:3]) == 2 and len(s[2]) == 1 and len(s[-1]) == 1
    np.testing.assert_array_equal(s[-1].images[0], s.images[3])
    np.testing.assert_array_equal(s[[0, 2]].semantic, s.semantic[[0, 2]])
    assert "objects" in repr(s) and len(repr(s)) < 200
    np.testing.assert_array_equal(s.tags[:, 0], (s.semantic == 0).any(axis=(1, 2)))


def test_texture_bank_is_fixed_and_in_range():
    bank = textures.bank()
    assert set(bank) == set(textures.TEXTURES)
    for name, stack in bank.items():
        assert stack.shape == (textures.VARIANTS, textures.BANK_SIZE, textures.BANK_SIZE)
        assert stack.min() >= 0 and stack.max() <= 1
        if name != "flat":
            assert stack.std() > 0.15, name
    wrapped = textures.crop("brick", 1, textures.BANK_SIZE - 4, 0, 10, 6)
    np.testing.assert_array_equal(wrapped[4:], bank["brick"][1, :6, :6])
