"""Noisy-label training with quality weighting as nnU-Net trainers: Pick-and-Learn (Zhu, Shi and Wu, "Pick-and-Learn:
Automatic Quality Evaluation for Noisy-Labeled Image Segmentation", MICCAI 2019), as Zhu H. applies it to
target-volume delineation ("基于深度学习的靶区自动勾画", deep-learning-based automatic target-volume delineation,
bachelor thesis, Tsinghua University, 2019).

A quality assessment network (QAM) scores each (image, label) pair of a batch; the optional OCM bounds the score to
(-lambda, lambda); a softmax over the batch turns scores into weights that sum to the batch size; each sample's
segmentation loss (the trainer's own loss, evaluated on that sample alone) is weighted by its weight. Patches without
any foreground keep weight 1 (see ``quality_weights``). The QAM learns
jointly with the segmentation network through that weighted loss, with its own Adam optimiser.

Only training changes: validation, the exported network and ``nnUNetv2_predict`` are ordinary nnU-Net. The QAM's
weights travel in the checkpoint under ``quality_assessment`` (so ``--c`` continues it and ``nnunet-ras quality``
can score new contours with it). At the end of training the fold folder gets ``quality_ranking.csv`` / ``.json``.

Under nnU-Net's multi-GPU training (``-num_gpus N``, DDP) each rank trains on its share of the batch: the QAM is
wrapped in DistributedDataParallel like the network, the softmax runs over the scores of the whole batch, gathered
from all ranks (``sample_weights``), and the ranks' quality logs are merged before rank 0 writes the checkpoint and
the ranking.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, distributed, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from nnunet_ras._io import write_atomically
from nnunet_ras.networks.quality import QualityAssessmentNet
from nnunet_ras.quality.ranking import write_training_ranking
from nnunet_ras.quality.weighting import (CHECKPOINT_KEY, holds_contour, label_channels, overfitting_control,
                                         quality_weights)
from nnunet_ras.training.losses import per_sample_losses, rank_local
from nnunet_ras.training.trainers import nnUNetTrainerRAS

QualityLog = Dict[str, List[tuple]]


def gather_across_ranks(values: torch.Tensor) -> Tuple[torch.Tensor, slice]:
    """All DDP ranks' ``values`` (one row per sample) concatenated in rank order, and the rows of this rank.

    Differentiable: in backward every rank gets the gradient of all ranks' losses with respect to its own rows
    (nnU-Net's ``AllGatherGrad``, which its DDP Dice uses). The ranks' shares of a batch may differ by a sample (a
    batch of 5 on 2 GPUs), so each share is padded to the largest for the exchange.
    """
    count = torch.tensor([values.shape[0]], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(distributed.get_world_size())]
    distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padding = values.new_zeros((max(counts) - values.shape[0], *values.shape[1:]))
    gathered = AllGatherGrad.apply(torch.cat((values, padding)))
    start = sum(counts[:distributed.get_rank()])
    return torch.cat([rows[:c] for rows, c in zip(gathered, counts)]), slice(start, start + values.shape[0])


def merge_quality_logs(logs: Sequence[QualityLog]) -> QualityLog:
    """One quality log from several (the DDP ranks'): each case's entries from all of them, by epoch."""
    merged: QualityLog = {}
    for log in logs:
        for case, entries in log.items():
            merged.setdefault(case, []).extend(entries)
    return {case: sorted(entries, key=lambda entry: entry[0]) for case, entries in merged.items()}


class QualityWeighting:
    """Mixin for an nnU-Net trainer: QAM (+ OCM) weighting of the per-sample losses.

    Class attributes (set them in a variant class, the nnU-Net way):
        ocm_lambda: the OCM's bound; ``None`` switches the OCM off (plain QAM).
        qam_features: the QAM's width per stage; its length is the QAM's depth.
        qam_learning_rate: Adam learning rate of the QAM.
        qam_image_gradient: the QAM also sees the image's gradient magnitude (``QualityAssessmentNet``).
        qam_warmup_fraction: the share of ``num_epochs`` trained unweighted (every weight 1, the QAM not learning)
            before the weighting starts; 0 (Pick-and-Learn) weights from the first step.
        qam_average_fraction: the QAM that ranks the training cases at the end and scores new contours
            (``nnunet-ras quality``) is the mean of its weights at the end of each of the last this share of epochs
            (stochastic weight averaging: Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
            Generalization", UAI 2018); 0 takes the last epoch's QAM. Training itself is unchanged: the weights of
            the loss come from the QAM as it learns. Why: the QAM only has to order the samples within each batch,
            so how one snapshot orders all cases moves from epoch to epoch, much more than the weights over many
            batches do.
    """
    ocm_lambda: Optional[float] = 1.0
    qam_features: Sequence[int] = (16, 32, 64, 128)
    qam_learning_rate: float = 1e-3
    qam_image_gradient: bool = False
    qam_warmup_fraction: float = 0.0
    qam_average_fraction: float = 0.2

    def initialize(self):
        super().initialize()
        conv_op = convert_dim_to_conv_op(len(self.configuration_manager.patch_size))
        # the bare module: what the checkpoint, the training-end ranking and scoring use
        self.qam = QualityAssessmentNet(conv_op, self.num_input_channels + self.label_manager.num_segmentation_heads,
                                        self.qam_features,
                                        self.num_input_channels if self.qam_image_gradient else 0).to(self.device)
        self.qam_optimizer = torch.optim.Adam(self.qam.parameters(), lr=self.qam_learning_rate)
        # what training calls: the same module, under DDP in its wrapper
        self.training_qam = self.synchronised(self.qam)
        # the weight average of the last epochs' QAMs (``qam_average_fraction``); identical on every rank
        self.qam_average = AveragedModel(self.qam)
        # case identifier -> [(epoch, score after OCM, weight)] for every time the case was in this rank's batch
        self.quality_log: QualityLog = {}

    def synchronised(self, module: nn.Module) -> nn.Module:
        """Under DDP, ``module`` in a DistributedDataParallel wrapper, which starts every rank from rank 0's weights
        and averages the gradients over the ranks in backward, so that all ranks' copies take the same optimiser
        steps; without DDP the module itself. The wrapper holds the module as ``.module``, so the module's own
        ``state_dict`` (no ``module.`` prefix) stays what a single-device run saves."""
        if not self.is_ddp:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    def _build_loss(self) -> nn.Module:
        """The trainer's own loss, kept to the tensors it is given: it is evaluated on one sample at a time
        (``per_sample_losses``), and under DDP a Dice would otherwise add the other ranks' samples to each."""
        return rank_local(super()._build_loss())

    def quality_scores(self, data: torch.Tensor, full_resolution_target: torch.Tensor) -> torch.Tensor:
        """The QAM's score of each sample, after the OCM."""
        labels = label_channels(full_resolution_target, self.label_manager.num_segmentation_heads,
                               self.label_manager.has_regions)
        return overfitting_control(self.training_qam(data, labels), self.ocm_lambda)

    def holds_contour(self, full_resolution_target: torch.Tensor) -> torch.Tensor:
        """Per sample: does the label hold any foreground (the ignore label does not count)?"""
        return holds_contour(full_resolution_target, self.label_manager.num_segmentation_heads,
                             self.label_manager.has_regions)

    def sample_weights(self, scores: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
        """The weights of this rank's samples: ``quality_weights`` of the whole batch's scores.

        Under DDP nnU-Net gives each rank a share of the batch, one sample each for the default batch of 2 on two
        GPUs, and a softmax over one sample is always 1: the QAM would learn nothing. So the scores are gathered
        from all ranks (with their gradients) and the softmax runs over the whole batch, as on one device and as
        Pick-and-Learn defines it. Every rank computes all weights from the same gathered scores, so either every
        rank's loss depends on the scores (even a share without contour: its weights 1 come out of the softmax's
        scatter) or, in a batch without any contour, none does; the ranks join the gather's backward and the QAM's
        all-reduce alike.
        """
        if not self.is_ddp:
            return quality_weights(scores, judged=judged)
        batch_scores, mine = gather_across_ranks(scores)
        batch_judged, _ = gather_across_ranks(judged.float())
        return quality_weights(batch_scores, judged=batch_judged > 0.5)[mine]

    @property
    def weighting(self) -> bool:
        """Is the warm-up over (see ``qam_warmup_fraction``)? The same answer on every rank: it counts epochs."""
        return self.current_epoch >= round(self.qam_warmup_fraction * self.num_epochs)

    @property
    def averaging(self) -> bool:
        """Does the epoch now ending count towards the QAM's weight average (``qam_average_fraction``)?"""
        window = round(self.qam_average_fraction * self.num_epochs)
        return self.qam_average_fraction > 0 and self.current_epoch >= self.num_epochs - max(window, 1)

    def average_qam(self) -> None:
        """Add the QAM as it is now to the weight average, if this epoch is in the averaging window."""
        if self.averaging:
            self.qam_average.update_parameters(self.qam)

    @property
    def ranking_qam(self) -> QualityAssessmentNet:
        """The QAM that ranks and scores: the weight average once it holds an epoch, else the QAM itself."""
        return self.qam_average.module if int(self.qam_average.n_averaged) > 0 else self.qam

    def on_epoch_end(self):
        self.average_qam()  # before nnU-Net's epoch end, whose checkpoints must hold this epoch's average
        super().on_epoch_end()

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.qam_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            output = self.network(data)
            losses = per_sample_losses(self.loss, output, target)
            full_resolution = target[0] if isinstance(target, list) else target
            # scored after the segmentation loss, so that backward, which runs the latest operations first, does the
            # gather's and the QAM's exchanges between the ranks before the network's, in the same order on every rank
            scores = self.quality_scores(data, full_resolution).float()
            if self.weighting:
                weights = self.sample_weights(scores, self.holds_contour(full_resolution))
                loss = (weights * losses).mean()
            else:  # warm-up: the QAM joins backward (and under DDP its all-reduce) with a zero gradient
                weights = torch.ones_like(losses)
                loss = losses.mean() + 0 * scores.sum()
        optimizers = (self.optimizer, self.qam_optimizer)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            for optimizer in optimizers:
                self.grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            for optimizer in optimizers:
                self.grad_scaler.step(optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            for optimizer in optimizers:
                optimizer.step()
        for key, score, weight in zip(batch['keys'], scores.detach().cpu().tolist(), weights.detach().cpu().tolist()):
            self.quality_log.setdefault(str(key), []).append((self.current_epoch, score, weight))
        return {'loss': loss.detach().cpu().numpy()}

    def gathered_quality_log(self) -> QualityLog:
        """The quality log of all ranks (each logs the cases of its own share of the batches); without DDP this
        rank's. Under DDP every rank must call it, at the same point."""
        if not self.is_ddp:
            return self.quality_log
        logs = [None] * distributed.get_world_size()
        distributed.all_gather_object(logs, self.quality_log)
        return merge_quality_logs(logs)

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.disable_checkpointing:
            return
        log = self.gathered_quality_log()  # nnU-Net saves on every rank at the same points; rank 0 writes
        if self.local_rank != 0:
            return
        checkpoint = torch.load(filename, map_location='cpu', weights_only=False)
        averaged = int(self.qam_average.n_averaged)
        checkpoint[CHECKPOINT_KEY] = {'weights': self.qam.state_dict(), 'optimizer': self.qam_optimizer.state_dict(),
                                      'features_per_stage': list(self.qam_features), 'ocm_lambda': self.ocm_lambda,
                                      'image_gradient_channels': self.qam.image_gradient_channels,
                                      'average_weights': self.qam_average.module.state_dict() if averaged else None,
                                      'averaged_epochs': averaged, 'log': log}
        write_atomically(filename, lambda temporary: torch.save(checkpoint, temporary))

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # nnU-Net gets the argument as given: its load_checkpoint (2.8) reads a file name and fails on a dict
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        quality = checkpoint.get(CHECKPOINT_KEY)
        if quality is not None:
            self.qam.load_state_dict(quality['weights'])
            self.qam_optimizer.load_state_dict(quality['optimizer'])
            if quality.get('averaged_epochs'):  # checkpoints before the averaging hold no average
                self.qam_average.module.load_state_dict(quality['average_weights'])
                self.qam_average.n_averaged.fill_(quality['averaged_epochs'])
            # the saved log holds all ranks' entries: rank 0 carries them on, so that the next merge counts them once
            self.quality_log = quality['log'] if self.local_rank == 0 else {}

    def on_train_end(self):
        super().on_train_end()
        log = self.gathered_quality_log()
        if self.local_rank == 0:
            write_training_ranking(self, log)


class nnUNetTrainerQAM(QualityWeighting, nnUNetTrainer):
    """nnU-Net's default network and Dice + CE loss, with QAM + OCM (lambda 1) quality weighting."""


class nnUNetTrainerQAM_NoOCM(nnUNetTrainerQAM):
    """Plain QAM: unbounded scores (the thesis's 'QAM' column)."""
    ocm_lambda = None


class nnUNetTrainerQAM_OCMLambda2(nnUNetTrainerQAM):
    """A looser OCM: weights may differ by up to e^4 (about 55x) instead of e^2 (about 7.4x)."""
    ocm_lambda = 2.0


class nnUNetTrainerQAM_OCMLambda2_ImageGradient(nnUNetTrainerQAM_OCMLambda2):
    """OCM lambda 2 and a QAM that also sees the image's gradient magnitude, for labels a few pixels off."""
    qam_image_gradient = True


class nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp(nnUNetTrainerQAM_OCMLambda2_ImageGradient):
    """The image-gradient QAM, starting after a fifth of training: in its first epochs the network over-segments
    and a dilated label has the lower loss, so a QAM that learns from the first step learns to prefer dilations."""
    qam_warmup_fraction = 0.2


class nnUNetTrainerQAM_SmallQAM(nnUNetTrainerQAM):
    """A QAM of half the width and three stages, for small data sets or tight memory."""
    qam_features = (8, 16, 32)


class nnUNetTrainerRASQAM(QualityWeighting, nnUNetTrainerRAS):
    """RAS U-Net and its Dice-only loss (per sample), with QAM + OCM (lambda 1) quality weighting."""


class nnUNetTrainerRASQAM_NoOCM(nnUNetTrainerRASQAM):
    """RAS U-Net with the plain QAM."""
    ocm_lambda = None

