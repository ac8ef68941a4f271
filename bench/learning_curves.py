"""Learning curves: validation Dice against iterations and training wall time, to choose a schedule at which the
compared trainers have flattened. Hippocampus (nnU-Net's default trainer and RAS U-Net, for compare_trainers.py) or
one JSRT structure (the clean baseline, for noisy_labels.py).

    python bench/learning_curves.py [--task hippocampus | jsrt-clavicles | jsrt-lungs | jsrt-heart] [--size 128]
                                    [--trainers nnUNetTrainer nnUNetTrainerRAS] [--schedule 100x50] [--fold 0]
                                    [--keep_every 10] [--chunk_minutes 20] [--budget_minutes 90] [--workdir ...]

Stock commands and light plans (bench/common.py) in the workspace of the bench script the curve serves
(Hippocampus: ``compare_trainers.py``'s, 3d_fullres, batch 4; JSRT: ``noisy_labels.py``'s at ``--size``, 2d), so
that a finished curve is also that script's run at the same schedule. Each trainer runs ``nnUNetv2_train ... --c``
in chunks of ``--chunk_minutes``, always the one with the fewest epochs next, so the curves advance together and
each chunk ends by itself at an epoch's end (``Resumable`` in bench/trainers). Every ``--keep_every`` epochs the
checkpoint is kept; each kept one gets a real validation: ``nnUNetv2_predict -chk`` (no test-time mirroring) and
``nnunet-ras evaluate``'s Dice, on the fold's validation cases (Hippocampus) or the 100 clean test images (JSRT).
nnU-Net's pseudo Dice (and its EMA) per epoch and the epochs' wall time come from the checkpoint's log. The
invocation stops launching chunks after ``--budget_minutes``; a re-run continues where the last one stopped and
skips what is done. Writes ``learning_curves_<task>_fold_<F>.json`` (every schedule's curves) and
``.md`` in the workspace and the plot ``docs/learning_curves_<task>.png``; a run at another than the default
schedule suffixes the last two with it (``_3epochs_3iters``), so a short trial cannot overwrite the real curve.
"""
import argparse
import glob
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from common import (HIPPOCAMPUS, JSRT_STRUCTURES, ROOT, SHARED_DATA, Workspace, ensure_bench_plans, link_hippocampus,
                    make_jsrt_datasets, model_folder)

from noisy_labels import default_workdir

from nnunet_ras._io import write_json_atomically
from nnunet_ras_bench_trainers import (KEEP_EVERY_VARIABLE, SCHEDULES_VARIABLE, STOP_AFTER_VARIABLE, parse_schedule,
                                       schedule_name)

DEFAULT_SCHEDULE = '100x50'
PLANS = 'nnUNetBenchPlans'
TASKS = ['hippocampus', *(f'jsrt-{s}' for s in JSRT_STRUCTURES)]


@dataclass
class Task:
    """What a curve trains on and is validated against."""
    name: str
    dataset_id: int
    configuration: str
    labels: Dict[str, int]
    file_ending: str
    title: str
    images: str = ''  # validation images and their reference labels, set by ``prepare``
    references: str = ''
    cases: Optional[List[str]] = None  # None: every reference case

    def fold_folder(self, ws: Workspace, trainer: str, fold: str) -> str:
        return model_folder(ws, self.dataset_id, trainer, PLANS, self.configuration, fold)


def prepare(ws: Workspace, name: str, size: int, fold: str) -> Task:
    """The data set, its light plans and the validation images of a task."""
    if name == 'hippocampus':
        link_hippocampus(ws)
        ensure_bench_plans(ws, 4, '3d_fullres', batch_size=4)
        task = Task(name, 4, '3d_fullres', {'anterior': 1, 'posterior': 2}, '.nii.gz',
                    f'Hippocampus fold {fold} (validation cases), light plans 3d_fullres, batch 4')
        task.images, task.cases = validation_images(ws, fold)
        task.references = os.path.join(SHARED_DATA, HIPPOCAMPUS, 'labelsTr')
        return task
    structure = name.split('-', 1)[1]
    make_jsrt_datasets(ws, size)
    dataset_id = JSRT_STRUCTURES[structure]
    ensure_bench_plans(ws, dataset_id, '2d')
    task = Task(name, dataset_id, '2d', {structure: 1}, '.png',
                f'JSRT {structure} at {size} px, fold {fold} training, 100 clean test images, light plans 2d')
    task.images = os.path.join(ws.dataset_folder(dataset_id), 'imagesTs')
    task.references = os.path.join(ws.dataset_folder(dataset_id), 'labelsTs')
    return task


def _load(path: str) -> dict:
    import torch
    return torch.load(path, map_location='cpu', weights_only=False)


def progress(ws: Workspace, task: Task, trainer: str, fold: str):
    """(epochs done, the newest checkpoint (loaded) or None, finished)."""
    folder = task.fold_folder(ws, trainer, fold)
    for name, finished in (('checkpoint_final.pth', True), ('checkpoint_latest.pth', False)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            checkpoint = _load(path)
            return checkpoint['current_epoch'], checkpoint, finished
    return 0, None, False


def epoch_log(checkpoint: dict, iterations: int) -> list:
    """Per epoch from nnU-Net's log in a checkpoint: iterations so far, cumulative epoch wall time (training and the
    per-epoch validation batches; the gaps between chunks are not counted), pseudo Dice per class and its EMA."""
    log = checkpoint['logging']
    rows, wall = [], 0.0
    for epoch, (start, end) in enumerate(zip(log['epoch_start_timestamps'], log['epoch_end_timestamps'])):
        wall += end - start
        rows.append({'epoch': epoch + 1, 'iterations': (epoch + 1) * iterations, 'train_s': wall,
                     'pseudo_dice': [float(d) for d in log['dice_per_class_or_region'][epoch]],
                     'ema_fg_dice': float(log['ema_fg_dice'][epoch])})
    return rows


def validation_images(ws: Workspace, fold: str) -> tuple:
    """A folder of links to the fold's validation images of Hippocampus (nnU-Net's splits_final.json, written by
    the first training; here, if none has run yet, with nnU-Net's own split function), and their case names."""
    splits_path = ws.path('nnUNet_preprocessed', HIPPOCAMPUS, 'splits_final.json')
    if os.path.isfile(splits_path):
        with open(splits_path) as f:
            cases = sorted(json.load(f)[int(fold)]['val'])
    else:
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        keys = sorted(f[:-7] for f in os.listdir(os.path.join(SHARED_DATA, HIPPOCAMPUS, 'labelsTr'))
                      if f.endswith('.nii.gz'))
        cases = sorted(generate_crossval_split(keys, seed=12345, n_splits=5)[int(fold)]['val'])
    folder = os.path.join(ws.root, f'validation_images_fold_{fold}')
    os.makedirs(folder, exist_ok=True)
    for case in cases:
        link = os.path.join(folder, f'{case}_0000.nii.gz')
        if not os.path.exists(link):
            os.symlink(os.path.join(SHARED_DATA, HIPPOCAMPUS, 'imagesTr', f'{case}_0000.nii.gz'), link)
    return folder, cases


def real_validation(ws: Workspace, task: Task, trainer: str, fold: str, checkpoint: str) -> dict:
    """Dice per label of the task's validation images predicted with one checkpoint of the fold's folder."""
    from nnunet_ras.evaluation.evaluate import evaluate_folder
    out = os.path.join(task.fold_folder(ws, trainer, fold), 'learning_curve', os.path.splitext(checkpoint)[0])
    ws.run(['nnUNetv2_predict', '-i', task.images, '-o', out, '-d', str(task.dataset_id), '-c', task.configuration,
            '-tr', trainer, '-p', PLANS, '-f', fold, '-chk', checkpoint, '-device', 'cpu', '--disable_tta',
            '-npp', '1', '-nps', '1'])
    evaluation = evaluate_folder(task.references, out, task.file_ending, task.labels, cases=task.cases)
    return {name: m['DSC']['mean'] for name, m in evaluation['summary'].items()}


def kept_checkpoints(ws: Workspace, task: Task, trainer: str, fold: str, final_epoch: Optional[int]) -> dict:
    """epoch -> checkpoint file name, for the kept copies and, once the run is finished (``final_epoch``), the final
    checkpoint."""
    folder = task.fold_folder(ws, trainer, fold)
    kept = {int(re.search(r'_(\d+)\.pth$', p).group(1)): os.path.basename(p)
            for p in glob.glob(os.path.join(folder, 'checkpoint_epoch_*.pth'))}
    if final_epoch is not None:
        kept[final_epoch] = 'checkpoint_final.pth'
    return kept


def flattening(points: list) -> list:
    """For every real-validation point N whose 80 % point exists: mean Dice(N) - mean Dice(0.8 N)."""
    by_iterations = {p['iterations']: p['mean_dice'] for p in points}
    return [{'iterations': n, 'gain_last_20_percent': by_iterations[n] - by_iterations[int(n * 0.8)]}
            for n in sorted(by_iterations) if int(n * 0.8) in by_iterations and n * 0.8 == int(n * 0.8)]


def plot(curves: dict, task: Task, schedule: tuple, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (trainer, curve), color in zip(curves.items(), ('tab:blue', 'tab:orange', 'tab:green', 'tab:red')):
        epochs, points = curve['epochs'], curve['validation']
        for ax, x in zip(axes, ('iterations', 'train_s')):
            scale = 1 if x == 'iterations' else 1 / 3600
            ax.plot([e[x] * scale for e in epochs], [e['ema_fg_dice'] for e in epochs], color=color, alpha=0.45,
                    lw=1, label=f'{trainer}: pseudo Dice (EMA)')
            ax.plot([p[x] * scale for p in points], [p['mean_dice'] for p in points], 'o-', color=color,
                    label=f'{trainer}: validation Dice')
    axes[0].set_xlabel('iterations')
    axes[1].set_xlabel('training wall time, h (2-core CPU)')
    for ax in axes:
        ax.set_ylabel(f"mean Dice, {' + '.join(task.labels)}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc='lower right')
    fig.suptitle(f'{task.title}; {schedule[0]} epochs x {schedule[1]} iterations, poly learning rate over all of '
                 f'them', fontsize=10)
    fig.tight_layout()
    tmp = path + '.partial.png'
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def table(curves: dict, task: Task) -> str:
    lines = [f"| trainer | iterations | training h | pseudo Dice (EMA) | validation Dice {' / '.join(task.labels)} | "
             "mean | gain over the last 20 % |", '|---|---|---|---|---|---|---|']
    for trainer, curve in curves.items():
        gains = {g['iterations']: g['gain_last_20_percent'] for g in flattening(curve['validation'])}
        for p in curve['validation']:
            gain = gains.get(p['iterations'])
            lines.append(f"| {trainer} | {p['iterations']} | {p['train_s'] / 3600:.2f} | {p['ema_fg_dice']:.3f} | "
                         f"{' / '.join(f'{v:.3f}' for v in p['dice'].values())} | {p['mean_dice']:.3f} | "
                         f"{'-' if gain is None else f'{gain:+.3f}'} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='hippocampus', choices=TASKS)
    parser.add_argument('--size', type=int, default=128, help='JSRT image size (px)')
    parser.add_argument('--trainers', nargs='+', default=None,
                        help='default: nnUNetTrainer nnUNetTrainerRAS (Hippocampus), nnUNetTrainer (JSRT)')
    parser.add_argument('--schedule', default=DEFAULT_SCHEDULE, help='EPOCHSxITERATIONS of the whole run (poly learning rate '
                        'over all of it)')
    parser.add_argument('--fold', default='0')
    parser.add_argument('--keep_every', type=int, default=10, help='epochs between kept, validated checkpoints')
    parser.add_argument('--chunk_minutes', type=float, default=20)
    parser.add_argument('--budget_minutes', type=float, default=90, help='launch no chunk after this')
    parser.add_argument('--workdir', default=None, help='default: the workspace of compare_trainers.py '
                        '(Hippocampus) or of noisy_labels.py at --size (JSRT)')
    args = parser.parse_args()
    schedule = parse_schedule(args.schedule)
    deadline = time.time() + args.budget_minutes * 60
    jsrt = args.task.startswith('jsrt')
    if args.workdir is None:
        args.workdir = default_workdir(args.size) if jsrt else os.path.join(ROOT, 'bench', 'results',
                                                                            'compare_trainers')
    trainers = args.trainers or (['nnUNetTrainer'] if jsrt else ['nnUNetTrainer', 'nnUNetTrainerRAS'])
    ws = Workspace(args.workdir)
    ws.env.update({SCHEDULES_VARIABLE: args.schedule, KEEP_EVERY_VARIABLE: str(args.keep_every)})
    task = prepare(ws, args.task, args.size, args.fold)
    trainers = [f'{t}_{schedule_name(schedule)}' for t in trainers]
    name = args.task if not jsrt else f'{args.task}_{args.size}px'
    suffix = '' if args.schedule == DEFAULT_SCHEDULE else f'_{schedule_name(schedule)}'
    plot_path = os.path.join(ROOT, 'docs', f"learning_curves_{name.replace('-', '_')}{suffix}.png")
    results_path = os.path.join(args.workdir, f'learning_curves_{name}_fold_{args.fold}.json')
    curves = json.load(open(results_path)) if os.path.isfile(results_path) else {}

    while True:
        states = {t: progress(ws, task, t, args.fold) for t in trainers}
        for trainer, (epochs_done, newest, finished) in states.items():  # validate what is kept, record the curve
            curve = curves.setdefault(trainer, {'epochs': [], 'validation': []})
            if newest is None:
                continue
            curve['epochs'] = epoch_log(newest, schedule[1])
            validated = {p['epoch'] for p in curve['validation']}
            kept = kept_checkpoints(ws, task, trainer, args.fold, epochs_done if finished else None)
            for epoch, checkpoint in sorted(kept.items()):
                if epoch in validated or epoch > len(curve['epochs']):
                    continue
                dice = real_validation(ws, task, trainer, args.fold, checkpoint)
                curve['validation'].append({**curve['epochs'][epoch - 1], 'dice': dice,
                                            'mean_dice': sum(dice.values()) / len(dice), 'checkpoint': checkpoint})
                curve['validation'].sort(key=lambda p: p['epoch'])
                print(f'{trainer} epoch {epoch}: validation Dice {dice}', flush=True)
            write_json_atomically(results_path, curves)
        unfinished = [(state[0], t) for t, state in states.items() if not state[2]]
        left = deadline - time.time()
        if not unfinished or left < 120:
            break
        epochs_done, trainer = min(unfinished)
        ws.env[STOP_AFTER_VARIABLE] = str(min(args.chunk_minutes * 60, left))
        seconds = ws.run(['nnUNetv2_train', str(task.dataset_id), task.configuration, args.fold, '-tr', trainer, '-p',
                          PLANS, '-device', 'cpu', '--c'])
        print(f'{trainer}: a chunk from epoch {epochs_done} in {seconds:.0f} s', flush=True)

    mine = {t: curves[t] for t in trainers if t in curves}
    if any(c['validation'] for c in mine.values()):
        plot(mine, task, schedule, plot_path)
    text = table(mine, task)
    print(text)
    with open(f"{results_path[:-len('.json')]}{suffix}.md", 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
