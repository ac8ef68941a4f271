"""GTV -> CTV -> PTV margins: millimetres in physical space on anisotropic grids."""
import numpy as np
import pytest

from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.margins import MarginSpec, apply_margins, expand, parse_margin, volume_cc

SPACING_ZYX = (3.0, 0.8, 0.8)  # planning-CT-like: thick slices, fine in-plane
SHAPE = (40, 100, 100)
CENTRE_ZYX = np.array([20, 50, 50]) * SPACING_ZYX


def _distance_from_centre() -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING_ZYX)], indexing='ij')
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, CENTRE_ZYX)))


@pytest.mark.parametrize('margin', [3.0, 5.0, 7.0, 10.0])
def test_isotropic_margin_moves_the_surface_by_the_margin(margin):
    """A ball of radius r grown by m is the ball of radius r + m, to within one voxel (3 mm across slices)."""
    radius, tolerance = 15.0, max(SPACING_ZYX)
    distance = _distance_from_centre()
    grown = expand(distance <= radius, SPACING_ZYX, (margin,) * 3)
    assert grown[distance <= radius + margin - tolerance].all()
    assert not grown[distance > radius + margin + tolerance].any()
    # and not the voxel-count dilation, which would grow 5 mm into 2 slices (6 mm) and 6 pixels (4.8 mm)
    surface = distance[grown].max()
    assert abs(surface - (radius + margin)) <= tolerance


def test_per_axis_margin_grows_each_axis_by_its_own_margin():
    box = np.zeros(SHAPE, dtype=bool)
    box[15:25, 40:60, 30:70] = True
    margin_xyz = (4.0, 8.0, 9.0)
    grown = expand(box, SPACING_ZYX, margin_xyz)
    for axis, margin in zip((2, 1, 0), margin_xyz):  # x, y, z
        other = tuple(a for a in range(3) if a != axis)
        before, after = (np.flatnonzero(m.any(axis=other)) for m in (box, grown))
        grown_mm = (before[0] - after[0]) * SPACING_ZYX[axis], (after[-1] - before[-1]) * SPACING_ZYX[axis]
        assert all(margin - SPACING_ZYX[axis] < g <= margin for g in grown_mm), (axis, grown_mm)
    assert np.array_equal(expand(box, SPACING_ZYX, (0.0, 0.0, 6.0)).any(axis=0), box.any(axis=0))  # z only


def test_margin_confined_to_a_structure_keeps_the_source():
    distance = _distance_from_centre()
    gtv = distance <= 10
    liver = np.zeros(SHAPE, dtype=bool)
    liver[:, :, :52] = True  # the GTV sticks out of the liver on one side
    made = apply_margins({'GTV': gtv, 'Liver': liver}, SPACING_ZYX,
                         [parse_margin('CTV=GTV+10@Liver'), parse_margin('PTV=CTV+5,5,7')])
    ctv, ptv = made['CTV'], made['PTV']
    assert (ctv >= gtv).all() and (ptv >= ctv).all()  # nested
    assert not (ctv & ~liver & ~gtv).any()  # the margin stays in the liver, the GTV is kept whole
    volumes = [volume_cc(m, SPACING_ZYX) for m in (gtv, ctv, ptv)]
    assert volumes[0] < volumes[1] < volumes[2]
    assert volumes[0] == pytest.approx(4 / 3 * np.pi * 1.0 ** 3, rel=0.1)  # a 10 mm ball is about 4.19 cc


def test_margin_specs_are_parsed_and_checked():
    assert parse_margin('CTV=GTV+5') == MarginSpec('CTV', 'GTV', (5.0, 5.0, 5.0))
    assert parse_margin(' PTV = CTV + 5,5,7 @ Body') == MarginSpec('PTV', 'CTV', (5.0, 5.0, 7.0), 'Body')
    for bad in ('CTV=GTV', 'CTV=GTV+-5', 'CTV=GTV+5,5', 'CTV+5'):
        with pytest.raises(DicomError, match='margin'):
            parse_margin(bad)
    with pytest.raises(DicomError, match="no structure named 'GTV'"):
        apply_margins({'Liver': np.ones((2, 2, 2), bool)}, SPACING_ZYX, [parse_margin('CTV=GTV+5')])
