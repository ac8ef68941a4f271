"""What the training benchmarks share: an isolated nnU-Net workspace that runs stock commands, the light benchmark
plans, and test-set evaluation.

Light plans (``nnUNetBenchPlans``): nnU-Net's own plans with the features per stage capped like the baseline of
Zhu H.'s thesis (16, 32, 64, 96, 128, then 128), so that a 2-core CPU trains every variant within the time budget. Patch
size, spacing, normalisation and topology stay nnU-Net's.
"""
import glob
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
BENCH_TRAINERS = os.path.join(ROOT, 'bench', 'trainers')  # the benchmark schedules, for nnUNet_extTrainer
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH_TRAINERS)

from nnunet_ras import workspace  # noqa: E402
from nnunet_ras_bench_trainers import STOP_AFTER_VARIABLE  # noqa: E402

BENCH_PLANS = 'nnUNetBenchPlans'
SEED002_FEATURES = (16, 32, 64, 96, 128)


class Workspace(workspace.Workspace):
    """nnU-Net's folders under one folder, this plugin's and the benchmarks' trainers (``BENCH_TRAINERS``), a
    runner of stock commands that logs to ``commands.log`` and returns the wall time."""

    def __init__(self, root: str):
        # one augmentation worker (two cores in all); one export worker for the validation at the end of training
        # (nnU-Net's default spawns 8, each importing torch: that alone took 45 s of a 2-minute JSRT run)
        super().__init__(root, trainer_folders=[BENCH_TRAINERS], nnUNet_n_proc_DA='1', nnUNet_def_n_proc='1')
        os.environ.update({k: self.env[k] for k in (*workspace.NNUNET_FOLDERS, 'nnUNet_extTrainer')})
        self.log = open(os.path.join(self.root, 'commands.log'), 'a')

    def run(self, cmd: List[str]) -> float:
        """Run a command, log it with its output, fail loudly; returns its wall time in seconds."""
        return super().run(cmd, log=self.log).seconds

    def dataset_folder(self, dataset_id: int) -> str:
        return glob.glob(self.path('nnUNet_raw', f'Dataset{dataset_id:03d}_*'))[0]

    def dataset_ids(self) -> Dict[str, int]:
        """The raw data sets, name -> id."""
        folders = glob.glob(self.path('nnUNet_raw', 'Dataset[0-9][0-9][0-9]_*'))
        return {os.path.basename(f)[11:]: int(os.path.basename(f)[7:10]) for f in folders}


HIPPOCAMPUS = 'Dataset004_Hippocampus'
JSRT_STRUCTURES = {'lungs': 801, 'heart': 802, 'clavicles': 803}  # the ids ``nnunet-ras jsrt-to-dataset -d 801`` gives


def link_hippocampus(ws: 'Workspace') -> None:
    """../shared/data's Hippocampus as the workspace's Dataset004 (a link, nothing copied)."""
    link = ws.path('nnUNet_raw', HIPPOCAMPUS)
    if not os.path.exists(link):
        os.symlink(os.path.join(SHARED_DATA, HIPPOCAMPUS), link)


def make_jsrt_datasets(ws: 'Workspace', size: int) -> None:
    """JSRT's lungs, heart and clavicles as three binary 2D data sets at ``size`` px (``JSRT_STRUCTURES``), once per
    workspace."""
    if not os.path.isdir(ws.path('nnUNet_raw', 'Dataset801_JSRTLungs')):
        ws.run(['nnunet-ras', 'jsrt-to-dataset', '-i', os.path.join(SHARED_DATA, 'jsrt_scr_256'), '-d', '801',
                '-size', str(size)])


def make_bench_plans(ws: Workspace, dataset_id: int, configuration: str,
                     features: Sequence[int] = SEED002_FEATURES, batch_size: Optional[int] = None) -> str:
    """Fingerprint and plan with nnU-Net's planner, cap the features, preprocess: returns the plans name."""
    ws.run(['nnUNetv2_extract_fingerprint', '-d', str(dataset_id), '-np', '2'])
    ws.run(['nnUNetv2_plan_experiment', '-d', str(dataset_id)])
    folder = glob.glob(ws.path('nnUNet_preprocessed', f'Dataset{dataset_id:03d}_*'))[0]
    with open(os.path.join(folder, 'nnUNetPlans.json')) as f:
        plans = json.load(f)
    plans['plans_name'] = BENCH_PLANS
    config = plans['configurations'][configuration]
    arch = config['architecture']['arch_kwargs']
    arch['features_per_stage'] = [features[min(i, len(features) - 1)] for i in range(arch['n_stages'])]
    if batch_size is not None:
        config['batch_size'] = batch_size
    config['data_identifier'] = f'{BENCH_PLANS}_{configuration}'
    plans['configurations'] = {configuration: config}
    with open(os.path.join(folder, f'{BENCH_PLANS}.json'), 'w') as f:
        json.dump(plans, f, indent=2)
    ws.run(['nnUNetv2_preprocess', '-d', str(dataset_id), '-plans_name', BENCH_PLANS, '-c', configuration,
            '-np', '2'])
    return BENCH_PLANS


def ensure_bench_plans(ws: Workspace, dataset_id: int, configuration: str, batch_size: Optional[int] = None) -> str:
    """``make_bench_plans`` unless the data set is preprocessed with them already."""
    name = os.path.basename(ws.dataset_folder(dataset_id))
    if not os.path.isdir(ws.path('nnUNet_preprocessed', name, f'{BENCH_PLANS}_{configuration}')):
        make_bench_plans(ws, dataset_id, configuration, batch_size=batch_size)
    return BENCH_PLANS


def copy_bench_plans(ws: Workspace, source_id: int, target_id: int, configuration: str) -> str:
    """The source data set's light plans for a copy of it (e.g. with corrupted labels), then preprocessing: the
    same plans for both, and no second fingerprint."""
    target = ws.path('nnUNet_preprocessed', os.path.basename(ws.dataset_folder(target_id)))
    os.makedirs(target, exist_ok=True)  # what nnU-Net's planning step would have made: the folder, dataset.json
    shutil.copy(os.path.join(ws.dataset_folder(target_id), 'dataset.json'), target)
    # the source's fingerprint (same images), which the trainer reads; the plans come from the source anyway
    source = ws.path('nnUNet_preprocessed', os.path.basename(ws.dataset_folder(source_id)))
    shutil.copy(os.path.join(source, 'dataset_fingerprint.json'), target)
    ws.run(['nnUNetv2_move_plans_between_datasets', '-s', str(source_id), '-t', str(target_id), '-sp', BENCH_PLANS])
    ws.run(['nnUNetv2_preprocess', '-d', str(target_id), '-plans_name', BENCH_PLANS, '-c', configuration,
            '-np', '2'])
    return BENCH_PLANS


def model_folder(ws: Workspace, dataset_id: int, trainer: str, plans: str, configuration: str,
                 fold: Optional[str] = None) -> str:
    """nnU-Net's results folder of a trainer, plans and configuration; with ``fold``, its ``fold_<fold>``."""
    name = os.path.basename(glob.glob(ws.path('nnUNet_preprocessed', f'Dataset{dataset_id:03d}_*'))[0])
    folder = ws.path('nnUNet_results', name, f'{trainer}__{plans}__{configuration}')
    return folder if fold is None else os.path.join(folder, f'fold_{fold}')


class OutOfBudget(Exception):
    """A training run stopped at the invocation's deadline; the same command continues it."""


def train_within(ws: Workspace, dataset_id: int, configuration: str, fold: str, trainer: str, plans: str,
                 deadline: Optional[float] = None, *extra: str) -> float:
    """Stock ``nnUNetv2_train`` of one run to its end (``extra``: e.g. ``--c`` to continue a stopped one). With a
    ``deadline`` (``time.time()`` units) the run stops by itself at the first epoch end after it (the bench trainers'
    ``STOP_AFTER_VARIABLE``) and ``OutOfBudget`` is raised, as it is when less than a minute is left. Returns the
    command's wall time, 0 for a run that had finished already."""
    final = os.path.join(model_folder(ws, dataset_id, trainer, plans, configuration, fold), 'checkpoint_final.pth')
    if os.path.isfile(final):
        return 0.
    if deadline is not None:
        left = deadline - time.time()
        if left < 60:
            raise OutOfBudget
        ws.env[STOP_AFTER_VARIABLE] = str(left)
    seconds = ws.run(['nnUNetv2_train', str(dataset_id), configuration, fold, '-tr', trainer, '-p', plans, '-device',
                      'cpu', *extra])
    finished = os.path.isfile(final)
    print(f"{trainer} fold {fold}: {seconds:.0f} s{'' if finished else ', stopped at the budget'}", flush=True)
    if not finished:
        raise OutOfBudget
    return seconds


def train_and_test(ws: Workspace, dataset_id: int, configuration: str, trainer: str, plans: str, fold: str,
                   test_images: str, test_labels: str, file_ending: str, deadline: Optional[float] = None) -> Dict:
    """Stock nnUNetv2_train (continuing a stopped run; ``deadline`` as in ``train_within``), stock nnUNetv2_predict
    on the test images (no test-time mirroring, to save CPU time), and ``nnunet-ras evaluate``'s metrics against the
    test labels (labels named by the data set's dataset.json). ``train_s`` is the last training command's wall
    time, ``epochs_s`` the sum of the run's epoch times from nnU-Net's log (the whole run, over all its chunks)."""
    from nnunet_ras.evaluation.compare import checkpoint_facts
    from nnunet_ras.evaluation.evaluate import evaluate_folder, targets_from_dataset_json
    train_s = train_within(ws, dataset_id, configuration, fold, trainer, plans, deadline, '--c')
    folder = model_folder(ws, dataset_id, trainer, plans, configuration)
    out = os.path.join(folder, f'test_fold_{fold}')
    predict_s = ws.run(['nnUNetv2_predict', '-i', test_images, '-o', out, '-d', str(dataset_id), '-c',
                        configuration, '-tr', trainer, '-p', plans, '-f', fold, '-device', 'cpu', '--disable_tta',
                        '-npp', '1', '-nps', '1'])
    with open(os.path.join(ws.dataset_folder(dataset_id), 'dataset.json')) as f:
        targets, ignore_label = targets_from_dataset_json(json.load(f))
    evaluation = evaluate_folder(test_labels, out, file_ending, targets, ignore_label)
    durations = checkpoint_facts(os.path.join(folder, f'fold_{fold}', 'checkpoint_final.pth'))['durations']
    return {'train_s': train_s, 'epochs_s': sum(durations), 'predict_s': predict_s,
            'dice': {name: m['DSC']['mean'] for name, m in evaluation['summary'].items()},
            'summary': evaluation['summary']}
