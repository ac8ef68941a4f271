"""Several trainers' nnU-Net cross-validation results in the papers' table form, with paired tests.

Reads what ``nnUNetv2_train`` leaves in ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>/fold_<f>/``:
the validation predictions (``validation/``) and ``checkpoint_final.pth`` (weights and the epoch time stamps), and
evaluates the predictions against ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``.
"""
import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from scipy.stats import wilcoxon

from nnunet_ras._io import declared_label_values, write_atomically, write_text_atomically
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.evaluation.evaluate import cases_csv, evaluate_folder, targets_from_dataset_json
from nnunet_ras.evaluation.metrics import METRICS, NAN, UNITS, nan_summary

BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
DECIMALS = {'DSC': 3, 'precision': 3, 'recall': 3, 'ASSD': 2, 'HD95': 2, 'RVE': 1}


@dataclass
class TrainerResults:
    trainer: str
    parameters: int
    seconds_per_epoch: float
    epochs: int
    evaluations: Dict[int, dict]  # fold -> evaluate_folder's result

    @property
    def labels(self) -> List[str]:
        return list(next(iter(self.evaluations.values()))['labels'])

    def values(self, label: str, metric: str) -> Dict[str, float]:
        """case -> value over all folds (each case is validated in one fold only)."""
        return {case: result['metrics'][label][metric]
                for evaluation in self.evaluations.values() for case, result in evaluation['cases'].items()}


def checkpoint_facts(checkpoint_path: str) -> Dict[str, float]:
    """Trainable parameters (BN running statistics excluded) and the epoch durations of one final checkpoint."""
    checkpoint = torch.load(checkpoint_path, map_location='cpu', weights_only=False)
    parameters = sum(v.numel() for k, v in checkpoint['network_weights'].items() if not k.endswith(BUFFERS))
    log = checkpoint['logging']
    durations = [end - start for start, end in zip(log['epoch_start_timestamps'], log['epoch_end_timestamps'])]
    return {'parameters': parameters, 'durations': durations}


def paired_test(values: Dict[str, float], reference: Dict[str, float]) -> Dict[str, float]:
    """Wilcoxon signed-rank test on the cases both have a defined value for; p = 1 when all differences are 0."""
    cases = [c for c in values if c in reference and not math.isnan(values[c]) and not math.isnan(reference[c])]
    x, y = np.array([values[c] for c in cases]), np.array([reference[c] for c in cases])
    if not cases:
        p = NAN
    elif np.all(x == y):
        p = 1.0
    else:
        p = float(wilcoxon(x, y).pvalue)
    return {'p_value': p, 'n_pairs': len(cases)}


def load_trainer(dataset_name: str, trainer: str, plans: str, configuration: str, folds: Sequence[int],
                 gt_folder: str) -> TrainerResults:
    """Evaluates one trainer's validation predictions of every fold; DatasetError names a missing folder."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    model_folder = get_output_folder(dataset_name, trainer, plans, configuration)
    if not os.path.isdir(model_folder):
        raise DatasetError(f"{model_folder}: results folder of trainer {trainer} does not exist (trained with "
                           f"-p {plans} and configuration {configuration}?)")
    dataset_json = load_json(os.path.join(model_folder, 'dataset.json'))
    targets, ignore_label = targets_from_dataset_json(dataset_json)
    evaluations, parameters, durations = {}, set(), []
    for fold in folds:
        fold_folder = os.path.join(model_folder, f'fold_{fold}')
        checkpoint = os.path.join(fold_folder, 'checkpoint_final.pth')
        validation = os.path.join(fold_folder, 'validation')
        for path, what in ((fold_folder, 'fold folder'), (checkpoint, 'final checkpoint (training not finished?)'),
                           (validation, 'validation folder (run nnUNetv2_train ... --val)')):
            if not os.path.exists(path):
                raise DatasetError(f"{path}: {what} of trainer {trainer} is missing")
        facts = checkpoint_facts(checkpoint)
        parameters.add(facts['parameters'])
        durations += facts['durations']
        cases = sorted(f[:-len(dataset_json['file_ending'])] for f in os.listdir(validation)
                       if f.endswith(dataset_json['file_ending']))
        if not cases:
            raise DatasetError(f"{validation}: no validation predictions of trainer {trainer}")
        evaluations[fold] = evaluate_folder(gt_folder, validation, dataset_json['file_ending'], targets,
                                            ignore_label, cases, declared_label_values(dataset_json['labels']))
    if len(parameters) > 1:
        raise DatasetError(f"{model_folder}: the folds' checkpoints hold different networks ({sorted(parameters)} "
                           f"parameters)")
    return TrainerResults(trainer, parameters.pop(), float(np.mean(durations)) if durations else NAN,
                          len(durations), evaluations)


def comparison_rows(results: List[TrainerResults], reference: TrainerResults) -> List[dict]:
    """One row per trainer, label and metric: summary over cases, and the paired test against the reference."""
    rows = []
    for r in results:
        for label in r.labels:
            for metric in METRICS:
                values = r.values(label, metric)
                test = (paired_test(values, reference.values(label, metric)) if r is not reference
                        else {'p_value': NAN, 'n_pairs': 0})
                rows.append({'trainer': r.trainer, 'label': label, 'metric': metric, 'unit': UNITS[metric],
                             **nan_summary(list(values.values())), 'n_cases': len(values),
                             'reference_trainer': reference.trainer, **test, 'parameters': r.parameters,
                             'seconds_per_epoch': r.seconds_per_epoch, 'epochs': r.epochs})
    return rows


def _cell(row: dict) -> str:
    d = DECIMALS[row['metric']]
    text = f"{row['mean']:.{d}f} ± {row['std']:.{d}f}"
    if row['n'] != row['n_cases']:
        text += f" (n={row['n']})"
    if not math.isnan(row['p_value']):
        text += f" (p={row['p_value']:.3g})"
    return text


def markdown_table(rows: List[dict], title: str) -> str:
    """One table per label: a row per trainer, mean ± std (p of the paired test) per metric."""
    lines = [f'## {title}', '', 'mean ± std over the validation cases; p: Wilcoxon signed-rank test against the '
             f"reference trainer {rows[0]['reference_trainer']}, paired on case", '']
    for label in dict.fromkeys(r['label'] for r in rows):
        header = ['trainer', *(f'{m} {UNITS[m]}'.strip() for m in METRICS), 'cases', 'parameters', 's / epoch']
        lines += [f'### {label}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for trainer in dict.fromkeys(r['trainer'] for r in rows):
            cells = {r['metric']: r for r in rows if r['label'] == label and r['trainer'] == trainer}
            first = cells[METRICS[0]]
            name = trainer + (' (reference)' if trainer == first['reference_trainer'] else '')
            lines.append('| ' + ' | '.join([name, *(_cell(cells[m]) for m in METRICS), str(first['n_cases']),
                                            f"{first['parameters'] / 1e6:.2f} M",
                                            f"{first['seconds_per_epoch']:.1f}"]) + ' |')
        lines.append('')
    return '\n'.join(lines)


def rows_csv(rows: List[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_boxplots(results: List[TrainerResults], output_folder: str) -> List[str]:
    """One PNG per metric: a panel per label, a box per trainer (cases where the metric is defined)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = results[0].labels
    paths = []
    for metric in METRICS:
        figure, axes = plt.subplots(1, len(labels), figsize=(1.5 + 2.2 * len(results) * len(labels), 4),
                                    squeeze=False)
        for ax, label in zip(axes[0], labels):
            data = [[v for v in r.values(label, metric).values() if not math.isnan(v)] for r in results]
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(results) + 1), [r.trainer for r in results], rotation=20, ha='right',
                          fontsize=8)
            ax.set_title(label)
            ax.set_ylabel(f'{metric} ({UNITS[metric]})' if UNITS[metric] else metric)
        figure.tight_layout()
        path = os.path.join(output_folder, f'boxplot_{metric}.png')
        write_atomically(path, lambda temporary: figure.savefig(temporary, format='png', dpi=100))
        plt.close(figure)
        paths.append(path)
    return paths


def compare_trainers(dataset: str, configuration: str, trainers: Sequence[str], output_folder: str,
                     plans: str = 'nnUNetPlans', folds: Sequence[int] = (0, 1, 2, 3, 4),
                     reference_trainer: Optional[str] = None) -> str:
    """Evaluates every trainer, writes comparison.md, comparison.csv, cases.csv and the box plots; returns the
    Markdown."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunet_ras._io import check_output_file
    check_output_file(os.path.join(output_folder, 'comparison.md'), 'the comparison (-o is a folder)')
    reference_trainer = reference_trainer or trainers[0]
    if reference_trainer not in trainers:
        raise DatasetError(f"reference trainer {reference_trainer} is not among the compared trainers {trainers}")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise DatasetError(f"dataset {dataset}: {e}") from None
    gt_folder = os.path.join(nnUNet_preprocessed, dataset_name, 'gt_segmentations')
    if not os.path.isdir(gt_folder):
        raise DatasetError(f"{gt_folder}: reference segmentations are missing (run nnUNetv2_plan_and_preprocess)")
    results = [load_trainer(dataset_name, t, plans, configuration, folds, gt_folder) for t in trainers]
    rows = comparison_rows(results, results[list(trainers).index(reference_trainer)])
    markdown = markdown_table(rows, f"{dataset_name}, {configuration}, plans {plans}, folds "
                                    f"{', '.join(map(str, folds))}")
    write_text_atomically(os.path.join(output_folder, 'comparison.md'), markdown)
    write_text_atomically(os.path.join(output_folder, 'comparison.csv'), rows_csv(rows))
    case_tables = [cases_csv(e, {'trainer': r.trainer, 'fold': str(f)})
                   for r in results for f, e in r.evaluations.items()]
    write_text_atomically(os.path.join(output_folder, 'cases.csv'),
                          case_tables[0] + ''.join(t.split('\n', 1)[1] for t in case_tables[1:]))
    write_boxplots(results, output_folder)
    return markdown
