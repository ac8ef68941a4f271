"""Quality assessment module (QAM) and overfitting control module (OCM) of Pick-and-Learn (seed 002, SPEC section 2).

The QAM looks at an image together with a label and returns one raw quality score per sample. Within a batch a
softmax turns the scores into weights for each sample's segmentation loss, so the QAM learns, through that weighted
loss, to give less weight to labels that disagree with the image. The OCM bounds the scores with
``lambda * tanh(x)``, so that after the softmax no sample weighs more than ``e^(2 lambda)`` times another.
"""
from typing import Optional, Sequence, Type

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

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``, the dimension of the segmentation configuration.
        input_channels: image channels plus label channels.
        features_per_stage: width of each stage; its length sets the depth (the QAM's size).
    """

    def __init__(self, conv_op: Type[_ConvNd], input_channels: int, features_per_stage: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        norm_op = get_matching_instancenorm(conv_op)
        layers, channels = [], input_channels
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

    def forward(self, image: torch.Tensor, label_channels: torch.Tensor) -> torch.Tensor:
        x = self.features(torch.cat((image, label_channels), 1))
        return self.score(x.flatten(2).mean(2)).squeeze(1)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size, total = np.array(input_size), 0
        for stage, features in enumerate(self.features_per_stage):
            if stage > 0:
                size = (size + 1) // 2
            total += features * int(np.prod(size))
        return total


def overfitting_control(raw_scores: torch.Tensor, ocm_lambda: Optional[float]) -> torch.Tensor:
    """The OCM, ``lambda * tanh(x)``; ``ocm_lambda=None`` switches it off (plain QAM)."""
    return raw_scores if ocm_lambda is None else ocm_lambda * torch.tanh(raw_scores)


def quality_weights(scores: torch.Tensor, judged: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over the batch, scaled so the weights sum to the batch size (all 1 when the scores are equal).

    ``judged`` (bool per sample) limits the weighting to samples that hold a contour: the others (a patch of pure
    background) keep weight 1, because their per-sample Dice is poor whatever the label's quality, and the QAM would
    otherwise learn to down-weight empty patches instead of wrong contours.
    """
    if judged is None or bool(judged.all()):
        return torch.softmax(scores, 0) * scores.shape[0]
    weights = torch.ones_like(scores)
    if bool(judged.any()):
        weights = weights.masked_scatter(judged, torch.softmax(scores[judged], 0) * judged.sum())
    return weights


def one_hot_label(target: torch.Tensor, num_channels: int, has_regions: bool) -> torch.Tensor:
    """nnU-Net's (B, 1, ...) label map as (B, C, ...) float channels; region targets are already channels.

    Values outside 0..C-1 (the ignore label, which is the largest label and has no channel) give all-zero channels,
    as ``ranking.label_channels`` does; negative values count as background."""
    if has_regions:
        return target.float()
    onehot = torch.zeros((target.shape[0], num_channels + 1, *target.shape[2:]), device=target.device)
    return onehot.scatter_(1, target.long().clamp(0, num_channels), 1)[:, :num_channels]

