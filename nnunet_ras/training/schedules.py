"""Short-schedule variants, named the nnU-Net way (``<Trainer>_<N>epochs_<M>iters``), for CPU runs and tests.

nnU-Net's defaults are 1000 epochs of 250 iterations; these finish in seconds to minutes on a CPU. Each variant is
an ordinary module-level class (made by ``short_schedule``) so that nnU-Net's trainer lookup finds it by name.
"""
from typing import List, Type

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training.trainers import nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE

__all__: List[str] = []


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


def short_schedule(trainer: Type[nnUNetTrainer], epochs: int, iterations: int, doc: str = None) -> Type[nnUNetTrainer]:
    """Define ``<trainer>_<epochs>epochs_<iterations>iters`` in this module and export it."""
    name = f"{trainer.__name__}_{epochs}epoch{'s' if epochs > 1 else ''}_{iterations}iters"
    cls = type(name, (ShortSchedule, trainer), {
        'epochs': epochs, 'iterations': iterations, '__module__': __name__, '__qualname__': name,
        '__doc__': doc or f'{trainer.__name__} for {epochs} epochs of {iterations} iterations.'})
    globals()[name] = cls
    __all__.append(name)
    return cls


SMOKE_TEST = (1, 5)  # the schedule every trainer's stock train-and-predict test uses

for _trainer in (nnUNetTrainer, nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE):
    short_schedule(_trainer, *SMOKE_TEST, doc='Smoke-test schedule (tests, installation checks).')
short_schedule(nnUNetTrainerRAS, 30, 25, doc='The demo schedule: about 13 minutes on two CPU cores for the phantom.')


class nnUNetTrainerRAS_2epochs_5iters(ShortSchedule, nnUNetTrainerRAS):
    """Smoke-test schedule that checkpoints every epoch, so that a stopped run can be continued with --c."""
    epochs, iterations = 2, 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1


__all__.append('nnUNetTrainerRAS_2epochs_5iters')
