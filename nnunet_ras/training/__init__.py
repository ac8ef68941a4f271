from nnunet_ras.training.trainers import nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE
from nnunet_ras.training import schedules
from nnunet_ras.training.schedules import *  # noqa: F401,F403  the short-schedule variants, made by short_schedule

__all__ = ['nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE', *schedules.__all__]
