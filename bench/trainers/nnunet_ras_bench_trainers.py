"""The schedules of the training benchmarks under ``bench/``, as nnU-Net trainers of this folder, which the bench
scripts (``common.Workspace``) add to ``nnUNet_extTrainer``: every trainer compared in one table trains for the same
number of iterations, sized so that a 2-core CPU finishes a table in about two hours."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training import (nnUNetTrainerHybrid25D, nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM, nnUNetTrainerRAS,
                                 nnUNetTrainerRAS_DiceCE, nnUNetTrainerRAS_LRDEHL, nnUNetTrainerRAS_NoAttention,
                                 nnUNetTrainerRAS_NoDropout, nnUNetTrainerRAS_NoSeparable,
                                 nnUNetTrainerRAS_SquaredDice, nnUNetTrainerResSEUNet, nnUNetTrainerSEUNet,
                                 nnUNetTrainerVNet)
from nnunet_ras.training.schedules import short_schedules

BENCH = (8, 20)  # epochs, iterations per epoch: 160 iterations
FINE_TUNE = (5, 20)  # LRDEHL fine-tuning from the BENCH checkpoint of nnUNetTrainerRAS
NOISY_LABELS = (20, 25)  # bench/noisy_labels.py: 500 iterations, enough for the thin clavicles to appear

BENCH_SCHEDULES = {
    **{trainer: [BENCH] for trainer in (
        nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE, nnUNetTrainerSEUNet, nnUNetTrainerResSEUNet, nnUNetTrainerVNet,
        nnUNetTrainerHybrid25D, nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoSeparable,
        nnUNetTrainerRAS_NoDropout, nnUNetTrainerRAS_SquaredDice)},
    nnUNetTrainerRAS_LRDEHL: [FINE_TUNE],
    **{trainer: [BENCH, NOISY_LABELS] for trainer in (nnUNetTrainer, nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM)},
}

_CLASSES = short_schedules(BENCH_SCHEDULES, __name__)
globals().update(_CLASSES)
__all__ = list(_CLASSES)
