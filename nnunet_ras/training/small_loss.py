"""Small-loss sample selection, the obvious alternative to quality weighting for noisy labels, as nnU-Net trainers.

Networks fit clean labels before they memorise wrong ones, so early in training the samples with the largest loss
are the likeliest to carry a wrong label. Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural
Networks with Extremely Noisy Labels", NeurIPS 2018) trains on the ``1 - R(t)`` fraction of each batch with the
smallest loss, the forget rate ``R(t)`` rising linearly from 0 to the expected noise rate over the first epochs; its
single-network form (the selection without the peer network, Han et al.'s "standard + selection" ablation) needs no
second model, which is what makes it the simple baseline QAM + OCM has to beat.

Here every sample's loss is the trainer's own loss on that sample alone (deep supervision included), as for the QAM
trainers, and only samples whose patch holds a contour compete: a patch without foreground says nothing about its
label and is always kept, as the QAM keeps it at weight 1. Of the ``n`` contour patches of a batch the
``round(R(t) * n)`` with the largest loss are dropped; the batch loss is the mean over the kept ones. Validation
batches (no gradient) get the plain loss, so nnU-Net's validation loss stays comparable between trainers. Under DDP
each rank selects within its share of the batch.
"""
from typing import Callable

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ras.quality.weighting import holds_contour
from nnunet_ras.training.losses import per_sample_losses, rank_local


def small_loss_mask(losses: torch.Tensor, judged: torch.Tensor, forget_rate: float) -> torch.Tensor:
    """Which samples to keep: all unjudged ones, and of the ``n`` judged ones all but the ``round(forget_rate * n)``
    with the largest loss."""
    keep = torch.ones_like(losses, dtype=torch.bool)
    candidates = judged.nonzero().flatten()
    dropped = int(round(forget_rate * candidates.numel()))
    dropped = min(dropped, candidates.numel() - (0 if (~judged).any() else 1))  # never the whole batch
    if dropped:
        largest = losses.detach()[candidates].topk(dropped).indices
        keep[candidates[largest]] = False
    return keep


class SmallLossSelectionLoss(nn.Module):
    """The trainer's loss on the samples ``small_loss_mask`` keeps, while gradients are on; the plain loss
    otherwise. ``forget_rate`` and ``judged`` are the trainer's: the current rate, and which samples hold a
    contour."""

    def __init__(self, loss: nn.Module, forget_rate: Callable[[], float],
                 judged: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.loss, self.forget_rate, self.judged = loss, forget_rate, judged

    def forward(self, output, target) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.loss(output, target)
        losses = per_sample_losses(self.loss, output, target)
        full_resolution = target[0] if isinstance(target, (list, tuple)) else target
        keep = small_loss_mask(losses, self.judged(full_resolution), self.forget_rate())
        return losses[keep].mean()


class SmallLossSelection:
    """Mixin for an nnU-Net trainer: small-loss selection of the training samples (Co-teaching's, one network).

    Class attributes (set them in a variant class, the nnU-Net way):
        forget_rate: the share of contour patches dropped per batch once the ramp is over (Co-teaching sets it to
            the expected noise rate).
        ramp_fraction: the share of the epochs over which the rate rises linearly from 0 (Co-teaching: 10 of 200).
    """
    forget_rate: float = 0.25
    ramp_fraction: float = 0.1

    def current_forget_rate(self) -> float:
        ramp_epochs = max(1.0, self.ramp_fraction * self.num_epochs)
        return self.forget_rate * min(1.0, self.current_epoch / ramp_epochs)

    def _build_loss(self) -> nn.Module:
        return SmallLossSelectionLoss(rank_local(super()._build_loss()), self.current_forget_rate,
                                      lambda target: holds_contour(target, self.label_manager.num_segmentation_heads,
                                                                   self.label_manager.has_regions))


class nnUNetTrainerSmallLoss(SmallLossSelection, nnUNetTrainer):
    """nnU-Net's default network and Dice + CE loss, dropping the quarter of contour patches with the largest loss
    per batch after a ramp over the first 10 % of epochs."""


class nnUNetTrainerSmallLoss_Forget50(nnUNetTrainerSmallLoss):
    """Dropping half of the contour patches per batch: the forget rate for 50 % noisy labels."""
    forget_rate = 0.5
