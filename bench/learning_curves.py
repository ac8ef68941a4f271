"""Learning curves of nnU-Net's default trainer and RAS U-Net on Hippocampus: validation Dice against iterations and
training wall time, to choose a schedule at which both have flattened (issue 15, step 1).

    python bench/learning_curves.py [--trainers nnUNetTrainer nnUNetTrainerRAS] [--schedule 100x50] [--fold 0]
                                    [--keep_every 10] [--chunk_minutes 20] [--budget_minutes 90]
                                    [--workdir bench/results/compare_trainers]

Stock commands, light plans (bench/common.py; 3d_fullres, batch 4) in the workspace of ``compare_trainers.py``,
so that a finished curve is also that table's run at the same schedule. Each trainer runs ``nnUNetv2_train ... --c``
in chunks of ``--chunk_minutes``, always the one with the fewest epochs next, so the curves advance together and
each chunk ends by itself at an epoch's end (``Resumable`` in bench/trainers). Every ``--keep_every`` epochs the
checkpoint is kept; each kept one gets a real validation: ``nnUNetv2_predict -chk`` on the fold's validation images
(no test-time mirroring) and ``nnunet-ras evaluate``'s Dice against their labels. nnU-Net's pseudo Dice (and its
EMA) per epoch and the epochs' wall time come from the checkpoint's log. The invocation stops launching chunks after
``--budget_minutes``; a re-run continues where the last one stopped and skips what is done. Writes ``curves.json``,
a table, and the plot ``docs/learning_curves_hippocampus.png``.
"""
import argparse
import glob
import json
import os
import re
import time

from common import ROOT, SHARED_DATA, Workspace, make_bench_plans, model_folder

from nnunet_ras._io import write_json_atomically
from nnunet_ras_bench_trainers import (KEEP_EVERY_VARIABLE, SCHEDULES_VARIABLE, STOP_AFTER_VARIABLE, parse_schedule,
                                       schedule_name)

PLANS, CONFIGURATION, DATASET = 'nnUNetBenchPlans', '3d_fullres', 4
LABELS = {'anterior': 1, 'posterior': 2}
PLOT = os.path.join(ROOT, 'docs', 'learning_curves_hippocampus.png')


def _fold_folder(ws: Workspace, trainer: str, fold: str) -> str:
    return os.path.join(model_folder(ws, DATASET, trainer, PLANS, CONFIGURATION), f'fold_{fold}')


def _load(path: str) -> dict:
    import torch
    return torch.load(path, map_location='cpu', weights_only=False)


def progress(ws: Workspace, trainer: str, fold: str):
    """(epochs done, the newest checkpoint's path or None, finished)."""
    folder = _fold_folder(ws, trainer, fold)
    for name, finished in (('checkpoint_final.pth', True), ('checkpoint_latest.pth', False)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _load(path)['current_epoch'], path, finished
    return 0, None, False


def epoch_log(checkpoint_path: str, iterations: int) -> list:
    """Per epoch from nnU-Net's log in a checkpoint: iterations so far, cumulative epoch wall time (training and the
    per-epoch validation batches; the gaps between chunks are not counted), pseudo Dice per class and its EMA."""
    log = _load(checkpoint_path)['logging']
    rows, wall = [], 0.0
    for epoch, (start, end) in enumerate(zip(log['epoch_start_timestamps'], log['epoch_end_timestamps'])):
        wall += end - start
        rows.append({'epoch': epoch + 1, 'iterations': (epoch + 1) * iterations, 'train_s': wall,
                     'pseudo_dice': [float(d) for d in log['dice_per_class_or_region'][epoch]],
                     'ema_fg_dice': float(log['ema_fg_dice'][epoch])})
    return rows


def validation_images(ws: Workspace, fold: str) -> tuple:
    """A folder of links to the fold's validation images (nnU-Net's splits_final.json), and their case names."""
    with open(ws.path('nnUNet_preprocessed', 'Dataset004_Hippocampus', 'splits_final.json')) as f:
        cases = sorted(json.load(f)[int(fold)]['val'])
    folder = os.path.join(ws.root, f'validation_images_fold_{fold}')
    os.makedirs(folder, exist_ok=True)
    for case in cases:
        link = os.path.join(folder, f'{case}_0000.nii.gz')
        if not os.path.exists(link):
            os.symlink(os.path.join(SHARED_DATA, 'Dataset004_Hippocampus', 'imagesTr', f'{case}_0000.nii.gz'), link)
    return folder, cases


def real_validation(ws: Workspace, trainer: str, fold: str, checkpoint: str) -> dict:
    """Dice per label of the fold's validation cases predicted with one checkpoint of the fold's folder."""
    from nnunet_ras.evaluation.evaluate import evaluate_folder
    images, cases = validation_images(ws, fold)
    out = os.path.join(_fold_folder(ws, trainer, fold), 'learning_curve', os.path.splitext(checkpoint)[0])
    ws.run(['nnUNetv2_predict', '-i', images, '-o', out, '-d', str(DATASET), '-c', CONFIGURATION, '-tr', trainer,
            '-p', PLANS, '-f', fold, '-chk', checkpoint, '-device', 'cpu', '--disable_tta', '-npp', '1', '-nps', '1'])
    evaluation = evaluate_folder(os.path.join(SHARED_DATA, 'Dataset004_Hippocampus', 'labelsTr'), out, '.nii.gz',
                                 LABELS, cases=cases)
    return {name: m['DSC']['mean'] for name, m in evaluation['summary'].items()}


def kept_checkpoints(ws: Workspace, trainer: str, fold: str) -> dict:
    """epoch -> checkpoint file name, for the kept copies and the final checkpoint."""
    folder = _fold_folder(ws, trainer, fold)
    kept = {int(re.search(r'_(\d+)\.pth$', p).group(1)): os.path.basename(p)
            for p in glob.glob(os.path.join(folder, 'checkpoint_epoch_*.pth'))}
    if os.path.isfile(os.path.join(folder, 'checkpoint_final.pth')):
        kept[_load(os.path.join(folder, 'checkpoint_final.pth'))['current_epoch']] = 'checkpoint_final.pth'
    return kept


def flattening(points: list) -> list:
    """For every real-validation point N whose 80 % point exists: mean Dice(N) - mean Dice(0.8 N)."""
    by_iterations = {p['iterations']: p['mean_dice'] for p in points}
    return [{'iterations': n, 'gain_last_20_percent': by_iterations[n] - by_iterations[int(n * 0.8)]}
            for n in sorted(by_iterations) if int(n * 0.8) in by_iterations and n * 0.8 == int(n * 0.8)]


def plot(curves: dict, schedule: tuple, path: str) -> None:
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
    axes[0].set_xlabel('iterations (batch 4)')
    axes[1].set_xlabel('training wall time, h (2-core CPU)')
    for ax in axes:
        ax.set_ylabel('mean Dice, anterior + posterior')
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc='lower right')
    fig.suptitle(f'Hippocampus fold 0, light plans, {schedule[0]} epochs x {schedule[1]} iterations, poly learning '
                 f'rate over the whole schedule')
    fig.tight_layout()
    tmp = path + '.partial.png'
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def table(curves: dict) -> str:
    lines = ['| trainer | iterations | training h | pseudo Dice (EMA) | validation Dice anterior / posterior | mean | '
             'gain over the last 20 % |', '|---|---|---|---|---|---|---|']
    for trainer, curve in curves.items():
        gains = {g['iterations']: g['gain_last_20_percent'] for g in flattening(curve['validation'])}
        for p in curve['validation']:
            gain = gains.get(p['iterations'])
            lines.append(f"| {trainer} | {p['iterations']} | {p['train_s'] / 3600:.2f} | {p['ema_fg_dice']:.3f} | "
                         f"{p['dice']['anterior']:.3f} / {p['dice']['posterior']:.3f} | {p['mean_dice']:.3f} | "
                         f"{'-' if gain is None else f'{gain:+.3f}'} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--trainers', nargs='+', default=['nnUNetTrainer', 'nnUNetTrainerRAS'])
    parser.add_argument('--schedule', default='100x50', help='EPOCHSxITERATIONS of the whole run (poly learning rate '
                        'over all of it)')
    parser.add_argument('--fold', default='0')
    parser.add_argument('--keep_every', type=int, default=10, help='epochs between kept, validated checkpoints')
    parser.add_argument('--chunk_minutes', type=float, default=20)
    parser.add_argument('--budget_minutes', type=float, default=90, help='launch no chunk after this')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'bench', 'results', 'compare_trainers'))
    args = parser.parse_args()
    schedule = parse_schedule(args.schedule)
    deadline = time.time() + args.budget_minutes * 60
    ws = Workspace(args.workdir)
    ws.env.update({SCHEDULES_VARIABLE: args.schedule, KEEP_EVERY_VARIABLE: str(args.keep_every)})
    link = ws.path('nnUNet_raw', 'Dataset004_Hippocampus')
    if not os.path.exists(link):
        os.symlink(os.path.join(SHARED_DATA, 'Dataset004_Hippocampus'), link)
    if not os.path.isdir(ws.path('nnUNet_preprocessed', 'Dataset004_Hippocampus', f'{PLANS}_{CONFIGURATION}')):
        make_bench_plans(ws, DATASET, CONFIGURATION, batch_size=4)
    trainers = [f'{t}_{schedule_name(schedule)}' for t in args.trainers]
    results_path = os.path.join(args.workdir, f'learning_curves_fold_{args.fold}.json')
    curves = json.load(open(results_path)) if os.path.isfile(results_path) else {}

    while True:
        for trainer in trainers:  # validate what is kept and not yet validated, then record the curve
            curve = curves.setdefault(trainer, {'epochs': [], 'validation': []})
            epochs_done, newest, _ = progress(ws, trainer, args.fold)
            if newest is None:
                continue
            curve['epochs'] = epoch_log(newest, schedule[1])
            validated = {p['epoch'] for p in curve['validation']}
            for epoch, checkpoint in sorted(kept_checkpoints(ws, trainer, args.fold).items()):
                if epoch in validated or epoch > len(curve['epochs']):
                    continue
                dice = real_validation(ws, trainer, args.fold, checkpoint)
                curve['validation'].append({**curve['epochs'][epoch - 1], 'dice': dice,
                                            'mean_dice': sum(dice.values()) / len(dice), 'checkpoint': checkpoint})
                curve['validation'].sort(key=lambda p: p['epoch'])
                print(f'{trainer} epoch {epoch}: validation Dice {dice}', flush=True)
            write_json_atomically(results_path, curves)
        unfinished = [(progress(ws, t, args.fold)[0], t) for t in trainers if not progress(ws, t, args.fold)[2]]
        left = deadline - time.time()
        if not unfinished or left < 120:
            break
        epochs_done, trainer = min(unfinished)
        ws.env[STOP_AFTER_VARIABLE] = str(min(args.chunk_minutes * 60, left))
        seconds = ws.run(['nnUNetv2_train', str(DATASET), CONFIGURATION, args.fold, '-tr', trainer, '-p', PLANS,
                          '-device', 'cpu', '--c'])
        print(f'{trainer}: epochs {epochs_done} -> {progress(ws, trainer, args.fold)[0]} in {seconds:.0f} s',
              flush=True)

    if any(c['validation'] for c in curves.values()):
        plot({t: curves[t] for t in trainers if t in curves}, schedule, PLOT)
    text = table({t: curves[t] for t in trainers if t in curves})
    print(text)
    with open(os.path.join(args.workdir, f'learning_curves_fold_{args.fold}.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
