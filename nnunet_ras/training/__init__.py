"""Every trainer of the plugin; ``trainers/nnunet_ras_trainers.py`` re-exports ``__all__`` for nnU-Net's lookup.

Modules that define short-schedule variants (``schedules.short_schedule``) are imported before the star import of
``schedules``, so that their variants are exported too.
"""
from nnunet_ras.training.trainers import nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE
from nnunet_ras.training.quality_weighting import (nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM,
                                                   nnUNetTrainerQAM_OCMLambda2, nnUNetTrainerQAM_SmallQAM,
                                                   nnUNetTrainerRASQAM, nnUNetTrainerRASQAM_NoOCM)
from nnunet_ras.training.baselines import (nnUNetTrainerHybrid25D, nnUNetTrainerRAS_LRDEHL,
                                           nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoDropout,
                                           nnUNetTrainerRAS_NoSeparable, nnUNetTrainerRAS_SquaredDice,
                                           nnUNetTrainerResSEUNet, nnUNetTrainerSEUNet, nnUNetTrainerVNet)
from nnunet_ras.training import bench_schedules, schedules  # noqa: F401  bench_schedules defines variants
from nnunet_ras.training.schedules import *  # noqa: F401,F403  the short-schedule variants, made by short_schedule

__all__ = ['nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE',
           'nnUNetTrainerQAM', 'nnUNetTrainerQAM_NoOCM', 'nnUNetTrainerQAM_OCMLambda2', 'nnUNetTrainerQAM_SmallQAM',
           'nnUNetTrainerRASQAM', 'nnUNetTrainerRASQAM_NoOCM',
           'nnUNetTrainerSEUNet', 'nnUNetTrainerResSEUNet', 'nnUNetTrainerVNet', 'nnUNetTrainerHybrid25D',
           'nnUNetTrainerRAS_NoAttention', 'nnUNetTrainerRAS_NoSeparable', 'nnUNetTrainerRAS_NoDropout',
           'nnUNetTrainerRAS_SquaredDice', 'nnUNetTrainerRAS_LRDEHL',
           *schedules.__all__]
