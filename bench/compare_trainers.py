"""Every baseline, ablation and loss trainer on the same folds of Hippocampus with the same schedule, compared the
papers' way (DSC, ASSD, HD95, RVE, precision, recall, parameters, s/epoch, paired Wilcoxon against the 3D U-Net),
plus each run's seconds per iteration and peak memory, and a repeat run of some trainers for the run-to-run spread.

    python bench/compare_trainers.py [--schedule 8x20] [--trainers ...] [--folds 0 1]
                                     [--repeat nnUNetTrainer nnUNetTrainerRAS nnUNetTrainerRAS_DiceCE]
                                     [--budget_minutes 120] [--workdir bench/results/compare_trainers]

Stock commands only: light plans (bench/common.py; 3d_fullres, batch 4), ``nnUNetv2_train ... --c`` on the
schedule for each trainer and fold (nnU-Net's own validation predictions of the fold are what is compared),
``nnUNetTrainerRAS_LRDEHL`` fine-tuned from the RAS checkpoint with ``-pretrained_weights``, the ``--repeat``
trainers once more on the first fold with seed 1, then ``nnunet-ras compare``. The schedule is EPOCHSxITERATIONS,
nnU-Net's poly learning rate over all of it. Runs stop by themselves at an epoch's end when ``--budget_minutes`` is
spent; a re-run continues them and skips finished ones.
"""
import argparse
import json
import os
import time

from common import OutOfBudget, ROOT, Workspace, ensure_bench_plans, link_hippocampus, model_folder, train_within
from nnunet_ras_bench_trainers import (FACTS_FILE, FINE_TUNE, SCHEDULES_VARIABLE, SEEDS_VARIABLE, parse_schedule,
                                       schedule_name)

TRAINERS = ['nnUNetTrainer', 'nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE', 'nnUNetTrainerSEUNet',
            'nnUNetTrainerResSEUNet', 'nnUNetTrainerVNet', 'nnUNetTrainerHybrid25D', 'nnUNetTrainerRAS_NoAttention',
            'nnUNetTrainerRAS_NoSeparable', 'nnUNetTrainerRAS_NoDropout', 'nnUNetTrainerRAS_SquaredDice']
REPEATED = ['nnUNetTrainer', 'nnUNetTrainerRAS', 'nnUNetTrainerRAS_DiceCE']
FINE_TUNED = f'nnUNetTrainerRAS_LRDEHL_{schedule_name(FINE_TUNE)}'
PLANS, CONFIGURATION, DATASET = 'nnUNetBenchPlans', '3d_fullres', 4
REPEAT_SEED = 1


def fold_folder(ws: Workspace, trainer: str, fold: str) -> str:
    return model_folder(ws, DATASET, trainer, PLANS, CONFIGURATION, fold)


def train(ws: Workspace, trainer: str, fold: str, deadline: float, *extra: str) -> None:
    """One run to its end, continuing a stopped one; raises OutOfBudget when it stopped at the deadline."""
    train_within(ws, DATASET, CONFIGURATION, fold, trainer, PLANS, deadline, *extra)


def compare(ws: Workspace, trainers, folds, out: str) -> str:
    ws.run(['nnunet-ras', 'compare', '-d', str(DATASET), '-c', CONFIGURATION, '-tr', *trainers, '-p', PLANS,
            '-f', *folds, '-ref_trainer', trainers[0], '-o', out])
    with open(os.path.join(out, 'comparison.md')) as f:
        return f.read()


def cost_table(ws: Workspace, trainers, folds) -> str:
    """Seconds per iteration (epoch wall time from nnU-Net's log / iterations) and peak memory, per trainer."""
    from nnunet_ras.evaluation.compare import checkpoint_facts
    lines = ['| trainer | s / iteration | peak memory MB | measured as |', '|---|---|---|---|']
    for trainer in trainers:
        durations, peaks, kind = [], [], '-'
        for fold in folds:
            folder = fold_folder(ws, trainer, fold)
            facts_path = os.path.join(folder, FACTS_FILE)
            facts = json.load(open(facts_path)) if os.path.isfile(facts_path) else {}
            iterations = facts.get('iterations_per_epoch')
            if iterations and os.path.isfile(os.path.join(folder, 'checkpoint_final.pth')):
                durations += [d / iterations for d in
                              checkpoint_facts(os.path.join(folder, 'checkpoint_final.pth'))['durations']]
            if 'peak_memory_mb' in facts:
                peaks.append(facts['peak_memory_mb'])
                kind = facts['peak_memory_kind']
        per_iteration = f'{sum(durations) / len(durations):.2f}' if durations else '-'
        lines.append(f"| {trainer} | {per_iteration} | {max(peaks):.0f} | {kind} |" if peaks else
                     f"| {trainer} | {per_iteration} | - | - |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--schedule', default='8x20', help='EPOCHSxITERATIONS, the same for every trainer')
    parser.add_argument('--trainers', nargs='+', default=TRAINERS, help='trainers (the first is the reference)')
    parser.add_argument('--folds', nargs='+', default=['0'])
    parser.add_argument('--repeat', nargs='*', default=REPEATED,
                        help=f'trainers run a second time on the first fold (seed {REPEAT_SEED}); none: no repeats')
    parser.add_argument('--no_lrdehl', action='store_true', help='skip the LRDEHL fine-tuning of the RAS model')
    parser.add_argument('--budget_minutes', type=float, default=24 * 60,
                        help='runs stop at an epoch end after this; a re-run continues them')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'bench', 'results', 'compare_trainers'))
    args = parser.parse_args()
    deadline = time.time() + args.budget_minutes * 60
    suffix = schedule_name(parse_schedule(args.schedule))
    ws = Workspace(args.workdir)
    ws.env.update({SCHEDULES_VARIABLE: args.schedule, SEEDS_VARIABLE: str(REPEAT_SEED)})
    link_hippocampus(ws)
    ensure_bench_plans(ws, DATASET, CONFIGURATION, batch_size=4)

    trainers = [f'{t}_{suffix}' for t in args.trainers]
    repeats = [(f'{t}_{suffix}', f'{t}_{suffix}_seed{REPEAT_SEED}') for t in args.repeat]
    try:
        for fold in args.folds:
            for trainer in trainers:
                train(ws, trainer, fold, deadline, '--c')
            ras = os.path.join(fold_folder(ws, f'nnUNetTrainerRAS_{suffix}', fold), 'checkpoint_final.pth')
            if not args.no_lrdehl and os.path.isfile(ras):
                train(ws, FINE_TUNED, fold, deadline, '-pretrained_weights', ras)
        for _, repeat in repeats:
            train(ws, repeat, args.folds[0], deadline, '--c')
    except OutOfBudget:
        print(f'Budget of {args.budget_minutes:g} min spent; run the same command again to continue.')
        return
    if not args.no_lrdehl:
        trainers.append(FINE_TUNED)
    report = [compare(ws, trainers, args.folds, os.path.join(args.workdir, f'comparison_{suffix}')),
              '', 'Cost per run (mean over folds; peak over folds):', '', cost_table(ws, trainers, args.folds)]
    if repeats:
        pairs = [name for pair in repeats for name in pair]
        report += ['', f'Run-to-run spread: fold {args.folds[0]}, each repeated trainer run twice '
                   f'(second run: seed {REPEAT_SEED}):', '',
                   compare(ws, pairs, args.folds[:1], os.path.join(args.workdir, f'comparison_{suffix}_repeats'))]
    text = '\n'.join(report)
    print(text)
    with open(os.path.join(args.workdir, f'report_{suffix}.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
