"""The library's SPML step equals the per-image loop of benchmarks/contrastive_speed.py.

The loop (per-image k-means and segments, dense per-image masks, autograd) is written
independently of `clustering`, `relations` and `losses`; on a tiny batch with a memory of two
earlier batches, both must give the same clusters, losses and gradients.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import loss_blocks

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "contrastive_speed.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("contrastive_speed", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def block_batches(num_batches=3, size=12, seed=0):
    """Batches of 4 images: smooth random embeddings, block superpixels, stripe scribbles."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        coarse = torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)
        field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        field = field + 0.3 * torch.randn(field.shape, generator=g, dtype=torch.float64)
        embeddings = F.normalize(field, dim=1).permute(0, 2, 3, 1).contiguous()
        rows = torch.arange(size)
        blocks = (rows[:, None] // 3) * 4 + rows[None, :] // 3  # 16 superpixels of 3 x 3
        superpixels = blocks.expand(4, size, size).clone()
        labels = torch.full((4, size, size), IGNORE_INDEX)
        classes = torch.randint(0, 4, (4, 3), generator=g)
        for k in range(3):  # three scribbled rows per image, one class each
            labels[:, 1 + 4 * k, 2:-2] = classes[:, k, None]
        tags = torch.zeros(4, 4, dtype=torch.bool)
        tags[torch.arange(4)[:, None], classes] = True
        tags[:, 0] = True
        tags[3, 1:] = False  # an image with background only: it takes no part in co-occurrence
        batches.append(
            {"embeddings": embeddings, "superpixels": superpixels, "labels": labels, "tags": tags}
        )
    return batches


@pytest.mark.parametrize("config", ["scribble", "all"])
@pytest.mark.parametrize("plan", [True, False])
def test_library_equals_the_per_image_loop(bench, monkeypatch, config, plan):
    if not plan:  # the GPU code path: every pixel against every prototype under masks
        monkeypatch.setattr(loss_blocks, "PLAN_DEVICES", ())
    batches = block_batches()
    check = bench.compare(
        batches[0], bench.library_memory(batches), bench.loop_memory(batches),
        bench.settings_for(config),
    )  # fmt: skip
    assert check["cluster_pixels_differing"] == 0
    assert set(check["lib"]) == set(check["loop"]) == {*bench.CONFIGS[config], "total"}
    for name, value in check["lib"].items():
        assert value == pytest.approx(check["loop"][name], abs=1e-5), name
    assert check["lib"]["total"] > 0
    assert check["max_grad_diff"] < 1e-6


def test_loop_losses_respond_to_the_memory(bench):
    batches = block_batches(seed=1)
    settings = bench.settings_for("all")
    with_memory, _ = bench.loop_losses(
        batches[0], batches[0]["embeddings"], bench.loop_memory(batches), settings
    )
    without, _ = bench.loop_losses(batches[0], batches[0]["embeddings"], [], settings)
    assert with_memory["low_level"] == pytest.approx(float(without["low_level"]))
    assert float(with_memory["semantic_annotation"]) != pytest.approx(
        float(without["semantic_annotation"])
    )
