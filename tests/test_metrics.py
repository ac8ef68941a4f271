"""Every metric against values computed by hand on small arrays, anisotropic spacing and empty masks included.

Arrays are indexed (z, y, x) as SimpleITK returns them, and the spacing is given in the same order.
"""
import math

import numpy as np
import pytest

from nnunet_ras.evaluation.metrics import METRICS, binary_metrics, dice, label_metrics, nan_summary

ANISOTROPIC = (3.0, 0.8, 0.8)  # z, y, x in mm


def _approx(value: float):
    return pytest.approx(value, abs=1e-4)  # MONAI computes distances in float32


def test_overlap_metrics_of_two_shifted_boxes():
    reference, prediction = np.zeros((4, 6, 6), bool), np.zeros((4, 6, 6), bool)
    reference[1:3, 1:3, 1:3] = True  # 8 voxels
    prediction[1:3, 1:3, 2:5] = True  # 12 voxels, 4 of them in the reference
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    assert m['DSC'] == pytest.approx(2 * 4 / (8 + 12))
    assert m['precision'] == pytest.approx(4 / 12) and m['recall'] == pytest.approx(4 / 8)
    assert m['RVE'] == pytest.approx(abs(12 - 8) / 8 * 100)
    assert (m['reference_voxels'], m['prediction_voxels'], m['true_positive_voxels']) == (8, 12, 4)
    assert m['reference_volume_mm3'] == pytest.approx(8 * 3.0 * 0.8 * 0.8)
    assert m['prediction_volume_mm3'] == pytest.approx(12 * 3.0 * 0.8 * 0.8)


def test_single_voxels_are_measured_in_mm_along_each_axis():
    reference, prediction = np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    reference[0, 0, 0] = True
    prediction[1, 2, 0] = True  # one slice (3 mm) and two rows (1.6 mm) away
    expected = math.sqrt(3.0 ** 2 + 1.6 ** 2)  # 3.4 mm
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    assert m['HD95'] == _approx(expected) and m['ASSD'] == _approx(expected)
    swapped = binary_metrics(prediction, reference, (0.8, 0.8, 3.0))  # spacing in the wrong order differs
    assert swapped['HD95'] == _approx(math.sqrt(0.8 ** 2 + 1.6 ** 2))


def test_parallel_plates_two_slices_apart():
    """Every voxel of a one-voxel-thick plate is surface; each is 2 slices = 6 mm from the other plate."""
    reference, prediction = np.zeros((6, 5, 5), bool), np.zeros((6, 5, 5), bool)
    reference[1], prediction[3] = True, True
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    assert m['HD95'] == _approx(6.0) and m['ASSD'] == _approx(6.0)
    assert m['DSC'] == 0 and m['RVE'] == 0 and m['precision'] == 0 and m['recall'] == 0


def test_hd95_is_the_larger_directed_95th_percentile_and_assd_pools_both_directions():
    """A 20-pixel line against the same line with its last pixel moved 10 rows away (2D, 2 x 0.5 mm pixels).

    prediction -> reference: 19 distances 0 and one 10 rows x 2 mm = 20 mm; reference -> prediction: 19 zeros and
    one 0.5 mm (the moved pixel's old place is one column from the line's new end). The 95th percentile of 20
    sorted values, linearly interpolated, lies at rank 0.95 * 19 = 18.05: 0 + 0.05 * 20 = 1.0 mm and
    0.05 * 0.5 = 0.025 mm; HD95 is the larger, 1.0 mm (the full Hausdorff distance would be 20 mm). ASSD is the
    mean of all 40 distances: (20 + 0.5) / 40.
    """
    reference, prediction = np.zeros((12, 25), bool), np.zeros((12, 25), bool)
    reference[0, :20] = True
    prediction[0, :19] = True
    prediction[10, 19] = True
    m = binary_metrics(prediction, reference, (2.0, 0.5))
    assert m['HD95'] == _approx(1.0)
    assert m['ASSD'] == _approx(20.5 / 40)
    assert m['DSC'] == pytest.approx(2 * 19 / 40) and m['RVE'] == 0


def test_surface_distances_use_the_boundary_not_the_interior():
    """A 5x5x5 cube against itself grown by one voxel in +x: only the +x faces move, by 0.8 mm."""
    reference, prediction = np.zeros((7, 7, 8), bool), np.zeros((7, 7, 8), bool)
    reference[1:6, 1:6, 1:6] = True
    prediction[1:6, 1:6, 1:7] = True
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    # surface voxels: reference 5^3 - 3^3 = 98, prediction 5*5*6 - 3*3*4 = 114. Reference voxels at x = 5 that
    # are not on the prediction's surface (the 3x3 interior of that face) lie 0.8 mm from it; all other reference
    # surface voxels are prediction surface voxels too. Prediction voxels at x = 6 (25) are 0.8 mm from the
    # reference; every other prediction surface voxel is a reference surface voxel (distance 0).
    assert m['ASSD'] == _approx((9 * 0.8 + 25 * 0.8) / (98 + 114))
    assert m['HD95'] == _approx(0.8)
    assert m['RVE'] == pytest.approx(25 / 125 * 100) and m['recall'] == 1


def test_both_empty_is_a_correct_negative():
    empty = np.zeros((3, 3, 3), bool)
    m = binary_metrics(empty, empty, ANISOTROPIC)
    assert {k: m[k] for k in METRICS} == {'DSC': 1.0, 'ASSD': 0.0, 'HD95': 0.0, 'RVE': 0.0, 'precision': 1.0,
                                          'recall': 1.0}


def test_empty_reference_with_a_prediction():
    reference, prediction = np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)
    prediction[1, 1, 1] = True
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    assert m['DSC'] == 0 and m['precision'] == 0
    assert all(math.isnan(m[k]) for k in ('recall', 'RVE', 'ASSD', 'HD95'))


def test_empty_prediction_with_a_reference():
    reference, prediction = np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)
    reference[1, 1, 1] = True
    m = binary_metrics(prediction, reference, ANISOTROPIC)
    assert m['DSC'] == 0 and m['recall'] == 0 and m['RVE'] == 100
    assert all(math.isnan(m[k]) for k in ('precision', 'ASSD', 'HD95'))


def test_labels_regions_and_ignore_label_of_label_maps():
    reference = np.array([[[0, 1, 1, 2, 2, 3]]])
    prediction = np.array([[[1, 1, 2, 2, 0, 1]]])
    spacing = (1.0, 1.0, 1.0)
    assert label_metrics(prediction, reference, 1, spacing)['DSC'] == pytest.approx(2 * 1 / (3 + 2))
    assert label_metrics(prediction, reference, (1, 2), spacing)['DSC'] == pytest.approx(2 * 3 / (5 + 4))
    ignored = label_metrics(prediction, reference, 1, spacing, ignore_label=3)  # last voxel left out
    assert ignored['DSC'] == pytest.approx(2 * 1 / (2 + 2)) and ignored['prediction_voxels'] == 2
    assert dice(prediction, reference, 2) == pytest.approx(2 * 1 / (2 + 2))
    assert dice(prediction, reference, 5) == 1.0


def test_nan_summary_skips_undefined_values_and_counts():
    s = nan_summary([1.0, float('nan'), 3.0])
    assert s == {'mean': 2.0, 'std': pytest.approx(math.sqrt(2)), 'median': 2.0, 'min': 1.0, 'max': 3.0, 'n': 2,
                 'n_nan': 1}
    assert math.isnan(nan_summary([float('nan')])['mean']) and nan_summary([float('nan')])['n'] == 0
    assert math.isnan(nan_summary([4.0])['std'])


def test_mismatched_shapes_or_spacing_are_refused():
    with pytest.raises(ValueError):
        binary_metrics(np.zeros((2, 2), bool), np.zeros((2, 3), bool), (1.0, 1.0))
    with pytest.raises(ValueError):
        binary_metrics(np.zeros((2, 2), bool), np.zeros((2, 2), bool), (1.0, 1.0, 1.0))
