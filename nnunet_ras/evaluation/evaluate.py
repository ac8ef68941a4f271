"""Evaluation of a folder of predicted segmentations against a folder of references, written as JSON and CSV.

Files are read with SimpleITK, so any format nnU-Net's SimpleITKIO reads works (``.nii.gz``, ``.png`` ...); the
spacing comes from each reference's header. Problems with the input raise ``DatasetError`` naming the file.
"""
import csv
import io
import json
import math
import os
from typing import Collection, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ras._io import LoadedImage, read_image, write_text_atomically
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.evaluation.metrics import METRICS, UNITS, LabelOrRegion, label_metrics, nan_summary

Targets = Dict[str, LabelOrRegion]  # label name -> label value or nnU-Net region (tuple of labels)


def to_json(value):
    """NaN -> null (JSON has no NaN), tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def targets_from_dataset_json(dataset_json: dict, labels: Optional[Sequence[int]] = None
                              ) -> Tuple[Targets, Optional[int]]:
    """The foreground labels (or regions) of an nnU-Net dataset.json by name, and its ignore label.

    ``labels`` restricts them to those values; a value dataset.json does not name is evaluated as ``label_<v>``.
    """
    targets = {name: tuple(v) if isinstance(v, (list, tuple)) else int(v)
               for name, v in dataset_json['labels'].items() if name not in ('background', 'ignore')}
    ignore_label = dataset_json['labels'].get('ignore')
    if labels is not None:
        by_value = {v: name for name, v in targets.items()}
        targets = {by_value.get(v, f'label_{v}'): v for v in labels}
    return targets, ignore_label


def read_segmentation(path: str, declared: Optional[Collection[int]] = None) -> LoadedImage:
    """Reads a label map through the package's verified reader (missing, truncated, non-integer or, with
    ``declared``, undeclared values are refused naming the file); the array is an owned copy."""
    return read_image(path, 'label', labels=declared)


def _check_same_grid(reference_path: str, reference, prediction_path: str, prediction) -> None:
    """Metrics on two different grids would compare different places; say which geometry differs."""
    problems = [f"{name} {tuple(round(x, 4) for x in p)} vs reference {tuple(round(x, 4) for x in r)}"
                for name, p, r in (('size', prediction.GetSize(), reference.GetSize()),
                                   ('spacing', prediction.GetSpacing(), reference.GetSpacing()),
                                   ('origin', prediction.GetOrigin(), reference.GetOrigin()),
                                   ('direction', prediction.GetDirection(), reference.GetDirection()))
                if len(p) != len(r) or not np.allclose(p, r, rtol=1e-4, atol=1e-4)]
    if problems:
        raise DatasetError(f"{prediction_path}: not on the grid of the reference {reference_path} "
                           f"({'; '.join(problems)})")


def _cases(folder: str, file_ending: str, what: str) -> List[str]:
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: {what} folder does not exist")
    return sorted(f[:-len(file_ending)] for f in os.listdir(folder) if f.endswith(file_ending))


def labels_in(paths: Iterable[str]) -> Targets:
    """Every non-zero value found in the files, named ``label_<v>``: the labels to evaluate when none are given.

    The values come from an owned copy of each file's voxels: a NumPy view of a SimpleITK image that is not kept
    alive reads freed memory (random extra labels).
    """
    values = set()
    for path in paths:
        values |= set(int(v) for v in np.unique(read_segmentation(path).array).tolist())
    return {f'label_{v}': int(v) for v in sorted(values - {0})}


def evaluate_case(reference_path: str, prediction_path: str, targets: Targets,
                  ignore_label: Optional[int] = None, declared: Optional[Collection[int]] = None) -> dict:
    """Metrics of every target of one case, with the spacing (x, y, z order, as in the header) they used."""
    (reference, ref), (prediction, pred) = read_segmentation(reference_path, declared), \
        read_segmentation(prediction_path, declared)
    _check_same_grid(reference_path, reference, prediction_path, prediction)
    spacing_zyx = reference.GetSpacing()[::-1]  # numpy arrays from SimpleITK are indexed z, y, x
    return {'reference_file': reference_path, 'prediction_file': prediction_path,
            'spacing': list(reference.GetSpacing()),
            'metrics': {name: label_metrics(pred, ref, target, spacing_zyx, ignore_label)
                        for name, target in targets.items()}}


def summarize(cases: Dict[str, dict], targets: Targets) -> Dict[str, Dict[str, dict]]:
    """Per target and metric: mean, std, median, min, max over the cases where the metric is defined, and n."""
    return {name: {m: nan_summary([case['metrics'][name][m] for case in cases.values()]) for m in METRICS}
            for name in targets}


def evaluate_folder(reference_folder: str, prediction_folder: str, file_ending: str = '.nii.gz',
                    targets: Optional[Targets] = None, ignore_label: Optional[int] = None,
                    cases: Optional[Sequence[str]] = None, declared: Optional[Collection[int]] = None) -> dict:
    """Evaluates ``cases`` (default: every reference case) and returns the per-case metrics and their summary.

    Every case needs a prediction and a reference file on the same grid. Without ``targets``, the non-zero values
    found in the references and predictions are evaluated. With ``declared`` (the values a dataset.json names), a
    file holding any other value is refused.
    """
    if cases is None:
        cases = _cases(reference_folder, file_ending, 'reference')
        _cases(prediction_folder, file_ending, 'prediction')
    if not cases:
        raise DatasetError(f"{reference_folder}: no cases ending in {file_ending} to evaluate")
    pairs = {c: (os.path.join(reference_folder, c + file_ending), os.path.join(prediction_folder, c + file_ending))
             for c in cases}
    for case, (reference_path, prediction_path) in pairs.items():
        for path, what in ((reference_path, 'reference'), (prediction_path, 'prediction')):
            if not os.path.isfile(path):
                raise DatasetError(f"case {case}: {what} file {path} is missing")
    if targets is None:
        targets = labels_in([p for pair in pairs.values() for p in pair])
    results = {case: evaluate_case(r, p, targets, ignore_label, declared) for case, (r, p) in pairs.items()}
    return {'reference_folder': os.path.abspath(reference_folder),
            'prediction_folder': os.path.abspath(prediction_folder),
            'file_ending': file_ending, 'labels': targets, 'ignore_label': ignore_label,
            'units': {m: UNITS[m] for m in METRICS},
            'cases': results, 'summary': summarize(results, targets)}


def csv_column(metric: str) -> str:
    """Metric name with its unit, e.g. ``HD95_mm``, ``RVE_percent``."""
    unit = UNITS.get(metric, '').replace('%', 'percent')
    return f'{metric}_{unit}' if unit else metric


def cases_csv(evaluation: dict, extra: Optional[Dict[str, str]] = None) -> str:
    """One row per case and label; ``extra`` columns (e.g. the trainer) go first. NaN is written as ``nan``."""
    extra = extra or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    first_case = next(iter(evaluation['cases'].values()))
    counts = [k for k in next(iter(first_case['metrics'].values())) if k not in METRICS]
    writer.writerow([*extra, 'case', 'label', *map(csv_column, METRICS), *counts])
    for case, result in evaluation['cases'].items():
        for name, values in result['metrics'].items():
            writer.writerow([*extra.values(), case, name, *(values[k] for k in (*METRICS, *counts))])
    return buffer.getvalue()


def summary_text(evaluation: dict) -> str:
    """A short plain-text table of the means, for the terminal."""
    lines = [f"{'label':<16}" + ''.join(f'{csv_column(m):>14}' for m in METRICS)]
    for name, stats in evaluation['summary'].items():
        lines.append(f'{name:<16}' + ''.join(f"{stats[m]['mean']:>9.3f} n={stats[m]['n']:<2}" for m in METRICS))
    return '\n'.join(lines)


def write_evaluation(evaluation: dict, json_path: str, csv_path: str) -> None:
    write_text_atomically(json_path, json.dumps(to_json(evaluation), indent=2))
    write_text_atomically(csv_path, cases_csv(evaluation))
