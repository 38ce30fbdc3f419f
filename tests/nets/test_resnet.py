import math
import re

import pytest
import torch

from spml_lab.nets import resnet

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(blocks):
    """torchvision's ResNet state dict keys, in its order, from the block counts alone."""
    keys = ["conv1.weight", *(f"bn1.{s}" for s in BN)]
    for layer, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{layer}.{block}."
            for j in (1, 2, 3):
                keys += [f"{prefix}conv{j}.weight", *(f"{prefix}bn{j}.{s}" for s in BN)]
            if block == 0:  # every stage changes the channel count, so its first block projects
                keys += [f"{prefix}downsample.0.weight", *(f"{prefix}downsample.1.{s}" for s in BN)]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    "build, blocks, count",
    [(resnet.resnet50, (3, 4, 6, 3), 25_557_032), (resnet.resnet101, (3, 4, 23, 3), 44_549_160)],
)
def test_keys_and_parameter_count_are_torchvisions(build, blocks, count):
    net = build()
    state = net.state_dict()
    assert list(state) == torchvision_keys(blocks)
    assert sum(p.numel() for p in net.parameters()) == count  # torchvision's published totals
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("height, width", [(64, 64), (37, 50)])
def test_feature_shapes(output_stride, height, width):
    net = resnet.ResNet((1, 1, 1, 1), output_stride=output_stride).eval()
    with torch.no_grad():
        res2, res5 = net.forward_features(torch.rand(2, 3, height, width))
    assert res2.shape == (2, 256, math.ceil(height / 4), math.ceil(width / 4))
    size = (math.ceil(height / output_stride), math.ceil(width / output_stride))
    assert res5.shape == (2, 2048, *size)


def _conv2_stride_dilation(layer):
    return [(block.conv2.stride[0], block.conv2.dilation[0]) for block in layer]


def test_dilation_rule_at_output_stride_8():
    net = resnet.resnet50(output_stride=8)
    assert _conv2_stride_dilation(net.layer2) == [(2, 1)] + [(1, 1)] * 3
    # the first block of a dilated stage keeps the previous stage's dilation
    assert _conv2_stride_dilation(net.layer3) == [(1, 1)] + [(1, 2)] * 5
    assert _conv2_stride_dilation(net.layer4) == [(1, 2), (1, 4), (1, 4)]
    assert net.layer4[1].conv2.padding == (4, 4)
    assert net.layer3[0].downsample[0].stride == (1, 1)
    assert net.layer4[0].downsample[0].stride == (1, 1)
    assert net.dilations == (1, 1, 2, 4)


def test_dilation_rule_at_output_stride_16_and_32():
    net16, net32 = resnet.resnet50(output_stride=16), resnet.resnet50(output_stride=32)
    assert _conv2_stride_dilation(net16.layer3) == [(2, 1)] + [(1, 1)] * 5
    assert _conv2_stride_dilation(net16.layer4) == [(1, 1), (1, 2), (1, 2)]
    for layer in (net32.layer2, net32.layer3, net32.layer4):
        assert _conv2_stride_dilation(layer)[0] == (2, 1)
        assert {d for _, d in _conv2_stride_dilation(layer)} == {1}


def _res5(net, x):
    with torch.no_grad():
        return net.forward_features(x)[1]


def test_dilated_net_computes_the_strided_net_on_a_finer_grid():
    # Trading a stride for dilation (first block at the previous dilation) must give the
    # strided network's features at every k-th position, borders included (eval-mode BN is
    # per-pixel); an odd input size checks the zero padding at the far border too.
    torch.manual_seed(0)
    nets = {s: resnet.ResNet((2, 2, 2, 2), output_stride=s).double().eval() for s in (8, 16, 32)}
    for s in (8, 16):
        nets[s].load_state_dict(nets[32].state_dict())
    x = torch.rand(1, 3, 45, 38, dtype=torch.float64)
    want = _res5(nets[32], x)
    torch.testing.assert_close(_res5(nets[16], x)[..., ::2, ::2], want)
    torch.testing.assert_close(_res5(nets[8], x)[..., ::4, ::4], want)
    # the test can fail: a first block at the new dilation (4) breaks the equivalence
    nets[8].layer4[0].conv2.dilation, nets[8].layer4[0].conv2.padding = (4, 4), (4, 4)
    assert not torch.allclose(_res5(nets[8], x)[..., ::4, ::4], want)


def test_forward_gives_imagenet_logits_and_needs_fc():
    net = resnet.ResNet((1, 1, 1, 1), num_classes=7).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    headless = resnet.ResNet((1, 1, 1, 1), num_classes=None)
    assert not any(k.startswith("fc.") for k in headless.state_dict())
    with pytest.raises(ValueError, match="num_classes=None"):
        headless(torch.rand(1, 3, 32, 32))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="output_stride"):
        resnet.ResNet((1, 1, 1, 1), output_stride=4)
    with pytest.raises(ValueError, match="blocks"):
        resnet.ResNet((1, 1, 1))


# ---------------------------------------------------------------- load_imagenet_weights


def _tiny(seed):
    torch.manual_seed(seed)
    return resnet.ResNet((1, 1, 1, 1), num_classes=10)


def _equal_state(a, b, *, skip_fc=True):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not (skip_fc and k.startswith("fc.")))


def test_load_wrapped_module_prefixed_resnet50(tmp_path):
    torch.manual_seed(0)
    source = resnet.resnet50()
    with torch.no_grad():  # non-trivial BN statistics must load as well
        source.bn1.running_mean.uniform_()
    torch.manual_seed(1)
    target = resnet.resnet50()
    fc_before = target.fc.weight.clone()
    path = tmp_path / "resnet50-imagenet.pth"
    wrapped = {"module." + k: v for k, v in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": torch.tensor(90)}, path)

    report = resnet.load_imagenet_weights(target, path)
    assert _equal_state(source, target)
    assert torch.equal(target.fc.weight, fc_before)  # the ImageNet classifier is not loaded
    assert report.path == str(path)
    assert report.ignored == ("fc.weight", "fc.bias")
    assert report.kept == ("fc.weight", "fc.bias")
    assert len(report.loaded) == len(torchvision_keys((3, 4, 6, 3))) - 2


@pytest.mark.parametrize("wrap", [None, "model"])
def test_load_plain_or_model_wrapped_without_fc_or_batch_counters(tmp_path, wrap):
    # checkpoints from before PyTorch 0.4 have no num_batches_tracked; headless ones no fc
    source, target = _tiny(0), _tiny(1)
    state = {
        k: v
        for k, v in source.state_dict().items()
        if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))
    }
    path = tmp_path / "w.pth"
    torch.save(state if wrap is None else {wrap: state}, path)
    target.bn1.num_batches_tracked.fill_(7)
    report = resnet.load_imagenet_weights(target, path)
    assert int(target.bn1.num_batches_tracked) == 7  # absent from the file: left as it was
    sa, sb = source.state_dict(), target.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in state)
    assert set(report.kept) == set(sb) - set(state)
    assert "bn1.num_batches_tracked" in report.kept and report.ignored == ()


def _broken_file(tmp_path, change):
    state = _tiny(0).state_dict()
    change(state)
    path = tmp_path / "broken-resnet.pth"
    torch.save(state, path)
    return path


def test_missing_key_is_named_with_the_file(tmp_path):
    path = _broken_file(tmp_path, lambda s: s.pop("layer2.0.bn2.running_var"))
    target = _tiny(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="broken-resnet.pth") as info:
        resnet.load_imagenet_weights(target, path)
    assert "missing layer2.0.bn2.running_var (128,)" in str(info.value)
    # nothing was half-loaded
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_unexpected_key_is_named(tmp_path):
    path = _broken_file(tmp_path, lambda s: s.update({"layer5.0.conv1.weight": torch.ones(1)}))
    with pytest.raises(ValueError, match=r"broken-resnet\.pth(.|\n)*unexpected layer5\.0\.conv1"):
        resnet.load_imagenet_weights(_tiny(1), path)


def test_wrong_shape_names_both_shapes(tmp_path):
    path = _broken_file(tmp_path, lambda s: s.update({"layer1.0.conv1.weight": torch.ones(8, 2)}))
    with pytest.raises(ValueError, match="broken-resnet.pth") as info:
        resnet.load_imagenet_weights(_tiny(1), path)
    want = "shape of layer1.0.conv1.weight: file (8, 2), model (64, 64, 1, 1)"
    assert want in str(info.value)


def test_every_problem_is_listed(tmp_path):
    def break_three(state):
        state.pop("conv1.weight")
        state["extra.bias"] = torch.zeros(3)
        state["bn1.bias"] = torch.zeros(3)

    with pytest.raises(ValueError, match="3 problems") as info:
        resnet.load_imagenet_weights(_tiny(1), _broken_file(tmp_path, break_three))
    for key in ("conv1.weight", "extra.bias", "bn1.bias"):
        assert key in str(info.value)


def test_missing_or_unreadable_files(tmp_path):
    missing = tmp_path / "nowhere" / "resnet101.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        resnet.load_imagenet_weights(_tiny(0), missing)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        resnet.load_imagenet_weights(_tiny(0), text)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="list.pth.*state dict"):
        resnet.load_imagenet_weights(_tiny(0), listing)
