"""Quality weighting of Pick-and-Learn (Zhu, Shi and Wu, "Pick-and-Learn: Automatic Quality Evaluation for
Noisy-Labeled Image Segmentation", MICCAI 2019): what training with a QAM and scoring with it must agree on.

The QAM (``networks.quality.QualityAssessmentNet``) sees an image with its label encoded by ``label_channels``, in
training and in scoring alike, and returns a raw score per sample. The overfitting control module (OCM) bounds the
scores with ``lambda * tanh(x)``, so that after the softmax over the batch (``quality_weights``) no sample weighs more
than ``e^(2 lambda)`` times another. A trained QAM travels in the nnU-Net checkpoint under ``CHECKPOINT_KEY``.
"""
from typing import Optional

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.utilities.label_handling.label_handling import LabelManager

CHECKPOINT_KEY = 'quality_assessment'


def label_channels(target: torch.Tensor, num_channels: int, has_regions: bool) -> torch.Tensor:
    """The QAM's label input: nnU-Net's (B, 1, ...) label map as (B, C, ...) one-hot float channels; a region
    target, which nnU-Net's data loader has already made into one channel per region, as floats.

    Values outside 0..C-1 (the ignore label, which is the largest label and has no channel) give all-zero channels;
    negative values count as background."""
    if has_regions:
        return target.float()
    onehot = torch.zeros((target.shape[0], num_channels + 1, *target.shape[2:]), device=target.device)
    return onehot.scatter_(1, target.long().clamp(0, num_channels), 1)[:, :num_channels]


def holds_contour(target: torch.Tensor, num_channels: int, has_regions: bool) -> torch.Tensor:
    """Per sample of nnU-Net's full-resolution target: does the label hold any foreground (the ignore label does not
    count)? Patches without contour say nothing about a label's quality."""
    labels = label_channels(target, num_channels, has_regions)
    foreground = labels if has_regions else labels[:, 1:]
    return foreground.flatten(1).any(1)


def case_label_channels(seg: np.ndarray, label_manager: LabelManager) -> np.ndarray:
    """A preprocessed case's (1, ...) label map as the QAM saw such labels in training: for region training first
    made into one channel per foreground region by nnU-Net's own transform (its data loader's), then
    ``label_channels``."""
    target = torch.from_numpy(np.asarray(seg))
    if label_manager.has_regions:
        target = ConvertSegmentationToRegionsTransform(label_manager.foreground_regions)(segmentation=target)
        target = target['segmentation']
    return label_channels(target[None], label_manager.num_segmentation_heads, label_manager.has_regions)[0].numpy()


def overfitting_control(raw_scores: torch.Tensor, ocm_lambda: Optional[float]) -> torch.Tensor:
    """The OCM, ``lambda * tanh(x)``; ``ocm_lambda=None`` switches it off (plain QAM)."""
    return raw_scores if ocm_lambda is None else ocm_lambda * torch.tanh(raw_scores)


def quality_weights(scores: torch.Tensor, judged: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over the batch, scaled so the weights sum to the batch size (all 1 when the scores are equal).

    ``judged`` (bool per sample) limits the weighting to samples that hold a contour: the others (a patch of pure
    background) keep weight 1, because their per-sample Dice is poor whatever the label's quality, and the QAM would
    otherwise learn to down-weight empty patches instead of wrong contours. Their 1s are scattered into the result,
    which keeps them in the scores' autograd graph: under DDP every rank's share, even one without contour, must
    reach the gathered scores in backward (``QualityWeighting.sample_weights``).
    """
    if judged is None or bool(judged.all()):
        return torch.softmax(scores, 0) * scores.shape[0]
    weights = torch.ones_like(scores)
    if bool(judged.any()):
        weights = weights.masked_scatter(judged, torch.softmax(scores[judged], 0) * judged.sum())
    return weights
