"""The losses of Xia Z. and Jing D., "MR Image Segmentation" (machine-learning course project, Tsinghua University):
V-Net's squared-denominator Dice and LRDEHL, as nnU-Net loss modules: logits and nnU-Net's targets in, a scalar out.

Targets come as nnU-Net gives them: a label map (B, 1, ...) or, for region training, a one-hot (B, R, ...) tensor.
Wrap them with ``with_deep_supervision`` for deep-supervision outputs.
"""
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import nn


def _one_hot(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """nnU-Net's target as a one-hot tensor of ``like``'s shape (already one-hot for region training)."""
    if target.shape == like.shape:
        return target.to(like.dtype)
    one_hot = torch.zeros_like(like)
    return one_hot.scatter_(1, target.long(), 1)


class SquaredDenominatorDiceLoss(nn.Module):
    """V-Net's Dice loss: 1 - (2 sum(p y) + e) / (sum p^2 + sum y^2 + e), e = 1 (the course project's), mean over
    classes.

    Squaring the denominator's terms makes the gradient push uncertain probabilities to 0 or 1. Sums run over the
    batch and all voxels (``batch_dice``, as the RAS trainer's Dice) or per sample; the background class counts only
    with ``do_bg``. Under DDP (``ddp``) the batch sums are summed over all ranks, as nnU-Net's Dice does, so that the
    Dice is over the whole batch and not over each rank's share of it.
    """

    def __init__(self, apply_nonlin: Optional[Callable] = None, batch_dice: bool = True, do_bg: bool = False,
                 smooth: float = 1., ddp: bool = False):
        super().__init__()
        self.apply_nonlin, self.batch_dice, self.do_bg, self.smooth = apply_nonlin, batch_dice, do_bg, smooth
        self.ddp = ddp

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = self.apply_nonlin(logits) if self.apply_nonlin is not None else logits
        y = _one_hot(target, p)
        if not self.do_bg:
            p, y = p[:, 1:], y[:, 1:]
        axes = (0, *range(2, p.ndim)) if self.batch_dice else tuple(range(2, p.ndim))
        intersection = (p * y).sum(axes)
        denominator = (p * p).sum(axes) + (y * y).sum(axes)
        if self.ddp and self.batch_dice:
            intersection, denominator = (AllGatherGrad.apply(t).sum(0) for t in (intersection, denominator))
        return 1 - ((2 * intersection + self.smooth) / (denominator + self.smooth)).mean()


def hard_negative_mask(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The negatives LRDEHL keeps: the ``max(#positives, 1)`` highest-scoring voxels that are not positive (all
    negatives if there are fewer). With no positive, the single most confident false positive is kept, so a class
    absent from the batch still pushes its worst false positive down."""
    flat_scores, flat_positives = scores.reshape(-1), positives.reshape(-1)
    n_keep = min(max(int(flat_positives.sum()), 1), int((~flat_positives).sum()))
    mask = torch.zeros_like(flat_positives)
    if n_keep > 0:
        negative_scores = flat_scores.detach().masked_fill(flat_positives, -float('inf'))
        mask[torch.topk(negative_scores, n_keep).indices] = True
    return mask.reshape(positives.shape)


class LRDEHLoss(nn.Module):
    """Label-related dropout element hinge loss (the course project's LRDEHL), for fine-tuning near convergence.

    Per foreground class over the whole batch: keep every positive voxel and, of the negatives, only the
    highest-scoring ones, as many as there are positives (``hard_negative_mask``); the loss is the mean absolute
    (``power=1``, MAE) or squared (``power=2``, MSE) error of the class probability on the kept voxels, summed and
    divided by the positive count (by 1 when the class has no positive). Mean over classes. Every other voxel is
    dropped, so the easy background, which dominates tumour images, no longer dilutes the gradient.

    Under DDP each rank mines its own share of the batch: choosing the hard negatives over the whole batch would
    mean exchanging every voxel's probability between the ranks.
    """

    def __init__(self, apply_nonlin: Optional[Callable] = None, do_bg: bool = False, power: int = 1):
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"power is 1 (MAE) or 2 (MSE), got {power}")
        self.apply_nonlin, self.do_bg, self.power = apply_nonlin, do_bg, power

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = self.apply_nonlin(logits) if self.apply_nonlin is not None else logits
        y = _one_hot(target, p).bool()
        first_class = 0 if self.do_bg else 1
        losses = []
        for c in range(first_class, p.shape[1]):
            probability, positives = p[:, c], y[:, c]
            kept = positives | hard_negative_mask(probability, positives)
            error = torch.where(positives, 1 - probability, probability)[kept].pow(self.power)
            losses.append(error.sum() / max(int(positives.sum()), 1))
        return torch.stack(losses).mean()


def with_deep_supervision(loss: nn.Module, num_outputs: int, ddp: bool = False) -> DeepSupervisionWrapper:
    """nnU-Net's deep-supervision weighting: 1/2^i per output, the coarsest ignored, normalised to sum 1.

    Under DDP (``ddp``) the coarsest output keeps a negligible weight (1e-6) instead of 0: DDP expects a gradient for
    every parameter in every step and stops with an error when the coarsest seg head gets none."""
    weights = np.array([1 / (2 ** i) for i in range(num_outputs)])
    weights[-1] = 1e-6 if ddp else 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def rank_local(loss: nn.Module) -> nn.Module:
    """``loss`` with the exchange of Dice sums between DDP ranks switched off in every Dice it holds (nnU-Net's and
    ``SquaredDenominatorDiceLoss``, built with ``ddp=True`` under DDP), so that it sees only the tensors it is given:
    what a loss evaluated on one sample at a time needs. The deep-supervision weights are left as they are."""
    for module in loss.modules():
        if 'ddp' in vars(module):
            module.ddp = False
    return loss


def _sample(x: Union[torch.Tensor, Sequence[torch.Tensor]], i: int):
    return [t[i:i + 1] for t in x] if isinstance(x, (list, tuple)) else x[i:i + 1]


def per_sample_losses(loss: nn.Module, output, target) -> torch.Tensor:
    """``loss`` (deep supervision included: outputs and targets may be lists of scales) on each sample of the batch
    alone, as a vector; give it a ``rank_local`` loss under DDP."""
    batch_size = (output[0] if isinstance(output, (list, tuple)) else output).shape[0]
    return torch.stack([loss(_sample(output, i), _sample(target, i)) for i in range(batch_size)])


class DeepSupervisedLoss:
    """Mixin for an nnU-Net trainer: the loss is ``_core_loss()`` (the loss of one output), wrapped once by
    ``with_deep_supervision`` when deep supervision is on. A loss variant overrides ``_core_loss`` only."""

    def _core_loss(self) -> nn.Module:
        raise NotImplementedError

    def _build_loss(self) -> nn.Module:
        loss = self._core_loss()
        if not self.enable_deep_supervision:
            return loss
        return with_deep_supervision(loss, len(self._get_deep_supervision_scales()), ddp=self.is_ddp)

    def output_nonlin(self) -> Callable:
        """Softmax over the classes, or a sigmoid per region for region training, as nnU-Net's losses apply."""
        return torch.sigmoid if self.label_manager.has_regions else softmax_helper_dim1

    def refuse_ignore_label(self) -> None:
        """For a loss without ignore-label masking: say so instead of failing inside the one-hot encoding."""
        if self.label_manager.has_ignore_label:
            raise NotImplementedError(f"{type(self).__name__}: its loss does not support data sets with an ignore "
                                      f"label; use nnUNetTrainer's Dice + CE for them")


def squared_dice_loss(trainer: DeepSupervisedLoss) -> nn.Module:
    """``_core_loss`` of V-Net's Dice: over the batch, on softmax (sigmoid for region training) outputs."""
    trainer.refuse_ignore_label()
    return SquaredDenominatorDiceLoss(apply_nonlin=trainer.output_nonlin(), batch_dice=True,
                                      do_bg=trainer.label_manager.has_regions, ddp=trainer.is_ddp)


def lrdeh_loss(trainer: DeepSupervisedLoss) -> nn.Module:
    """``_core_loss`` of LRDEHL (MAE) on softmax (sigmoid for region training) outputs."""
    trainer.refuse_ignore_label()
    return LRDEHLoss(apply_nonlin=trainer.output_nonlin(), do_bg=trainer.label_manager.has_regions)
