import math

import pytest
import torch
import torch.nn.functional as F

from spml_lab.nets import embedding_nets, heads, resnet
from spml_lab.training.config import TrainConfig
from spml_lab.training.train import param_groups


@pytest.fixture(scope="module")
def net50():
    torch.manual_seed(0)
    return embedding_nets.DeepLabEmbeddingNet(50, 8).eval()


def test_aspp_sums_dilated_taps_by_hand():
    # all-ones 3x3 kernels on a single impulse: rate r lights the 9 pixels centre + {-r, 0, r}^2;
    # the centre is hit by both branches
    aspp = embedding_nets.ASPP(1, 1, rates=(2, 3))
    with torch.no_grad():
        for branch in aspp.branches:
            branch.weight.fill_(1.0)
            branch.bias.zero_()
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, 5] = 1.0
    want = torch.zeros(11, 11)
    for r in (2, 3):
        for dy in (-r, 0, r):
            for dx in (-r, 0, r):
                want[5 + dy, 5 + dx] += 1.0
    torch.testing.assert_close(aspp(x)[0, 0], want)
    assert want[5, 5] == 2.0


def test_aspp_matches_separate_convolutions():
    torch.manual_seed(0)
    aspp = embedding_nets.ASPP(5, 3)
    x = torch.randn(2, 5, 30, 30)
    want = sum(
        F.conv2d(x, b.weight, b.bias, padding=r, dilation=r)
        for b, r in zip(aspp.branches, (6, 12, 18, 24), strict=True)
    )
    torch.testing.assert_close(aspp(x), want)
    assert [b.dilation for b in aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]


@pytest.mark.parametrize("height, width", [(64, 64), (65, 68), (37, 50), (33, 31)])
def test_embedding_is_unit_length_at_a_quarter(net50, height, width):
    # 65 and 68 are where 2 * ceil(H/8) overshoots ceil(H/4) by one pixel
    with torch.no_grad():
        emb = net50(torch.rand(2, 3, height, width))
    assert emb.shape == (2, 8, math.ceil(height / 4), math.ceil(width / 4))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, *emb.shape[2:]))


def test_resnet101_forward_and_parameter_count():
    torch.manual_seed(0)
    net = embedding_nets.DeepLabEmbeddingNet(101, 64).eval()
    with torch.no_grad():
        emb = net(torch.rand(1, 3, 64, 64))
    assert emb.shape == (1, 64, 16, 16) and net.output_stride == 4
    fc = 2048 * 1000 + 1000
    aspp = 4 * (2048 * 64 * 9 + 64)
    assert sum(p.numel() for p in net.parameters()) == 44_549_160 - fc + aspp


def test_images_are_imagenet_normalised_before_the_backbone(net50):
    # the backbone must see (image - mean) / std: a grey image, checked at the first conv
    grey = torch.full((1, 3, 16, 16), 0.5)
    seen = []
    hook = net50.backbone.conv1.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        net50(grey)
    hook.remove()
    mean, std = (
        torch.tensor(embedding_nets.IMAGENET_MEAN),
        torch.tensor(embedding_nets.IMAGENET_STD),
    )
    want = (0.5 - mean) / std
    torch.testing.assert_close(seen[0][0, :, 3, 7], want)


def test_pretrained_path_loads_into_the_backbone(tmp_path):
    torch.manual_seed(3)
    source = resnet.resnet50()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    net = embedding_nets.build_embedding_net("resnet50", 8, width=999, pretrained=str(path))
    assert isinstance(net, embedding_nets.DeepLabEmbeddingNet)
    mine, theirs = net.backbone.state_dict(), source.state_dict()
    assert set(theirs) - set(mine) == {"fc.weight", "fc.bias"}  # the net has no classifier
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert net.pretrained_report.path == str(path)
    assert len(net.pretrained_report.loaded) == len(mine)


def test_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-weights.pth"):
        embedding_nets.DeepLabEmbeddingNet(50, 8, pretrained=tmp_path / "missing-weights.pth")
    path = tmp_path / "resnet18-like.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="resnet18-like.pth(.|\n)*missing layer1.0.conv1"):
        embedding_nets.DeepLabEmbeddingNet(50, 8, pretrained=path)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.pth: not a checkpoint that torch.load can read"):
        embedding_nets.DeepLabEmbeddingNet(50, 8, pretrained=text)


def test_build_embedding_net_names():
    small = embedding_nets.build_embedding_net("small", 8, width=8, pretrained="ignored.pth")
    assert isinstance(small, embedding_nets.SmallEmbeddingNet)
    assert small(torch.rand(1, 3, 20, 20)).shape == (1, 8, 5, 5)
    torch.manual_seed(0)
    net = embedding_nets.build_embedding_net("resnet101", 4)
    assert len(net.backbone.layer3) == 23 and net.pretrained_report is None
    with pytest.raises(ValueError, match="name must be one of"):
        embedding_nets.build_embedding_net("resnet18", 8)
    with pytest.raises(ValueError, match="depth"):
        embedding_nets.DeepLabEmbeddingNet(34, 8)


def test_gradients_reach_every_parameter(net50):
    net50.train()
    torch.manual_seed(0)
    target = torch.randn(2, 8, 8, 8)
    (net50(torch.rand(2, 3, 32, 32)) * target).sum().backward()
    # DDP refuses parameters without gradients: the unused ImageNet classifier is gone
    missing = [n for n, p in net50.named_parameters() if p.grad is None]
    assert missing == []
    assert net50.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(b.weight.grad.abs().sum() > 0 for b in net50.embed.branches)
    net50.zero_grad(set_to_none=True)
    net50.eval()


def test_param_groups_put_aspp_in_head_and_resnet_in_backbone(net50):
    head = heads.SoftmaxHead(8, 3)
    groups = {
        g["name"]: {id(p) for p in g["params"]} for g in param_groups(net50, head, TrainConfig())
    }
    assert set(groups) == {"backbone", "backbone_bias", "head", "head_bias"}
    backbone = {id(p) for p in net50.backbone.parameters()}
    learned = {id(p) for p in [*net50.embed.parameters(), *head.parameters()]}
    assert groups["backbone"] | groups["backbone_bias"] == backbone
    assert groups["head"] | groups["head_bias"] == learned
    assert {id(b.weight) for b in net50.embed.branches} <= groups["head"]
    assert {id(b.bias) for b in net50.embed.branches} <= groups["head_bias"]


def test_channels_last_bf16_autocast_agrees_with_float32(net50):
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        want = net50(x)
        fast = embedding_nets.DeepLabEmbeddingNet(50, 8).eval()
        fast.load_state_dict(net50.state_dict())
        fast = fast.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x.to(memory_format=torch.channels_last)).float()
    assert got.shape == want.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2, 10, 13), atol=2e-2, rtol=0)
    assert (got * want).sum(dim=1).min() > 0.98  # cosine to the float32 embedding


def test_embed_is_channels_last_unit_and_restores_training_mode():
    net = embedding_nets.SmallEmbeddingNet(8, 8).train()
    images = torch.rand(1, 3, 16, 16)
    out = embedding_nets.embed(net, images)
    assert net.training and tuple(out.shape) == (1, 4, 4, 8) and not out.requires_grad
    net.eval()
    with torch.no_grad():
        want = F.normalize(net(images), dim=1).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, want)
