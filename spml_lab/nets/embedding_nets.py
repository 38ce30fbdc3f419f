"""Embedding networks: pixels in, unit-length embedding vectors out.

SPML's network maps an image to a D-dimensional unit vector per pixel at 1/4 of the input
resolution (the paper's DeepLab head upsamples output-stride 8 features by 2). This module holds
the small network that trains from scratch on a laptop CPU and the paper's DeepLab-v2 network
(ResNet-50/101 + ASPP) for real data; both follow one interface: ``forward(images) -> (B, D,
ceil(H/4), ceil(W/4))`` unit-norm embeddings, with images in [0, 1].

A network's forward is channels first, as convolutions are. Everything after the network takes
embeddings channels last, ``(B, h, w, D)``: the relations, k-means, the heads, kNN, the random
walk and the pictures. `embed` is the one way from images to that layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spml_lab.nets import resnet

__all__ = [
    "embed",
    "SmallEmbeddingNet",
    "ASPP",
    "DeepLabEmbeddingNet",
    "build_embedding_net",
    "EMBEDDING_NETS",
    "imagenet_normalize",
    "small_trunk",
]

EMBEDDING_NETS = ("small", "resnet50", "resnet101")

# ImageNet statistics: images enter in [0, 1] and every network normalises them the same way, so
# a model trained here and one with ImageNet weights see the same input scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(in_channels, out_channels, *, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def imagenet_normalize(images):
    """Normalise (B, 3, H, W) images in [0, 1] by the ImageNet mean and std, as every net here does.

    Examples
    --------
    >>> imagenet_normalize(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).abs().max().item()
    0.0
    """
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def small_trunk(width, dilations=(1, 2, 4, 8)):
    """Return the ``(stem, trunk)`` of the small CPU networks.

    The stem's two stride-2 3x3 convolutions bring the image to 1/4 resolution; the trunk's
    residual blocks of dilations `dilations` widen the context without downsampling (with
    1, 2, 4, 8 an output pixel sees about 250 px, a whole 128 px scene).

    Parameters
    ----------
    width : int
        Channels after the stem (even).
    dilations : sequence of int, optional

    Returns
    -------
    stem, trunk : nn.Sequential
        ``(B, 3, H, W) -> (B, width, ceil(H/4), ceil(W/4))`` together.

    Examples
    --------
    >>> stem, trunk = small_trunk(8, (1, 2))
    >>> tuple(trunk(stem(torch.rand(1, 3, 30, 33))).shape)
    (1, 8, 8, 9)
    """
    stem = nn.Sequential(
        _conv_bn_relu(3, width // 2, stride=2),
        _conv_bn_relu(width // 2, width // 2),
        _conv_bn_relu(width // 2, width, stride=2),
    )
    trunk = nn.Sequential(*[_DilatedResidual(width, int(d)) for d in dilations])
    return stem, trunk


class _DilatedResidual(nn.Module):
    """Two 3x3 convolutions with a skip; dilation widens the context without downsampling."""

    def __init__(self, channels, dilation):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels, dilation=dilation),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return F.relu(x + self.body(x))


class SmallEmbeddingNet(nn.Module):
    """A small fully convolutional embedding network for CPU training.

    Two stride-2 convolutions bring the image to 1/4 resolution, then residual blocks with
    dilations 1, 2, 4, 8 give each output pixel a receptive field of about 250 px, a whole
    128 px scene (`small_trunk`), and a 1x1 convolution projects to the embedding.

    Parameters
    ----------
    embedding_dim : int, optional
        Embedding dimension D (the paper uses 32 or 64).
    width : int, optional
        Channels of the trunk.

    Examples
    --------
    >>> net = SmallEmbeddingNet(embedding_dim=16, width=16)
    >>> emb = net(torch.rand(2, 3, 64, 48))
    >>> tuple(emb.shape), bool(torch.allclose(emb.norm(dim=1), torch.ones(2, 16, 12)))
    ((2, 16, 16, 12), True)
    """

    output_stride = 4

    def __init__(self, embedding_dim=32, width=64):
        super().__init__()
        self.stem, self.trunk = small_trunk(width)
        self.embed = nn.Conv2d(width, embedding_dim, 1)

    def forward(self, images):
        """Embed a batch of images.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        emb : (B, D, ceil(H/4), ceil(W/4)) float tensor, unit length along D
        """
        x = self.trunk(self.stem(imagenet_normalize(images)))
        return F.normalize(self.embed(x), dim=1)


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid: parallel dilated 3x3 convolutions, summed.

    Each branch sees the same features through a different dilation, so one output pixel mixes
    context at several scales; summing (not concatenating) is DeepLab-v2's choice and the
    paper's. No batch norm and no ReLU: the sum is the embedding itself.

    Parameters
    ----------
    in_channels : int
    out_channels : int
    rates : sequence of int, optional
        Dilation of each branch (DeepLab-v2 and the paper: 6, 12, 18, 24 at output stride 8).

    Examples
    --------
    >>> aspp = ASPP(8, 4, rates=(1, 2))
    >>> tuple(aspp(torch.rand(1, 8, 5, 7)).shape)
    (1, 4, 5, 7)
    """

    def __init__(self, in_channels, out_channels, rates=(6, 12, 18, 24)):
        super().__init__()
        if len(rates) == 0 or min(rates) < 1:
            raise ValueError(f"rates must be one or more ints >= 1, got {rates!r}")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate) for rate in rates
        )

    def forward(self, x):
        """Sum the branches: (B, in_channels, h, w) -> (B, out_channels, h, w)."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabEmbeddingNet(nn.Module):
    """The paper's embedding network: dilated ResNet (output stride 8) + ASPP, upsampled x2.

    Images are normalised with ImageNet statistics, the ResNet's res5 (1/8, 2048 channels) goes
    through `ASPP` to D channels, is bilinearly upsampled to 1/4 of the input and normalised to
    unit length. Submodules are named for the trainer's parameter groups: ``backbone`` (the
    ResNet, ImageNet-pretrained, base LR) and ``embed`` (the ASPP, from scratch, 10x LR).

    Parameters
    ----------
    depth : {50, 101}, optional
        ResNet depth (paper: 101).
    embedding_dim : int, optional
        Embedding dimension D (paper: 64 on VOC).
    pretrained : str or Path, optional
        A torchvision ImageNet checkpoint for the backbone (see `resnet.load_imagenet_weights`);
        None or "" keeps torchvision's random initialisation.

    Attributes
    ----------
    pretrained_report : resnet.LoadedWeights or None
        What was loaded from `pretrained`.

    Raises
    ------
    ValueError
        On an unknown depth or a checkpoint that does not fit the backbone.
    FileNotFoundError
        If `pretrained` does not exist.

    Notes
    -----
    Followed from the paper's code (``spml/models/embeddings/resnet_deeplab.py``): res5 only
    (res2 is not used by its DeepLab variant), ASPP rates 6/12/18/24 summed, with biases and no
    batch norm or ReLU, bilinear x2 upsampling, layer3/layer4 dilated 2/4 with the first block
    of each at the previous dilation. Differences: the stem is torchvision's 7x7 convolution
    instead of the paper's three 3x3 convolutions (so torchvision ImageNet weights load); the
    upsampling targets ``ceil(H/4)`` exactly (x2 of ``ceil(H/8)`` overshoots by one pixel when
    H mod 8 is in 1..4), and the embedding is L2-normalised here rather than in the clustering.
    The paper also leaves the stem and res2 out of its optimizer and uses batch-norm momentum
    3e-4 (near-frozen statistics); both are training choices, not part of this module.

    Examples
    --------
    >>> net = DeepLabEmbeddingNet(50, 8).eval()
    >>> emb = net(torch.rand(1, 3, 36, 44))
    >>> tuple(emb.shape), bool(torch.allclose(emb.norm(dim=1), torch.ones(1, 9, 11)))
    ((1, 8, 9, 11), True)
    """

    output_stride = 4

    def __init__(self, depth=101, embedding_dim=64, *, pretrained=None):
        super().__init__()
        if depth not in resnet.BLOCKS:
            raise ValueError(f"depth must be one of {sorted(resnet.BLOCKS)}, got {depth!r}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim!r}")
        # No ImageNet classifier: every parameter must get a gradient under DDP.
        self.backbone = resnet.ResNet(resnet.BLOCKS[depth], output_stride=8, num_classes=None)
        self.embed = ASPP(512 * resnet.Bottleneck.expansion, embedding_dim)
        self.pretrained_report = None
        if pretrained:
            self.pretrained_report = resnet.load_imagenet_weights(self.backbone, pretrained)

    def forward(self, images):
        """Embed a batch of images.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        emb : (B, D, ceil(H/4), ceil(W/4)) float tensor, unit length along D
        """
        height, width = images.shape[-2:]
        # res5: (B, 2048, ceil(H/8), ceil(W/8))
        _, res5 = self.backbone.forward_features(imagenet_normalize(images))
        emb = self.embed(res5)  # (B, D, ceil(H/8), ceil(W/8))
        size = (math.ceil(height / 4), math.ceil(width / 4))
        emb = F.interpolate(emb, size=size, mode="bilinear", align_corners=False)
        return F.normalize(emb, dim=1)


def build_embedding_net(name, embedding_dim, *, width=64, pretrained=None):
    """Build the embedding network called `name`.

    Parameters
    ----------
    name : {"small", "resnet50", "resnet101"}
    embedding_dim : int
    width : int, optional
        Trunk channels of "small" (ignored by the ResNets).
    pretrained : str or Path, optional
        ImageNet checkpoint for the ResNets (ignored by "small", which trains from scratch);
        None or "" means random initialisation.

    Returns
    -------
    net : SmallEmbeddingNet or DeepLabEmbeddingNet

    Examples
    --------
    >>> type(build_embedding_net("small", 8, width=8)).__name__
    'SmallEmbeddingNet'
    """
    if name == "small":
        return SmallEmbeddingNet(embedding_dim, width)
    if name in ("resnet50", "resnet101"):
        return DeepLabEmbeddingNet(int(name[len("resnet") :]), embedding_dim, pretrained=pretrained)
    raise ValueError(f"name must be one of {list(EMBEDDING_NETS)}, got {name!r}")


def embed(net, images):
    """Embed images for use after the network: eval mode, no gradients, channels last.

    Parameters
    ----------
    net : torch.nn.Module
        Maps (B, 3, H, W) images in [0, 1] to (B, D, h, w) embeddings.
    images : (B, 3, H, W) float tensor
        Moved to the network's device.

    Returns
    -------
    embeddings : (B, h, w, D) float32 tensor
        Unit length along D (re-normalised in float32 after a reduced-precision network), on
        the network's device; a view of the channels-first result, so a head that turns it
        back computes exactly what it would on the network's output.

    Examples
    --------
    >>> net = SmallEmbeddingNet(embedding_dim=8, width=8)
    >>> emb = embed(net, torch.rand(1, 3, 16, 16))
    >>> tuple(emb.shape), net.training, bool(torch.allclose(emb.norm(dim=-1), torch.ones(1, 4, 4)))
    ((1, 4, 4, 8), True, True)
    """
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        with torch.no_grad():
            emb = F.normalize(net(images.to(device).float()).float(), dim=1)  # (B, D, h, w)
    finally:
        net.train(was_training)
    return emb.permute(0, 2, 3, 1)
