"""The tag classifier whose last layer gives class activation maps (CAMs).

A classifier trained on image tags alone ends in a 1x1 convolution before global average
pooling, so the same convolution applied to the feature map (before pooling) shows *where* each
class's evidence lies [1]_::

    images --trunk--> features (B, F, h, w) --1x1 conv--> raw CAMs (B, C-1, h, w)
                                                 |--mean over (h, w)--> tag logits (B, C-1)
    CAM_k = ReLU(raw CAM_k) / max over the image of ReLU(raw CAM_k)        in [0, 1]

The trunk is the small embedding net's (`embedding_nets.small_trunk`). Training it on tags and
turning its CAMs into pseudo labels is `spml_lab.labelling`.

References
----------
.. [1] Zhou et al. "Learning Deep Features for Discriminative Localization", CVPR 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spml_lab.nets.embedding_nets import imagenet_normalize, small_trunk

__all__ = ["TagClassifier", "CLASSIFIER_WIDTH"]

# Channels of the trunk: the width the accuracy benchmark made its CAM pseudo labels with
# (benchmarks/accuracy.py), as wide as the calibrated recipe's embedding net (TrainConfig.width);
# `spml-lab cam-labels --width` defaults to it. The classifier's training defaults sit beside
# its training loop (`spml_lab.labelling.tag_training`).
CLASSIFIER_WIDTH = 32


class TagClassifier(nn.Module):
    """Multi-label image classifier whose last layer gives class activation maps.

    Its stem and trunk are `embedding_nets.small_trunk`, the small embedding net's (output
    stride 4), shallower by default; a 1x1 convolution scores each foreground class at each
    position, and their mean over the image is the tag logit.

    Parameters
    ----------
    num_classes : int
        Classes C, background (class 0) included; the classifier scores the C - 1 others.
    width : int, optional
        Channels of the trunk.
    dilations : sequence of int, optional
        One residual block per entry, at output stride 4. Each block widens the receptive
        field by ``16 * d`` px: context helps to recognise a class, but a field much larger
        than the objects lets every position see the whole image, and the CAMs stop saying
        *where* the class is. The default (about 59 px) localised best on the 128 px embedded
        scenes, against `embedding_nets.SmallEmbeddingNet`'s (1, 2, 4, 8); on 32 px images use
        ``(1,)``.

    Examples
    --------
    >>> net = TagClassifier(4, width=8)
    >>> images = torch.rand(2, 3, 32, 24)
    >>> tuple(net(images).shape), tuple(net.cams(images).shape)
    ((2, 3), (2, 4, 8, 6))
    """

    output_stride = 4

    def __init__(self, num_classes, *, width=CLASSIFIER_WIDTH, dilations=(1, 2)):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + a class), got {num_classes}")
        self.num_classes = int(num_classes)
        self.stem, self.trunk = small_trunk(width, dilations)
        self.classifier = nn.Conv2d(width, self.num_classes - 1, 1)

    def raw_cams(self, images):
        """Class scores at every position, before ReLU and normalisation.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        (B, C - 1, ceil(H/4), ceil(W/4)) float tensor
            Channel ``k - 1`` belongs to class ``k``.
        """
        return self.classifier(self.trunk(self.stem(imagenet_normalize(images))))

    def forward(self, images):
        """Tag logits: the raw CAMs averaged over the image (= classifier on pooled features).

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        logits : (B, C - 1) float tensor
            Column ``k - 1`` is class ``k``'s logit (background has none).
        """
        return self.raw_cams(images).mean(dim=(2, 3))

    @torch.no_grad()
    def cams(self, images, size=None):
        """Class activation maps in [0, 1]: ReLU, optional resize, divide by the image's max.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]
        size : (int, int), optional
            Bilinear resize to (H', W') before normalising (as SEAM upsamples to the image).

        Returns
        -------
        cams : (B, C, h, w) float tensor
            Channel k is class k's map; channel 0 (background) is all zeros. A class with no
            positive evidence in an image has an all-zero map.
        """
        cams = F.relu(self.raw_cams(images))
        if size is not None:
            cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
        # 1e-5 as SEAM: a map without evidence stays 0 instead of becoming 0 / 0
        cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)
        return torch.cat([torch.zeros_like(cams[:, :1]), cams], dim=1)
