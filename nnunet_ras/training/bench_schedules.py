"""The schedules of the training benchmarks under ``bench/``: every trainer compared in one table trains for the
same number of iterations, sized so that a 2-core CPU finishes a table in about two hours."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training import baselines, quality_weighting, trainers
from nnunet_ras.training.schedules import short_schedule

BENCH = (8, 20)  # epochs, iterations per epoch: 160 iterations
FINE_TUNE = (5, 20)  # LRDEHL fine-tuning from the BENCH checkpoint of nnUNetTrainerRAS
NOISY_LABELS = (20, 25)  # bench/noisy_labels.py: 500 iterations, enough for the thin clavicles to appear

for _trainer in (nnUNetTrainer, trainers.nnUNetTrainerRAS, trainers.nnUNetTrainerRAS_DiceCE,
                 quality_weighting.nnUNetTrainerQAM, quality_weighting.nnUNetTrainerQAM_NoOCM,
                 baselines.nnUNetTrainerSEUNet, baselines.nnUNetTrainerResSEUNet, baselines.nnUNetTrainerVNet,
                 baselines.nnUNetTrainerHybrid25D, baselines.nnUNetTrainerRAS_NoAttention,
                 baselines.nnUNetTrainerRAS_NoSeparable, baselines.nnUNetTrainerRAS_NoDropout,
                 baselines.nnUNetTrainerRAS_SquaredDice):
    short_schedule(_trainer, *BENCH, doc='Benchmark schedule (bench/).')
short_schedule(baselines.nnUNetTrainerRAS_LRDEHL, *FINE_TUNE, doc='Benchmark fine-tuning schedule (bench/).')
for _trainer in (nnUNetTrainer, quality_weighting.nnUNetTrainerQAM, quality_weighting.nnUNetTrainerQAM_NoOCM):
    short_schedule(_trainer, *NOISY_LABELS, doc='Noisy-label benchmark schedule (bench/noisy_labels.py).')
