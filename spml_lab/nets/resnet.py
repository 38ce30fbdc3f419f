"""ResNet-50/101 with torchvision's parameter names and DeepLab's dilated output stride.

SPML's real-data network is DeepLab-v2: an ImageNet-pretrained ResNet whose last two stages
trade their stride for dilation, so the deepest features (res5) sit at 1/8 of the input instead
of 1/32. This module writes that ResNet here, because torchvision's wheel does not import beside
the CPU torch of this project, and keeps torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1.weight``, ..., ``fc.weight``) so that a torchvision ImageNet checkpoint
(``resnet50-*.pth``, ``resnet101-*.pth``) loads by path with `load_imagenet_weights`.

Notes
-----
Dilation follows torchvision's ``replace_stride_with_dilation`` rule: a stage that gives up its
stride multiplies the running dilation by 2, but its *first* block still uses the dilation of the
stage before (it sits where the stride used to be). With that rule the dilated network computes
exactly the strided network's features on a finer grid: in eval mode, the output-stride-8 res5
sampled every 4th pixel equals the output-stride-32 res5 with the same weights.

The paper's own backbone (UPSNet-style ResNet-v1c) has a deep 3x3 stem with 128 channels; here
the stem is torchvision's 7x7 convolution, because its ImageNet weights are the ones users have.

References
----------
.. [1] He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016.
.. [2] Chen, Papandreou, Kokkinos, Murphy, Yuille. "DeepLab: Semantic Image Segmentation with
   Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2018.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BLOCKS",
    "Bottleneck",
    "ResNet",
    "resnet50",
    "resnet101",
    "LoadedWeights",
    "load_imagenet_weights",
]

# Bottleneck blocks per stage (layer1..layer4) for each depth, as in torchvision.
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
OUTPUT_STRIDES = (8, 16, 32)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, plus the identity or a projection.

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5"), so checkpoints
    trained that way load with the same meaning.

    Parameters
    ----------
    in_channels : int
    planes : int
        Channels of the 3x3 convolution; the block outputs ``4 * planes``.
    stride : int, optional
    dilation : int, optional
        Dilation (and padding) of the 3x3 convolution.
    downsample : torch.nn.Module, optional
        Projection of the input when its shape differs from the output's.

    Examples
    --------
    >>> block = Bottleneck(64, 16)
    >>> tuple(block(torch.rand(1, 64, 5, 5)).shape)
    (1, 64, 5, 5)
    """

    expansion = 4

    def __init__(self, in_channels, planes, *, stride=1, dilation=1, downsample=None):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        """(B, in_channels, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet whose state dict keys are torchvision's, at output stride 8, 16 or 32.

    Parameters
    ----------
    blocks : sequence of 4 int
        Blocks per stage, e.g. ``BLOCKS[101]``.
    output_stride : {8, 16, 32}, optional
        Input size / res5 size. Stages past this stride dilate instead of striding (DeepLab: 8).
    num_classes : int or None, optional
        Outputs of the ImageNet classifier ``fc``; None builds no ``fc`` (a segmentation
        network never uses it, and distributed training refuses parameters without gradients).

    Attributes
    ----------
    output_stride : int
    dilations : tuple of 4 int
        Dilation reached by each stage (its first block uses the previous stage's).

    Examples
    --------
    >>> net = ResNet((1, 1, 1, 1), output_stride=16).eval()
    >>> res2, res5 = net.forward_features(torch.rand(1, 3, 64, 64))
    >>> tuple(res2.shape), tuple(res5.shape), net.dilations
    ((1, 256, 16, 16), (1, 2048, 4, 4), (1, 1, 1, 2))
    """

    def __init__(self, blocks, *, output_stride=8, num_classes=1000):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive ints (layer1..layer4), got {blocks!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        self._in_channels, self._dilation, stride_so_far = 64, 1, 4  # the stem divides by 4
        layers, dilations = [], []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            # layer1 never strides (the max-pool already did); later stages stride by 2
            # until the wanted output stride is reached, then dilate by 2 instead.
            dilate = index > 0 and stride_so_far >= output_stride
            stride = 1 if index == 0 or dilate else 2
            stride_so_far *= stride
            layers.append(self._make_layer(planes, count, stride=stride, dilate=dilate))
            dilations.append(self._dilation)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.dilations = tuple(dilations)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        features = 512 * Bottleneck.expansion
        self.fc = None if num_classes is None else nn.Linear(features, num_classes)

        # torchvision's initialisation, so a randomly initialised net is the same kind of net.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes, count, *, stride, dilate):
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= 2
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # The first block takes the previous stage's dilation: it stands where the stride was.
        layers = [
            Bottleneck(
                self._in_channels,
                planes,
                stride=stride,
                dilation=previous_dilation,
                downsample=downsample,
            )
        ]
        self._in_channels = out_channels
        layers += [
            Bottleneck(out_channels, planes, dilation=self._dilation) for _ in range(count - 1)
        ]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        """Return the res2 and res5 feature maps.

        Parameters
        ----------
        x : (B, 3, H, W) float tensor
            ImageNet-normalised images.

        Returns
        -------
        res2 : (B, 256, ceil(H/4), ceil(W/4)) float tensor
            Output of ``layer1``.
        res5 : (B, 2048, h, w) float tensor
            Output of ``layer4`` at 1/`output_stride` (``h = ceil(H / output_stride)``).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res5 = self.layer4(self.layer3(self.layer2(res2)))
        return res2, res5

    def forward(self, x):
        """ImageNet class logits (needs ``fc``), as torchvision's ResNet computes them.

        Parameters
        ----------
        x : (B, 3, H, W) float tensor
            ImageNet-normalised images.

        Returns
        -------
        logits : (B, num_classes) float tensor
        """
        if self.fc is None:
            raise ValueError("this ResNet was built with num_classes=None: it has no classifier")
        _, res5 = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(res5), 1))


def resnet50(*, output_stride=8, num_classes=1000):
    """ResNet-50 (blocks 3, 4, 6, 3), randomly initialised.

    Parameters
    ----------
    output_stride : {8, 16, 32}, optional
    num_classes : int or None, optional
        None drops the ImageNet classifier ``fc``.

    Returns
    -------
    net : ResNet

    Examples
    --------
    >>> sum(p.numel() for p in resnet50().parameters())  # torchvision's count
    25557032
    """
    return ResNet(BLOCKS[50], output_stride=output_stride, num_classes=num_classes)


def resnet101(*, output_stride=8, num_classes=1000):
    """ResNet-101 (blocks 3, 4, 23, 3), randomly initialised.

    Parameters
    ----------
    output_stride : {8, 16, 32}, optional
    num_classes : int or None, optional
        None drops the ImageNet classifier ``fc``.

    Returns
    -------
    net : ResNet

    Examples
    --------
    >>> resnet101(output_stride=16).dilations
    (1, 1, 1, 2)
    """
    return ResNet(BLOCKS[101], output_stride=output_stride, num_classes=num_classes)


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_imagenet_weights` did.

    Attributes
    ----------
    path : str
        The checkpoint read.
    loaded : tuple of str
        Backbone keys copied from the file.
    ignored : tuple of str
        File keys not used (the ImageNet classifier ``fc.*``).
    kept : tuple of str
        Backbone keys absent from the file and left as they were (``fc.*``, and the
        ``num_batches_tracked`` counters that checkpoints older than PyTorch 0.4 lack).
    """

    path: str
    loaded: tuple
    ignored: tuple
    kept: tuple


def _is_classifier(key):
    return key.startswith("fc.")


def _read_state_dict(path):
    """Read a checkpoint and unwrap it to a flat {key: tensor} dict without "module." prefixes."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # foreign files raise anything: KeyError, IndexError, EOFError...
        raise ValueError(f"{path}: not a checkpoint that torch.load can read ({err!r})") from err
    for wrapper in ("state_dict", "model"):  # training scripts often save {"state_dict": ...}
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict of tensors (plain, or under 'state_dict' or 'model')"
        )
    # nn.DataParallel / DistributedDataParallel save their wrapped module's keys as "module.*".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_imagenet_weights(backbone, path):
    """Load a torchvision ImageNet ResNet checkpoint into `backbone`, strictly.

    Every backbone weight must be in the file with the same shape, and the file may hold
    nothing else; only the classifier ``fc.*`` is skipped (segmentation does not use it) and
    ``num_batches_tracked`` may be absent. A partial load would silently train from random
    weights, so any other difference is an error that lists every offending key.

    Parameters
    ----------
    backbone : ResNet
        Changed in place.
    path : str or Path
        A ``.pth`` file holding a state dict, plain or under ``"state_dict"`` or ``"model"``,
        keys optionally prefixed ``module.``.

    Returns
    -------
    report : LoadedWeights

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a state dict, or has missing, unexpected or mis-shaped keys; the
        message names the file, each key, and both shapes of a mismatch.

    Examples
    --------
    >>> import tempfile
    >>> net = ResNet((1, 1, 1, 1))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     torch.save(net.state_dict(), f"{folder}/w.pth")
    ...     report = load_imagenet_weights(ResNet((1, 1, 1, 1)), f"{folder}/w.pth")
    >>> len(report.loaded), report.ignored
    (102, ('fc.weight', 'fc.bias'))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {path}")
    given = _read_state_dict(path)
    own = backbone.state_dict()
    wanted = {k: v for k, v in own.items() if not _is_classifier(k)}
    usable = {k: v for k, v in given.items() if not _is_classifier(k)}

    problems = []
    for key in wanted:
        if key not in usable and not key.endswith("num_batches_tracked"):
            problems.append(f"missing {key} {tuple(wanted[key].shape)}")
    problems += [f"unexpected {key}" for key in usable if key not in wanted]
    for key in usable.keys() & wanted.keys():
        if usable[key].shape != wanted[key].shape:
            problems.append(
                f"shape of {key}: file {tuple(usable[key].shape)}, model {tuple(wanted[key].shape)}"
            )
    if problems:
        raise ValueError(
            f"{path}: does not match the ResNet backbone ({len(problems)} problems):\n  "
            + "\n  ".join(sorted(problems))
        )
    # strict=False only tolerates what was checked above: fc.* and num_batches_tracked.
    backbone.load_state_dict(usable, strict=False)
    return LoadedWeights(
        path=str(path),
        loaded=tuple(k for k in wanted if k in usable),
        ignored=tuple(k for k in given if _is_classifier(k)),
        kept=tuple(k for k in own if k not in usable),
    )
