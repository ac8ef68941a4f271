from nnunet_ras.training.schedules import (nnUNetTrainer_1epoch_5iters, nnUNetTrainerRAS_1epoch_5iters,
                                           nnUNetTrainerRAS_2epochs_5iters, nnUNetTrainerRAS_30epochs_25iters,
                                           nnUNetTrainerRAS_DiceCE_1epoch_5iters)
from nnunet_ras.training.trainers import nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE

__all__ = ['nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE', 'nnUNetTrainerRAS_1epoch_5iters',
           'nnUNetTrainerRAS_2epochs_5iters', 'nnUNetTrainerRAS_DiceCE_1epoch_5iters', 'nnUNetTrainer_1epoch_5iters',
           'nnUNetTrainerRAS_30epochs_25iters']
