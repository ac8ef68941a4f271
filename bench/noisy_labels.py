"""The noisy-label experiment of Zhu H.'s thesis (after Pick-and-Learn, MICCAI 2019) with stock nnU-Net commands:
baseline vs QAM vs QAM + OCM, Dice on clean test labels, on JSRT (lungs, heart, clavicles as three binary 2D
tasks) and on Hippocampus (3D).

    python bench/noisy_labels.py [--rows 0 50:5-13 75:5-13] [--structures lungs heart clavicles] [--size 64]
                                 [--schedule 20x25] [--methods baseline QAM QAM+OCM small-loss]
                                 [--seeds 0 1 2] [--repeat_rows 50:5-13] [--budget_minutes 90]
                                 [--hippocampus 50:1-3]
                                 [--workdir bench/results/noisy_labels (at 64 px; noisy_labels_<size>px otherwise)]
                                 [--results bench/measured/noisy_labels_<size>px.json]

Per row and structure: ``nnunet-ras corrupt-labels`` (seed 0, dilate or erode, radius range given in pixels of the
256-pixel images and scaled to ``--size``) -> light plans (bench/common.py) -> ``nnUNetv2_train`` fold 0 for each
method on the schedule (EPOCHSxITERATIONS, default NOISY_LABELS) -> ``nnUNetv2_predict`` on the 100 clean test
images -> Dice. The QAM runs also give the ROC AUC of their training-case quality ranking against the corruption
manifest. ``--repeat_rows`` run once per ``--seeds`` value: seed s > 0 corrupts with seed s and trains the
``_seed<s>`` variant of each trainer (seeded weights and sampling), and the table gives mean +- std over the seeds.
Hippocampus has no labelled test set, so it is scored on the clean labels of fold 0's validation cases.

Each finished run's figures accumulate in ``--results``, a small JSON file kept in the repository
(``bench/measured/``): the work tree under ``bench/results/`` (data sets, models) is not kept between sessions, and
the CPU protocol takes tens of hours, so the finished runs must be committed to survive. A re-run skips every run
in that file; a run stopped part-way continues with ``--c`` only while its workspace still exists. The tables are
printed in Markdown. With ``--budget_minutes`` the JSRT runs stop by themselves at an epoch's end once
it is spent (the table so far is still printed); the same command continues.
"""
import argparse
import json
import os
import time

from common import (JSRT_STRUCTURES, ROOT, SHARED_DATA, OutOfBudget, Workspace, copy_bench_plans, ensure_bench_plans,
                    link_hippocampus, make_jsrt_datasets, model_folder, train_and_test)

from nnunet_ras._io import write_json_atomically
from nnunet_ras.quality.ranking import MANIFEST_NAME, separation_auc
from nnunet_ras_bench_trainers import (NOISY_LABELS, SCHEDULES_VARIABLE, SEEDS_VARIABLE, parse_schedule,
                                       schedule_name)

METHODS = {'baseline': 'nnUNetTrainer', 'QAM': 'nnUNetTrainerQAM_NoOCM', 'QAM+OCM': 'nnUNetTrainerQAM',
           'QAM+OCM-lambda2': 'nnUNetTrainerQAM_OCMLambda2',
           'QAM+OCM-lambda2+gradient': 'nnUNetTrainerQAM_OCMLambda2_ImageGradient',
           'QAM+OCM-lambda2+gradient+warmup': 'nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp',
           'small-loss': 'nnUNetTrainerSmallLoss', 'small-loss-50': 'nnUNetTrainerSmallLoss_Forget50'}
DEFAULT_METHODS = ['baseline', 'QAM', 'QAM+OCM']
DEFAULT_SCHEDULE = 'x'.join(map(str, NOISY_LABELS))  # EPOCHSxITERATIONS
STRUCTURE_IDS = JSRT_STRUCTURES
SEED_TABLE = {  # Zhu's thesis: mean Dice over lung, heart, clavicle; per structure
    ('0', 'baseline'): (0.943, 0.941, 0.862, 0.915), ('0', 'QAM'): (0.939, 0.923, 0.831, 0.898),
    ('0', 'QAM+OCM'): (0.941, 0.940, 0.852, 0.911),
    ('25:1-8', 'baseline'): (0.868, 0.888, 0.538, 0.765), ('25:1-8', 'QAM'): (0.925, 0.926, 0.748, 0.866),
    ('25:1-8', 'QAM+OCM'): (0.936, 0.925, 0.823, 0.895),
    ('50:1-8', 'baseline'): (0.873, 0.884, 0.539, 0.765), ('50:1-8', 'QAM'): (0.922, 0.925, 0.726, 0.857),
    ('50:1-8', 'QAM+OCM'): (0.936, 0.929, 0.828, 0.898),
    ('75:1-8', 'baseline'): (0.745, 0.738, 0.381, 0.621), ('75:1-8', 'QAM'): (0.898, 0.825, 0.536, 0.753),
    ('75:1-8', 'QAM+OCM'): (0.937, 0.939, 0.809, 0.895),
    ('25:5-13', 'baseline'): (0.865, 0.857, 0.422, 0.715), ('25:5-13', 'QAM'): (0.893, 0.835, 0.615, 0.781),
    ('25:5-13', 'QAM+OCM'): (0.935, 0.935, 0.801, 0.890),
    ('50:5-13', 'baseline'): (0.755, 0.807, 0.393, 0.652), ('50:5-13', 'QAM'): (0.828, 0.853, 0.491, 0.714),
    ('50:5-13', 'QAM+OCM'): (0.942, 0.942, 0.853, 0.912),
    ('75:5-13', 'baseline'): (0.820, 0.828, 0.512, 0.720), ('75:5-13', 'QAM'): (0.770, 0.772, 0.366, 0.636),
    ('75:5-13', 'QAM+OCM'): (0.938, 0.937, 0.801, 0.892),
}


def parse_row(row: str):
    """'0' -> (0.0, None); '50:5-13' -> (0.5, (5, 13))."""
    if ':' not in row:
        return float(row) / 100, None
    share, radii = row.split(':')
    low, high = radii.split('-')
    return float(share) / 100, (int(low), int(high))


def scaled(radii, size: int):
    """Radius range in pixels of the 256-pixel images -> pixels at ``size`` (halves round up, at least 1)."""
    return tuple(max(1, int(r * size / 256 + 0.5)) for r in radii)


def noisy_name(prefix: str, row: str, seed: int = 0) -> str:
    """The corrupted data set's name, e.g. JSRTLungsNoisy50r5to13 (corruption seed 0), ...Noisy50r5to13Seed1."""
    return f'{prefix}Noisy{row.replace(":", "r").replace("-", "to")}{f"Seed{seed}" if seed else ""}'


def jsrt_noisy_name(structure: str, row: str, seed: int = 0) -> str:
    return noisy_name(f'JSRT{structure.capitalize()}', row, seed)


def default_workdir(size: int) -> str:
    """The workspace of one JSRT image size: bench/results/noisy_labels at 64 px, noisy_labels_<size>px else."""
    return os.path.join(ROOT, 'bench', 'results', 'noisy_labels' if size == 64 else f'noisy_labels_{size}px')


def default_results(size: int) -> str:
    """The tracked file of finished runs at one JSRT image size."""
    return os.path.join(ROOT, 'bench', 'measured', f'noisy_labels_{size}px.json')


def trainer_name(method: str, schedule: str, seed: int = 0) -> str:
    return f'{METHODS[method]}_{schedule}{f"_seed{seed}" if seed else ""}'


def result_key(kind: str, schedule: str, row: str, what: str, seed: int = 0) -> str:
    """The results.json key of one run (seed 0 keeps the key of the runs before seeds existed)."""
    return f'{kind}|{schedule}|{row}|{what}{f"|seed{seed}" if seed else ""}'


def corruption_breakdown(ranking: dict, manifest: dict, score: str = 'score') -> dict:
    """ROC AUC of a final training-case ranking per kind of corruption, against all clean training cases: which
    corruptions the QAM finds and which it misses. Kinds are operation x radius band, the two smallest radii of the
    manifest's range against the rest ('erode 3-4', 'erode 5-7' for 3-7 px); a case with several corrupted labels
    counts under each label's kind. ``score``: the ranking's column ('score', the weight-averaged QAM's;
    'score_final_qam', the last epoch's). -> {kind: {'cases': n, 'auc': x}}, kinds sorted."""
    low, high = manifest['radius_range']
    bands = [(low, min(low + 1, high))] + ([(low + 2, high)] if high >= low + 2 else [])
    scores = {r['case']: r[score] for r in ranking['cases'] if r.get('split') == 'train'}
    kinds = {}
    for case, entry in manifest['cases'].items():
        if case not in scores or not entry['corrupted']:
            continue
        for label in entry['labels'].values():
            if label['operation'] == 'none':  # the label is absent in this case: nothing was corrupted
                continue
            band = bands[0] if label['radius'] <= bands[0][1] else bands[-1]
            kinds.setdefault(f"{label['operation']} {band[0]}-{band[1]}", set()).add(case)
    clean = {c: False for c, e in manifest['cases'].items() if c in scores and not e['corrupted']}
    return {kind: {'cases': len(cases), 'auc': separation_auc(scores, {**clean, **{c: True for c in cases}})}
            for kind, cases in sorted(kinds.items())}


def _ranking_summary(folder: str, raw_folder: str) -> dict:
    """The QAM runs' ranking summary: 'auc_train' (the weight-averaged QAM's ranking in runs that have one,
    'qam_averaged_epochs' > 0; the last epoch's before), 'over_training' (clean vs corrupted weights over training)
    and, with the data set's corruption manifest, 'auc_by_corruption' and 'auc_train_mean_weight' (the cases
    ranked by their mean loss weight over the second half of training), kept with the run's figures; with an average,
    also the last epoch's QAM's 'auc_train_final_qam' and 'auc_by_corruption_final_qam'; all None for the other
    methods."""
    path = os.path.join(folder, 'fold_0', 'quality_ranking.json')
    if not os.path.isfile(path):
        return {'auc_train': None, 'quality_over_training': None, 'auc_by_corruption': None}
    with open(path) as f:
        ranking = json.load(f)
    manifest_path = os.path.join(raw_folder, MANIFEST_NAME)
    summary = ranking['summary']
    averaged = summary.get('qam_averaged_epochs')
    breakdown = final_breakdown = None
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        breakdown = corruption_breakdown(ranking, manifest)
        if averaged:
            final_breakdown = corruption_breakdown(ranking, manifest, 'score_final_qam')
    return {'auc_train': summary.get('auc_train'), 'quality_over_training': summary.get('over_training'),
            'auc_by_corruption': breakdown, 'qam_averaged_epochs': averaged,
            'auc_train_mean_weight': summary.get('auc_train_mean_weight'),
            **({'auc_train_final_qam': summary.get('auc_train_final_qam'),
                'auc_by_corruption_final_qam': final_breakdown} if averaged else {})}


def _save(results: dict, path: str) -> None:
    write_json_atomically(path, results)


def _dataset_for_row(ws: Workspace, source_id: int, row: str, radii, name: str, seed: int = 0) -> int:
    """The corrupted copy of ``source_id`` for this row, found by its name or made under the first free id from 810
    (ids do not depend on the order of ``--rows``)."""
    fraction, _ = parse_row(row)
    if radii is None:
        return source_id
    datasets = ws.dataset_ids()
    if name in datasets:
        return datasets[name]
    dataset_id = min(set(range(810, 1000)) - set(datasets.values()))
    ws.run(['nnunet-ras', 'corrupt-labels', '-d', str(source_id), '-o', str(dataset_id), '-name', name,
            '-fraction', str(fraction), '-radius', str(radii[0]), str(radii[1]), '-seed', str(seed)])
    return dataset_id


def run_jsrt(ws: Workspace, args, results: dict, results_path: str) -> None:
    make_jsrt_datasets(ws, args.size)
    for row, seed in runs_of(args):
        _, radii = parse_row(row)
        radii = scaled(radii, args.size) if radii else None
        for structure in args.structures:
            source = STRUCTURE_IDS[structure]
            dataset_id = _dataset_for_row(ws, source, row, radii, jsrt_noisy_name(structure, row, seed), seed)
            ensure_bench_plans(ws, source, '2d')
            if dataset_id != source and not os.path.isdir(ws.path(
                    'nnUNet_preprocessed', os.path.basename(ws.dataset_folder(dataset_id)), 'nnUNetBenchPlans_2d')):
                copy_bench_plans(ws, source, dataset_id, '2d')
            folder = ws.dataset_folder(source)
            for method in args.methods:
                trainer = trainer_name(method, args.schedule_name, seed)
                key = result_key('jsrt', args.schedule_name, row, f'{structure}|{method}', seed)
                if key in results:
                    continue
                run = train_and_test(ws, dataset_id, '2d', trainer, 'nnUNetBenchPlans', '0',
                                     os.path.join(folder, 'imagesTs'), os.path.join(folder, 'labelsTs'), '.png',
                                     args.deadline)
                run['dice'] = run['dice'][structure]
                run.update(_ranking_summary(model_folder(ws, dataset_id, trainer, 'nnUNetBenchPlans', '2d'),
                                             ws.dataset_folder(dataset_id)))
                run['radius_px'] = radii
                results[key] = run
                _save(results, results_path)
                print(key, run['dice'], run['auc_train'], flush=True)


def run_hippocampus(ws: Workspace, args, row: str, results: dict, results_path: str) -> None:
    link_hippocampus(ws)
    _, radii = parse_row(row)
    dataset_id = _dataset_for_row(ws, 4, row, radii, noisy_name('Hippocampus', row))
    ensure_bench_plans(ws, dataset_id, '3d_fullres', batch_size=4)
    from nnunet_ras.evaluation.evaluate import evaluate_folder
    for method in args.methods:
        trainer = trainer_name(method, args.schedule_name)
        key = result_key('hippocampus', args.schedule_name, row, method)
        if key in results:
            continue
        seconds = ws.run(['nnUNetv2_train', str(dataset_id), '3d_fullres', '0', '-tr', trainer, '-p',
                          'nnUNetBenchPlans', '-device', 'cpu', '--c'])
        folder = model_folder(ws, dataset_id, trainer, 'nnUNetBenchPlans', '3d_fullres')
        validation = os.path.join(folder, 'fold_0', 'validation')
        cases = sorted(f[:-7] for f in os.listdir(validation) if f.endswith('.nii.gz'))
        evaluation = evaluate_folder(os.path.join(SHARED_DATA, 'Dataset004_Hippocampus', 'labelsTr'), validation,
                                     '.nii.gz', {'anterior': 1, 'posterior': 2}, cases=cases)
        run = {'train_s': seconds, 'dice': {k: v['DSC']['mean'] for k, v in evaluation['summary'].items()},
               'n_cases': len(cases), **_ranking_summary(folder, ws.dataset_folder(dataset_id))}
        results[key] = run
        _save(results, results_path)
        print(key, run['dice'], run['auc_train'], flush=True)


def _fmt(value) -> str:
    return '-' if value is None else f'{value:.3f}'


def _spread(values) -> str:
    """One value as 0.123; several (seeds) as 0.123 +- 0.004 (sample std); none as '-'."""
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return _fmt(values[0])
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f'{mean:.3f} ± {std:.3f}'


def runs_of(args):
    """(row, seed) for every run: each row with seed 0, the repeated rows with every seed."""
    return [(row, seed) for row in args.rows for seed in (args.seeds if row in args.repeat_rows else [0])]


def tables(results: dict, args) -> str:
    structures = ('lungs', 'heart', 'clavicles')
    lines = [f'JSRT at {args.size} px, fold 0 of 5 (80 training cases), {args.schedule_name}, light plans; Dice on '
             f'the 100 clean test labels, mean ± std over corruption + training seeds {args.seeds} where repeated. '
             'Seed values in brackets.', '',
             '| noisy share | degree (px at 256; at this size) | method | runs | lungs | heart | clavicles | mean | '
             'ranking AUC (mean over structures) |', '|---|---|---|---|---|---|---|---|---|']
    for row in args.rows:
        share, radii = parse_row(row)
        seeds = args.seeds if row in args.repeat_rows else [0]
        for method in args.methods:
            per_seed = [{s: results.get(result_key('jsrt', args.schedule_name, row, f'{s}|{method}', seed), {})
                         for s in STRUCTURE_IDS} for seed in seeds]
            dice = {s: [runs[s].get('dice') for runs in per_seed] for s in structures}
            means = [sum(runs[s]['dice'] for s in structures) / 3 for runs in per_seed
                     if all(runs[s].get('dice') is not None for s in structures)]
            aucs = []
            for runs in per_seed:
                values = [runs[s].get('auc_train') for s in args.structures if runs[s].get('auc_train') is not None]
                if values:
                    aucs.append(sum(values) / len(values))
            seed = SEED_TABLE.get(('0' if radii is None else row, method))
            cells = [f'{_spread(dice[s])} ({seed[i]:.3f})' if seed else _spread(dice[s])
                     for i, s in enumerate(structures)]
            cells.append(f'{_spread(means)} ({seed[3]:.3f})' if seed else _spread(means))
            done = sum(1 for runs in per_seed if any(r.get('dice') is not None for r in runs.values()))
            degree = '-' if radii is None else f'{radii[0]}-{radii[1]}; {"-".join(map(str, scaled(radii, args.size)))}'
            lines.append(f'| {share:.0%} | {degree} | {method} | {done} | ' + ' | '.join(cells) +
                         f' | {_spread(aucs)} |')
    if args.hippocampus:
        lines += ['', f'Hippocampus ({args.hippocampus}), fold 0 validation cases against their clean labels:', '',
                  '| method | anterior | posterior | mean | ranking AUC |', '|---|---|---|---|---|']
        for method in args.methods:
            run = results.get(result_key('hippocampus', args.schedule_name, args.hippocampus, method), {})
            dice = run.get('dice') or {}
            values = [dice.get('anterior'), dice.get('posterior')]
            mean = sum(values) / 2 if None not in values else None
            lines.append(f'| {method} | {_fmt(values[0])} | {_fmt(values[1])} | {_fmt(mean)} | '
                         f'{_fmt(run.get("auc_train"))} |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', nargs='+', default=['0', '50:5-13', '75:5-13'],
                        help="'0' or 'SHARE:MIN-MAX' (percent, pixels at 256 px), the thesis's rows")
    parser.add_argument('--structures', nargs='+', default=list(STRUCTURE_IDS), choices=list(STRUCTURE_IDS))
    parser.add_argument('--size', type=int, default=64, help='JSRT image size (the data are 256 px)')
    parser.add_argument('--schedule', default=DEFAULT_SCHEDULE, help='EPOCHSxITERATIONS')
    parser.add_argument('--methods', nargs='+', default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='corruption + training seeds of the repeated rows (0: the unseeded first run)')
    parser.add_argument('--repeat_rows', nargs='*', default=None,
                        help='rows run once per seed (default: the rows with a 50 %% share)')
    parser.add_argument('--budget_minutes', type=float, default=None,
                        help='JSRT runs stop at an epoch end after this; the same command continues them')
    parser.add_argument('--hippocampus', default=None, help="e.g. '50:1-3' (share:voxel radius range)")
    parser.add_argument('--skip_jsrt', action='store_true')
    parser.add_argument('--workdir', default=None,
                        help='default: bench/results/noisy_labels at 64 px, bench/results/noisy_labels_<size>px else')
    parser.add_argument('--results', default=None,
                        help='finished runs, kept in the repository (default: bench/measured/noisy_labels_<size>px.json)')
    args = parser.parse_args()
    args.schedule_name = schedule_name(parse_schedule(args.schedule))
    args.deadline = None if args.budget_minutes is None else time.time() + args.budget_minutes * 60
    if args.repeat_rows is None:
        args.repeat_rows = [r for r in args.rows if r.startswith('50:')]
    if args.workdir is None:
        args.workdir = default_workdir(args.size)
    ws = Workspace(args.workdir)
    ws.env.update({SCHEDULES_VARIABLE: args.schedule, SEEDS_VARIABLE: ' '.join(str(s) for s in args.seeds if s)})
    results_path = args.results or default_results(args.size)
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
    spent = False
    if not args.skip_jsrt:
        try:
            run_jsrt(ws, args, results, results_path)
        except OutOfBudget:
            spent = True
            print(f'Budget of {args.budget_minutes:g} min spent; run the same command again to continue.')
    if args.hippocampus and not spent:
        run_hippocampus(ws, args, args.hippocampus, results, results_path)
    table = tables(results, args)
    print(table)
    with open(os.path.join(args.workdir, 'table.md'), 'w') as f:
        f.write(table + '\n')


if __name__ == '__main__':
    main()
