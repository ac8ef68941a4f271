"""Short-schedule variants, named the nnU-Net way (``<Trainer>_<N>epochs_<M>iters``), for CPU runs and tests.

nnU-Net's defaults are 1000 epochs of 250 iterations; these finish in seconds to minutes on a CPU.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training.trainers import nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE


class ShortSchedule:
    """Mixin: sets epochs and iterations per epoch from the class attributes ``epochs`` and ``iterations``."""
    epochs: int
    iterations: int

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = max(1, self.iterations // 5)


class nnUNetTrainerRAS_1epoch_5iters(ShortSchedule, nnUNetTrainerRAS):
    """Smoke-test schedule (tests, installation checks)."""
    epochs, iterations = 1, 5


class nnUNetTrainerRAS_2epochs_5iters(ShortSchedule, nnUNetTrainerRAS):
    """Smoke-test schedule that checkpoints every epoch, so that a stopped run can be continued with --c."""
    epochs, iterations = 2, 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1


class nnUNetTrainerRAS_DiceCE_1epoch_5iters(ShortSchedule, nnUNetTrainerRAS_DiceCE):
    epochs, iterations = 1, 5


class nnUNetTrainer_1epoch_5iters(ShortSchedule, nnUNetTrainer):
    """nnU-Net's default trainer on the smoke-test schedule, the baseline for ensembling tests."""
    epochs, iterations = 1, 5


class nnUNetTrainerRAS_30epochs_25iters(ShortSchedule, nnUNetTrainerRAS):
    """The demo schedule: about ten minutes on two CPU cores for the phantom data set."""
    epochs, iterations = 30, 25
