"""Per-label segmentation metrics in physical units: DSC, ASSD, HD95, RVE, precision, recall.

Surface distances come from MONAI (``monai.metrics``), computed on the voxel grid with the voxel spacing, so an
anisotropic CT (e.g. 0.8 x 0.8 x 3 mm) is measured in millimetres along every axis. The definitions and the
conventions for empty masks are in ``docs/evaluation.md``.
"""
import math
import warnings
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

METRICS = ('DSC', 'ASSD', 'HD95', 'RVE', 'precision', 'recall')
UNITS = {'DSC': '', 'ASSD': 'mm', 'HD95': 'mm', 'RVE': '%', 'precision': '', 'recall': ''}
NAN = float('nan')

LabelOrRegion = Union[int, Tuple[int, ...]]


def _ratio(numerator: float, denominator: float) -> float:
    return NAN if denominator == 0 else float(numerator / denominator)


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """DSC, RVE, precision, recall and the voxel counts of two binary masks, with the empty-mask conventions."""
    n_pred, n_ref = int(prediction.sum()), int(reference.sum())
    tp = int(np.logical_and(prediction, reference).sum())
    if n_pred == 0 and n_ref == 0:  # a correct "no structure here": the best value of every metric
        scores = {'DSC': 1.0, 'RVE': 0.0, 'precision': 1.0, 'recall': 1.0}
    else:
        scores = {'DSC': _ratio(2 * tp, n_pred + n_ref), 'RVE': _ratio(100 * abs(n_pred - n_ref), n_ref),
                  'precision': _ratio(tp, n_pred), 'recall': _ratio(tp, n_ref)}
    return {**scores, 'reference_voxels': n_ref, 'prediction_voxels': n_pred, 'true_positive_voxels': tp}


def binary_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """All metrics of one binary prediction mask against one binary reference mask.

    ``spacing`` is in the arrays' axis order (for a SimpleITK array: the image's spacing reversed). Also returns
    the voxel counts and volumes (mm^3) the metrics were computed from, so that empty cases can be told apart.
    """
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape or len(spacing) != reference.ndim:
        raise ValueError(f"prediction {prediction.shape}, reference {reference.shape} and spacing {tuple(spacing)} "
                         f"do not match")
    result = overlap_metrics(prediction, reference)
    voxel_volume = float(np.prod(spacing))
    result.update(reference_volume_mm3=result['reference_voxels'] * voxel_volume,
                  prediction_volume_mm3=result['prediction_voxels'] * voxel_volume)
    if not prediction.any() and not reference.any():
        result.update(ASSD=0.0, HD95=0.0)
    elif not prediction.any() or not reference.any():  # no surface to measure to: an infinite distance
        result.update(ASSD=NAN, HD95=NAN)
    else:
        # MONAI wants one-hot [batch, class, *spatial]; include_background keeps our single channel
        y_pred, y = prediction[None, None], reference[None, None]
        spacing = [float(s) for s in spacing]
        with warnings.catch_warnings():  # MONAI 1.6 passes its own deprecated argument internally
            warnings.filterwarnings('ignore', message='.*always_return_as_numpy', category=FutureWarning)
            result['HD95'] = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                                              spacing=spacing)[0, 0])
            result['ASSD'] = float(compute_average_surface_distance(y_pred, y, include_background=True,
                                                                    symmetric=True, spacing=spacing)[0, 0])
    return {k: result[k] for k in (*METRICS, 'reference_voxels', 'prediction_voxels', 'true_positive_voxels',
                                   'reference_volume_mm3', 'prediction_volume_mm3')}


def dice(prediction: np.ndarray, reference: np.ndarray, label: LabelOrRegion) -> float:
    """DSC of one label or region of two label maps, without the surface distances (1.0 when both are empty)."""
    return overlap_metrics(region_or_label_to_mask(prediction, label), region_or_label_to_mask(reference, label))['DSC']


def label_metrics(prediction: np.ndarray, reference: np.ndarray, label: LabelOrRegion, spacing: Sequence[float],
                  ignore_label: Union[int, None] = None) -> Dict[str, float]:
    """``binary_metrics`` of one label (an int) or one nnU-Net region (a tuple of labels) of two label maps.

    Voxels the reference marks with ``ignore_label`` are left out of both masks, as nnU-Net's own evaluation does.
    """
    p = region_or_label_to_mask(prediction, label)
    r = region_or_label_to_mask(reference, label)
    if ignore_label is not None:
        keep = reference != ignore_label
        p, r = p & keep, r & keep
    return binary_metrics(p, r, spacing)


def nan_summary(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample std, median, min, max over the values that are not NaN, and how many counted.

    NaN marks an undefined value (see the empty-mask conventions); skipping it keeps one such case from turning a
    whole mean into NaN, and ``n`` says how many cases the mean stands for. The std of a single value is NaN.
    """
    finite = np.asarray([v for v in values if not math.isnan(v)], float)
    std = float(finite.std(ddof=1)) if finite.size > 1 else NAN
    stats = ({'mean': float(finite.mean()), 'std': std, 'median': float(np.median(finite)),
              'min': float(finite.min()), 'max': float(finite.max())} if finite.size
             else {k: NAN for k in ('mean', 'std', 'median', 'min', 'max')})
    return {**stats, 'n': int(finite.size), 'n_nan': len(values) - int(finite.size)}
