"""Embedding networks: pixels in, unit-length embedding vectors out.

SPML's network maps an image to a D-dimensional unit vector per pixel at 1/4 of the input
resolution (the paper's DeepLab head upsamples output-stride 8 features by 2). This module holds
the small network that trains from scratch on a laptop CPU; the ResNet + ASPP network for real
data follows the same interface: ``forward(images) -> (B, D, H/4, W/4)`` unit-norm embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallEmbeddingNet", "SoftmaxHead"]

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
    dilations 1, 2, 4, 8 give each output pixel a receptive field of about 70 px, enough to see
    a whole object in a 128 px scene, and a 1x1 convolution projects to the embedding.

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
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(
            _conv_bn_relu(3, width // 2, stride=2),
            _conv_bn_relu(width // 2, width // 2),
            _conv_bn_relu(width // 2, width, stride=2),
        )
        self.trunk = nn.Sequential(*[_DilatedResidual(width, d) for d in (1, 2, 4, 8)])
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
        x = (images - self.mean) / self.std
        x = self.trunk(self.stem(x))
        return F.normalize(self.embed(x), dim=1)


class SoftmaxHead(nn.Module):
    """Per-pixel classifier on unit embeddings: a 1x1 convolution, logits upsampled to the image.

    Parameters
    ----------
    embedding_dim : int
        Input embedding dimension D.
    num_classes : int
        Number of classes C, background included.

    Examples
    --------
    >>> head = SoftmaxHead(8, 3)
    >>> tuple(head(torch.randn(2, 8, 4, 4), size=(16, 16)).shape)
    (2, 3, 16, 16)
    """

    def __init__(self, embedding_dim, num_classes):
        super().__init__()
        self.classifier = nn.Conv2d(embedding_dim, num_classes, 1)

    def forward(self, emb, size=None):
        """Class logits, bilinearly upsampled to `size` when given.

        Parameters
        ----------
        emb : (B, D, h, w) float tensor
        size : tuple of int, optional
            Output (H, W).

        Returns
        -------
        logits : (B, C, H, W) float tensor
        """
        logits = self.classifier(emb)
        if size is not None:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
