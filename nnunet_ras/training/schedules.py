"""Short-schedule variants, named the nnU-Net way (``<Trainer>_<N>epochs_<M>iters``), for CPU runs and tests.

nnU-Net's defaults are 1000 epochs of 250 iterations; these finish in seconds to minutes on a CPU. ``SCHEDULES`` is
the one table of them (trainer -> its (epochs, iterations) schedules); ``short_schedules`` turns a table into
ordinary module-level classes of the module that holds the table, so that nnU-Net's trainer lookup finds them by
name. The benchmarks' schedules are a table of their own, in ``bench/trainers/``.
"""
from typing import Dict, List, Sequence, Tuple, Type

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training.baselines import (nnUNetTrainerHybrid25D, nnUNetTrainerResSEUNet, nnUNetTrainerSEUNet,
                                           nnUNetTrainerVNet)
from nnunet_ras.training.quality_weighting import (nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM, nnUNetTrainerRASQAM,
                                                   nnUNetTrainerRASQAM_NoOCM)
from nnunet_ras.training.small_loss import nnUNetTrainerSmallLoss
from nnunet_ras.training.trainers import (nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE, nnUNetTrainerRAS_LRDEHL,
                                          nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoDropout,
                                          nnUNetTrainerRAS_NoSeparable, nnUNetTrainerRAS_SquaredDice)

Schedule = Tuple[int, int]  # epochs, iterations per epoch
SMOKE_TEST: Schedule = (1, 5)  # the schedule every trainer's stock train-and-predict test uses
DEMO: Schedule = (30, 25)  # the demo: about 13 minutes on two CPU cores for the phantom

SCHEDULES: Dict[Type[nnUNetTrainer], List[Schedule]] = {
    nnUNetTrainer: [SMOKE_TEST],
    nnUNetTrainerRAS: [SMOKE_TEST, DEMO],
    **{trainer: [SMOKE_TEST] for trainer in (
        nnUNetTrainerRAS_DiceCE, nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoSeparable,
        nnUNetTrainerRAS_NoDropout, nnUNetTrainerRAS_SquaredDice, nnUNetTrainerRAS_LRDEHL,
        nnUNetTrainerSEUNet, nnUNetTrainerResSEUNet, nnUNetTrainerVNet, nnUNetTrainerHybrid25D,
        nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM, nnUNetTrainerRASQAM, nnUNetTrainerRASQAM_NoOCM,
        nnUNetTrainerSmallLoss)},
}


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


def short_schedules(table: Dict[Type[nnUNetTrainer], Sequence[Schedule]], module: str) -> Dict[str, type]:
    """``<trainer>_<epochs>epochs_<iterations>iters`` for every schedule of every trainer of ``table``, as classes
    of ``module`` (name -> class); the module puts them into its own namespace."""
    classes = {}
    for trainer, schedules in table.items():
        for epochs, iterations in schedules:
            name = f"{trainer.__name__}_{epochs}epoch{'s' if epochs > 1 else ''}_{iterations}iters"
            classes[name] = type(name, (ShortSchedule, trainer), {
                'epochs': epochs, 'iterations': iterations, '__module__': module, '__qualname__': name,
                '__doc__': f'{trainer.__name__} for {epochs} epochs of {iterations} iterations.'})
    return classes


_CLASSES = short_schedules(SCHEDULES, __name__)
globals().update(_CLASSES)


class nnUNetTrainerRAS_2epochs_5iters(ShortSchedule, nnUNetTrainerRAS):
    """Smoke-test schedule that checkpoints every epoch, so that a stopped run can be continued with --c."""
    epochs, iterations = 2, 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1


__all__ = [*_CLASSES, 'nnUNetTrainerRAS_2epochs_5iters']
