"""The schedules of the training benchmarks under ``bench/``, as nnU-Net trainers of this folder, which the bench
scripts (``common.Workspace``) add to ``nnUNet_extTrainer``.

Every trainer compared in one table trains for the same number of iterations. The fixed schedules below size a table
for about two hours of a 2-core CPU; longer ones are a flag of the bench scripts (``--schedule 100x50``), passed to
nnU-Net's training processes in ``SCHEDULES_VARIABLE``, so that a schedule needs no edit of this file.

Every benchmark trainer is ``Resumable``: long CPU trainings span several sessions and alternate between trainers
(``bench/learning_curves.py``), so a run checkpoints after every epoch, can keep a copy every N epochs for a learning
curve, and can stop by itself at an epoch's end after a wall-time budget, to be continued with nnU-Net's ``--c``.
"""
import json
import os
import random
import resource
import shutil
import sys
import time
from typing import Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.training import (nnUNetTrainerHybrid25D, nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM,
                                 nnUNetTrainerQAM_OCMLambda2, nnUNetTrainerQAM_OCMLambda2_ImageGradient,
                                 nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp,
                                 nnUNetTrainerRAS,
                                 nnUNetTrainerRAS_DiceCE, nnUNetTrainerRAS_LRDEHL, nnUNetTrainerRAS_NoAttention,
                                 nnUNetTrainerRAS_NoDropout, nnUNetTrainerRAS_NoSeparable,
                                 nnUNetTrainerRAS_SquaredDice, nnUNetTrainerResSEUNet, nnUNetTrainerSEUNet,
                                 nnUNetTrainerSmallLoss, nnUNetTrainerSmallLoss_Forget50, nnUNetTrainerVNet)
from nnunet_ras.training.schedules import short_schedules
from nnunet_ras._io import write_json_atomically

BENCH = (8, 20)  # epochs, iterations per epoch: 160 iterations
FINE_TUNE = (5, 20)  # LRDEHL fine-tuning from the BENCH checkpoint of nnUNetTrainerRAS
NOISY_LABELS = (20, 25)  # bench/noisy_labels.py: 500 iterations, enough for the thin clavicles to appear

SCHEDULES_VARIABLE = 'nnUNet_ras_bench_schedules'  # further schedules for every trainer, e.g. '100x50 40x50'
STOP_AFTER_VARIABLE = 'nnUNet_ras_bench_stop_after_s'  # stop at the first epoch end after this many seconds
KEEP_EVERY_VARIABLE = 'nnUNet_ras_bench_keep_every'  # keep checkpoint_epoch_<N>.pth every N epochs
SEEDS_VARIABLE = 'nnUNet_ras_bench_seeds'  # repeat runs: '1' adds <trainer>_<schedule>_seed1 for every trainer
FACTS_FILE = 'bench_facts.json'  # in the fold folder: iterations per epoch, peak memory over all chunks


def parse_schedule(text: str) -> Tuple[int, int]:
    """'100x50' -> (100, 50): epochs, iterations per epoch."""
    try:
        epochs, iterations = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f"a schedule is EPOCHSxITERATIONS, e.g. 100x50, not {text!r}") from None
    if epochs < 1 or iterations < 1:
        raise ValueError(f"a schedule needs at least 1 epoch of 1 iteration, not {text!r}")
    return epochs, iterations


def schedule_name(schedule: Tuple[int, int]) -> str:
    """(100, 50) -> '100epochs_50iters', the suffix of the trainer names."""
    return f"{schedule[0]}epoch{'s' if schedule[0] > 1 else ''}_{schedule[1]}iters"


class Resumable:
    """Checkpoints after every epoch (written under a temporary name, then renamed, so that a run stopped while
    saving can still be continued), keeps ``checkpoint_epoch_<N>.pth`` every ``KEEP_EVERY_VARIABLE`` epochs, and ends
    the process cleanly at the first epoch end after ``STOP_AFTER_VARIABLE`` seconds (exit code 0, no final
    checkpoint, no validation: ``nnUNetv2_train ... --c`` continues).

    After every epoch ``FACTS_FILE`` in the fold folder gets the iterations per epoch and the peak memory of the
    training so far, over all its processes: on a GPU torch's peak allocation, on the CPU the training process's peak
    resident set (the augmentation worker not counted).

    ``seed``: a repeat run's seed for Python, NumPy and torch (initial weights, sampling); ``None`` leaves nnU-Net's
    unseeded default. The augmentation worker draws its own random numbers either way, so a seeded run is another
    run, not a replayable one."""
    seed: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # nnU-Net records these arguments by name
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1
        self._process_start = time.time()
        self._keep_every = int(os.environ.get(KEEP_EVERY_VARIABLE, '0'))
        self._stop_after = float(os.environ.get(STOP_AFTER_VARIABLE, '0'))
        self._facts = None  # FACTS_FILE's content, read once (earlier processes of the run wrote it)
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename + '.partial')
        if os.path.isfile(filename + '.partial'):
            os.replace(filename + '.partial', filename)

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        done = self.current_epoch  # epochs finished; checkpoint_latest.pth holds them unless the schedule is over
        self._record_facts()
        if done >= self.num_epochs:
            return
        if self._keep_every and done % self._keep_every == 0:
            shutil.copy(os.path.join(self.output_folder, 'checkpoint_latest.pth'),
                        os.path.join(self.output_folder, f'checkpoint_epoch_{done}.pth'))
        if self._stop_after and time.time() - self._process_start > self._stop_after:
            self.print_to_log_file(f'Stopping after epoch {done} of {self.num_epochs} ({STOP_AFTER_VARIABLE}='
                                   f'{self._stop_after:.0f}); continue with --c')
            for loader in (self.dataloader_train, self.dataloader_val):
                if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                    loader._finish()
            sys.exit(0)

    def _record_facts(self) -> None:
        if self.local_rank != 0:
            return
        path = os.path.join(self.output_folder, FACTS_FILE)
        if self._facts is None:
            self._facts = json.load(open(path)) if os.path.isfile(path) else {}
        if self.device.type == 'cuda':
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 'torch.cuda.max_memory_allocated'
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'peak RSS of the training process'
        self._facts.update({'iterations_per_epoch': self.num_iterations_per_epoch, 'batch_size': self.batch_size,
                            'peak_memory_mb': max(peak, self._facts.get('peak_memory_mb', 0)),
                            'peak_memory_kind': kind, 'device': self.device.type})
        write_json_atomically(path, self._facts)


COMPARED = (nnUNetTrainer, nnUNetTrainerRAS, nnUNetTrainerRAS_DiceCE, nnUNetTrainerSEUNet, nnUNetTrainerResSEUNet,
            nnUNetTrainerVNet, nnUNetTrainerHybrid25D, nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoSeparable,
            nnUNetTrainerRAS_NoDropout, nnUNetTrainerRAS_SquaredDice, nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM,
            nnUNetTrainerSmallLoss, nnUNetTrainerSmallLoss_Forget50)
BENCH_SCHEDULES = {
    **{trainer: [BENCH] for trainer in COMPARED},
    nnUNetTrainerRAS_LRDEHL: [FINE_TUNE],
    **{trainer: [BENCH, NOISY_LABELS] for trainer in (nnUNetTrainer, nnUNetTrainerQAM, nnUNetTrainerQAM_NoOCM,
                                                      nnUNetTrainerSmallLoss, nnUNetTrainerSmallLoss_Forget50)},
    # bench/noisy_labels.py only: the OCM's bound, the QAM's input as the variables
    **{trainer: [NOISY_LABELS] for trainer in (nnUNetTrainerQAM_OCMLambda2, nnUNetTrainerQAM_OCMLambda2_ImageGradient,
                                               nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp)},
}
_EXTRA_SCHEDULES = {parse_schedule(s) for s in os.environ.get(SCHEDULES_VARIABLE, '').split()}
for _trainer in BENCH_SCHEDULES:
    BENCH_SCHEDULES[_trainer] = sorted(set(BENCH_SCHEDULES[_trainer]) | _EXTRA_SCHEDULES)

_CLASSES = {name: type(name, (Resumable, cls), {'__module__': __name__, '__qualname__': name, '__doc__': cls.__doc__})
            for name, cls in short_schedules(BENCH_SCHEDULES, __name__).items()}
_CLASSES.update({f'{name}_seed{seed}': type(f'{name}_seed{seed}', (cls,), {
    'seed': seed, '__module__': __name__, '__qualname__': f'{name}_seed{seed}',
    '__doc__': f'{cls.__doc__} Repeat run, seed {seed}.'})
    for seed in (int(s) for s in os.environ.get(SEEDS_VARIABLE, '').split()) for name, cls in list(_CLASSES.items())})
globals().update(_CLASSES)
__all__ = list(_CLASSES)
