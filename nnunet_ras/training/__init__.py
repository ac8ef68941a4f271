"""Every trainer of the plugin; ``trainers/nnunet_ras_trainers.py`` re-exports ``__all__`` for nnU-Net's lookup.

``trainers``: RAS U-Net and its ablations; ``baselines``: the other networks; ``quality_weighting``: the QAM
trainers; ``small_loss``: small-loss selection, their noisy-label alternative; ``schedules``: the short-schedule variants of them all, from one table.
"""
from nnunet_ras.training import schedules
from nnunet_ras.training.baselines import (nnUNetTrainerHybrid25D, nnUNetTrainerResSEUNet, nnUNetTrainerSEUNet,
                                           nnUNetTrainerVNet)
from nnunet_ras.training.quality_weighting import (nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM,
                                                   nnUNetTrainerQAM_OCMLambda2,
                                                   nnUNetTrainerQAM_OCMLambda2_ImageGradient,
                                                   nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp,
                                                   nnUNetTrainerQAM_SmallQAM,
                                                   nnUNetTrainerRASQAM, nnUNetTrainerRASQAM_NoOCM)
from nnunet_ras.training.small_loss import nnUNetTrainerSmallLoss, nnUNetTrainerSmallLoss_Forget50
from nnunet_ras.training.schedules import *  # noqa: F401,F403  the short-schedule variants
from nnunet_ras.training.trainers import (nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE, nnUNetTrainerRAS_LRDEHL,
                                          nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoDropout,
                                          nnUNetTrainerRAS_NoSeparable, nnUNetTrainerRAS_SquaredDice)

__all__ = ['nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE',
           'nnUNetTrainerQAM', 'nnUNetTrainerQAM_NoOCM', 'nnUNetTrainerQAM_OCMLambda2',
           'nnUNetTrainerQAM_OCMLambda2_ImageGradient', 'nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp',
           'nnUNetTrainerQAM_SmallQAM',
           'nnUNetTrainerRASQAM', 'nnUNetTrainerRASQAM_NoOCM', 'nnUNetTrainerSmallLoss', 'nnUNetTrainerSmallLoss_Forget50',
           'nnUNetTrainerSEUNet', 'nnUNetTrainerResSEUNet', 'nnUNetTrainerVNet', 'nnUNetTrainerHybrid25D',
           'nnUNetTrainerRAS_NoAttention', 'nnUNetTrainerRAS_NoSeparable', 'nnUNetTrainerRAS_NoDropout',
           'nnUNetTrainerRAS_SquaredDice', 'nnUNetTrainerRAS_LRDEHL',
           *schedules.__all__]
