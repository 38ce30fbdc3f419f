"""The CUDA-only paths of a training step, run on the CPU: bf16 autocast with channels-last
images and network (what `fit` does on CUDA), and SyncBatchNorm conversion (torchrun on CUDA)."""

import pytest
import torch
from torch.utils.data import default_collate

from spml_lab.method import distributed
from spml_lab.training import train
from spml_lab.training.config import TrainConfig

# the paper's network at the smallest size its output stride 8 allows a k-means grid on
RESNET = dict(model="resnet50", crop_size=32, batch_size=2, embedding_dim=8, kmeans_grid=(2, 2))
RESNET.update(progress=False, data="embedded:objects", annotation="scribbles")


@pytest.fixture(scope="module")
def resnet_step():
    cfg = TrainConfig(**RESNET)
    dataset = train.build_dataset(cfg)
    batch = default_collate([dataset[i] for i in range(2)])
    torch.manual_seed(0)
    net, head = train.build_model(cfg, dataset.num_classes)
    return cfg, batch, net, head


def test_the_network_precision_is_bf16_on_cuda_only_with_amp():
    assert train.network_precision(TrainConfig(amp=True), torch.device("cuda")) == "bf16"
    assert train.network_precision(TrainConfig(amp=False), "cuda") == "fp32"
    assert train.network_precision(TrainConfig(amp=True), "cpu") == "fp32"


def test_a_resnet_step_under_bf16_autocast_is_channels_last_and_agrees_with_fp32(resnet_step):
    cfg, batch, net, head = resnet_step
    seen = {}

    def look(module, args, output):
        seen["channels_last"] = args[0].is_contiguous(memory_format=torch.channels_last)
        seen["dtype"] = output.dtype

    hook = net.register_forward_hook(look)
    losses, grads = {}, {}
    try:
        for precision in ("fp32", "bf16"):
            model = net.to(memory_format=torch.channels_last) if precision == "bf16" else net
            model.eval()  # batch statistics and dropout aside: the two runs see the same net
            head.eval()
            model.zero_grad(set_to_none=True)
            out, _ = train.batch_losses(model, head, batch, cfg, precision=precision)
            out["total"].backward()
            losses[precision] = {k: float(v.detach()) for k, v in out.items()}
            grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()
                                          if p.grad is not None])  # fmt: skip
            seen[precision] = dict(seen)
    finally:
        hook.remove()
        net.to(memory_format=torch.contiguous_format)
    assert seen["fp32"] == {"channels_last": False, "dtype": torch.float32}
    assert seen["bf16"]["channels_last"] and seen["bf16"]["dtype"] == torch.bfloat16
    for name, value in losses["fp32"].items():  # bf16 keeps ~3 significant digits
        assert losses["bf16"][name] == pytest.approx(value, rel=0.05, abs=0.02), name
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert grads["fp32"].shape == grads["bf16"].shape and cosine > 0.9


def test_a_bf16_train_step_updates_the_network_with_finite_losses(resnet_step):
    cfg, batch, net, head = resnet_step
    net, head = net.train(), head.train()
    optimizer = torch.optim.SGD(train.param_groups(net, head, cfg), lr=0.01)
    memory = train.PrototypeMemory(cfg.memory_size)
    before = [p.detach().clone() for p in net.parameters()]
    losses = train.train_step(
        batch, net, head, optimizer, memory, cfg, torch.device("cpu"), precision="bf16"
    )
    assert torch.isfinite(losses).all() and losses.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert memory.bank().num_prototypes > 0
    with pytest.raises(ValueError, match="precision must be"):
        train.batch_losses(net, head, batch, cfg, precision="fp16")


def test_syncbatchnorm_conversion_keeps_every_weight_and_the_output(resnet_step):
    cfg, batch, net, head = resnet_step
    reference = train.build_model(cfg, 2)[0]
    reference.load_state_dict(net.state_dict())
    # what the trainer does under torchrun on CUDA; the conversion itself needs no GPU
    converted = distributed.convert_batchnorm(reference, torch.device("cuda"))
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    state, original = converted.state_dict(), net.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in state)
    images = batch["image"]
    with torch.no_grad():
        # eval: running statistics; training in one process: the batch's own, as BatchNorm2d
        for mode in (False, True):
            converted.train(mode), net.train(mode)
            torch.testing.assert_close(converted(images), net(images))
    net.eval()
