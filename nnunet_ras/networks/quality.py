"""The quality assessment module (QAM) of Pick-and-Learn (Zhu, Shi and Wu, "Pick-and-Learn: Automatic Quality
Evaluation for Noisy-Labeled Image Segmentation", MICCAI 2019).

The QAM looks at an image together with a label and returns one raw quality score per sample; how the scores become
loss weights (the softmax over the batch, the overfitting control module) is ``nnunet_ras.quality.weighting``.
"""
import importlib
import warnings
from typing import Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_instancenorm
from torch import nn
from torch.nn.modules.conv import _ConvNd


class QualityAssessmentNet(nn.Module):
    """A small strided CNN: (image channels + one-hot label channels) -> one raw score per sample.

    Each stage is conv (stride 2 after the first) -> instance norm -> leaky ReLU; global average pooling and a linear
    layer give the score. The linear layer starts at zero, so all samples start with equal weight and training
    moves away from plain (unweighted) training only as far as the weighted loss asks.

    With ``image_gradient_channels`` the QAM also sees the gradient magnitude of the first that many image channels
    (``image_gradient_magnitude``), next to the image. A label whose border is a few pixels off the organ's border
    (a small erosion of a large organ) differs from a clean one only in where the label's edge lies against the
    image's edges; the edges as an input let the first stage compare the two directly, where a plain QAM must first
    learn an edge detector from the loss weighting's weak signal. This is a change to the QAM's input, a room
    Pick-and-Learn leaves open, not part of the published module.

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``, the dimension of the segmentation configuration.
        input_channels: image channels plus label channels.
        features_per_stage: width of each stage; its length sets the depth (the QAM's size).
        image_gradient_channels: how many leading image channels also enter as gradient magnitude (0: none, the
            published QAM).
    """

    def __init__(self, conv_op: Type[_ConvNd], input_channels: int, features_per_stage: Sequence[int] = (16, 32, 64, 128),
                 image_gradient_channels: int = 0):
        super().__init__()
        norm_op = get_matching_instancenorm(conv_op)
        layers, channels = [], input_channels + image_gradient_channels
        for stage, features in enumerate(features_per_stage):
            layers += [conv_op(channels, features, 3, stride=1 if stage == 0 else 2, padding=1),
                       norm_op(features, affine=True), nn.LeakyReLU(0.01, inplace=True)]
            channels = features
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(channels, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.conv_op = conv_op
        self.features_per_stage = list(features_per_stage)
        self.image_gradient_channels = image_gradient_channels

    def forward(self, image: torch.Tensor, label_channels: torch.Tensor) -> torch.Tensor:
        inputs = [image, label_channels]
        if self.image_gradient_channels:
            inputs.insert(1, image_gradient_magnitude(image[:, :self.image_gradient_channels]))
        x = self.features(torch.cat(inputs, 1))
        return self.score(x.flatten(2).mean(2)).squeeze(1)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size, total = np.array(input_size), 0
        for stage, features in enumerate(self.features_per_stage):
            if stage > 0:
                size = (size + 1) // 2
            total += features * int(np.prod(size))
        return total


def image_gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """Per channel of a (B, C, *spatial) image, the length of its spatial gradient (central differences inside,
    one-sided at the borders: ``torch.gradient``), in image units per voxel. Spatial sizes of 1 (a 2D slice kept as
    3D) contribute no derivative."""
    dims = [d for d in range(2, image.ndim) if image.shape[d] > 1]
    if not dims:
        return torch.zeros_like(image)
    return torch.stack(torch.gradient(image, dim=dims)).square().sum(0).sqrt()


_MOVED = {'one_hot_label': 'label_channels', 'overfitting_control': 'overfitting_control',
          'quality_weights': 'quality_weights'}


def __getattr__(name: str):
    """The old names of what moved to ``nnunet_ras.quality.weighting``, deprecated, imported only when asked for."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} is now nnunet_ras.quality.weighting.{_MOVED[name]}", DeprecationWarning, 2)
    return getattr(importlib.import_module('nnunet_ras.quality.weighting'), _MOVED[name])
