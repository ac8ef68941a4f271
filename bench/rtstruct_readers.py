"""Do independent readers see the RTSTRUCT / SEG we write the way we meant it?

For each case: write the structures with ``nnunet_ras.dicom`` (the writers ``nnunet-ras predict`` uses), then
- ``dciodvfy`` (dicom3tools, the reference validator): errors and warnings of the RTSTRUCT and of the SEG,
- contours with fewer than 3 points or zero area,
- ``plastimatch convert``: its rasterisation of every ROI against the mask it was written from (Dice), and our
  own reader's (``read_rtstruct``) for comparison.

Cases: the 20-slice real abdominal CT of ``../shared/data/ct_abdomen_example`` (TotalSegmentator liver, a
sphere 'GTV' in it, CTV = GTV + 10 mm within the liver, PTV = CTV + 5 mm), a fragmented liver (holes, islands,
one-voxel specks) on the same CT, and an oblique (20 degree) synthetic series with a ball, a ring and fragments.
The real CT is de-identified down to its UIDs; it is copied with patient, study, series and instance UIDs filled
in and its pixels decompressed, as a planning system would hold it. With ``--model FOLDER`` also what that model
predicts on the CT (``nnunet-ras predict`` with the CTV/PTV margins above).

    .venv/bin/python bench/rtstruct_readers.py [--model demo_run/nnUNet_results/Dataset501_.../...] [--out DIR]

Prints a markdown table; writes nothing outside ``--out`` (default: a temporary folder).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
sys.path.insert(0, ROOT)

from nnunet_ras.dicom.margins import apply_margins, parse_margin, volume_cc  # noqa: E402
from nnunet_ras.dicom.phantom import write_ct_series  # noqa: E402
from nnunet_ras.dicom.readers import dciodvfy, plastimatch_masks  # noqa: E402
from nnunet_ras.dicom.rtstruct import Roi, read_rtstruct, write_rtstruct  # noqa: E402
from nnunet_ras.dicom.seg import write_dicom_seg  # noqa: E402
from nnunet_ras.dicom.series import CtSeries, label_on_series_grid, read_ct_series  # noqa: E402
from nnunet_ras.evaluation.metrics import dice  # noqa: E402

LIVER = 5  # TotalSegmentator class in example_seg_dicom.nii.gz
MARGINS = ('CTV=GTV+10@Liver', 'PTV=CTV+5')


def reidentified_copy(source: str, target: str) -> str:
    """The CT series in ``source`` with the UIDs and patient identity a clinical export has, pixels decompressed."""
    os.makedirs(target, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in sorted(glob.glob(os.path.join(source, '*'))):
        ds = pydicom.dcmread(path)
        ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = ds.get('FrameOfReferenceUID') or frame
        ds.PatientName, ds.PatientID, ds.StudyID = 'ABDOMEN^EXAMPLE', 'CT-ABDOMEN-EXAMPLE', '1'
        ds.save_as(os.path.join(target, f'{ds.SOPInstanceUID}.dcm'), enforce_file_format=True)
    return target


def ball(shape_zyx, spacing_zyx, centre_zyx, radius_mm) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape_zyx, centre_zyx, spacing_zyx)],
                        indexing='ij')
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def fragmented(mask: np.ndarray, seed: int = 0, holes: int = 40, islands: int = 30, specks: int = 200) -> np.ndarray:
    """What a model predicts on a hard case: holes punched into ``mask``, islands of a few voxels next to it and
    single-voxel specks anywhere, including inside the holes."""
    rng = np.random.default_rng(seed)
    out = mask.copy()
    inside, everywhere = np.argwhere(mask), np.argwhere(np.ones_like(mask))
    z, y, x = np.indices(mask.shape, sparse=True)
    for k, (count, radius) in enumerate(((holes, (1.5, 5)), (islands, (1, 3)))):
        for centre in (inside if k == 0 else everywhere)[rng.integers(0, len(inside if k == 0 else everywhere),
                                                                      count)]:
            r = rng.uniform(*radius)
            blob = (z - centre[0]) ** 2 + ((y - centre[1]) / r) ** 2 + ((x - centre[2]) / r) ** 2 <= 1.0
            out[blob] = (k == 1)
    for centre in everywhere[rng.integers(0, len(everywhere), specks)]:
        out[tuple(centre)] = True
    return out


def target_volumes(series: CtSeries, liver: np.ndarray, centre_zyx) -> Dict[str, np.ndarray]:
    spacing_zyx = series.image.GetSpacing()[::-1]
    gtv = ball(liver.shape, spacing_zyx, centre_zyx, 15.0) & liver
    structures = {'Liver': liver, 'GTV': gtv}
    structures.update(apply_margins(structures, spacing_zyx, [parse_margin(m) for m in MARGINS]))
    return structures


def degenerate_contours(path: str) -> Tuple[int, int]:
    """(contours with < 3 points or zero area, all contours) of an RTSTRUCT."""
    bad = total = 0
    for roi in pydicom.dcmread(path).ROIContourSequence:
        for contour in roi.get('ContourSequence', []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            total += 1
            if len(points) < 3:
                bad += 1
                continue
            centred = points - points.mean(axis=0)
            normal = np.linalg.svd(centred)[2][-1]  # area of the planar polygon via its normal
            area = 0.5 * abs(np.dot(normal, np.cross(centred, np.roll(centred, -1, axis=0)).sum(axis=0)))
            bad += area <= 1e-6
    return bad, total


def check_case(name: str, series: CtSeries, structures: Dict[str, np.ndarray], out: str) -> List[dict]:
    """Writes RTSTRUCT and SEG for ``structures`` on ``series`` and reads them back with every reader."""
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    rois = [Roi(roi, mask, roi[:3] if roi[:3] in ('GTV', 'CTV', 'PTV') else 'ORGAN') for roi, mask in
            structures.items()]
    rtstruct, seg = os.path.join(folder, 'RTSTRUCT.dcm'), os.path.join(folder, 'SEG.dcm')
    start = time.time()
    write_rtstruct(series, rois, rtstruct)
    seconds = time.time() - start
    write_dicom_seg(series, rois, seg)
    return summarise(name, series, structures, rtstruct, seg, seconds)


def summarise(name, series, structures, rtstruct, seg, seconds) -> List[dict]:
    rs_check, seg_check = dciodvfy(rtstruct), dciodvfy(seg)
    bad, total = degenerate_contours(rtstruct)
    theirs = {roi: label_on_series_grid(image, series) > 0
              for roi, image in plastimatch_masks(rtstruct, series.folder).items()}
    ours = read_rtstruct(rtstruct, series)
    spacing_zyx = series.image.GetSpacing()[::-1]
    rows = []
    for roi, mask in structures.items():
        rows.append({'case': name, 'roi': roi, 'cc': volume_cc(mask, spacing_zyx),
                     'plastimatch': dice(theirs[roi], mask, True) if roi in theirs else float('nan'),
                     'ours': dice(ours.mask(roi), mask, True), 'rs_errors': len(rs_check.errors),
                     'rs_warnings': len(rs_check.warnings), 'seg_errors': len(seg_check.errors),
                     'seg_warnings': len(seg_check.warnings), 'degenerate': bad, 'contours': total,
                     'write_s': seconds, 'first_errors': rs_check.errors[:3] + seg_check.errors[:3]})
    return rows


def oblique_series(folder: str) -> CtSeries:
    angle = np.radians(20)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    image = sitk.GetImageFromArray(np.full((24, 96, 96), -100, dtype=np.int16))
    image.SetSpacing((1.2, 1.2, 2.5))
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin((-50.0, -60.0, 20.0))
    write_ct_series(image, folder, patient_id='OBLIQUE')
    return read_ct_series(folder)


def oblique_structures(series: CtSeries) -> Dict[str, np.ndarray]:
    shape, spacing = tuple(reversed(series.image.GetSize())), series.image.GetSpacing()[::-1]
    outer = ball(shape, spacing, (12, 48, 40), 30.0)
    return {'Ball': ball(shape, spacing, (12, 40, 60), 14.0),
            'Ring': outer & ~ball(shape, spacing, (12, 48, 40), 15.0),
            'Fragments': fragmented(outer, seed=1, holes=15, islands=10, specks=60)}


def predicted_case(model: str, series: CtSeries, out: str) -> List[dict]:
    """The model's prediction on the CT through ``nnunet-ras predict`` (its own RTSTRUCT and SEG are checked by the
    tests); here its masks are written again so that the writer's time is measured alone."""
    target = os.path.join(out, 'predicted')
    cmd = [os.path.join(os.path.dirname(sys.executable), 'nnunet-ras'), 'predict', '-i', series.folder, '-o', target,
           '-m', model, '-device', 'cpu', '--disable_tta', '--roi_names', 'liver=Liver', 'tumour=GTV',
           '--margin', *MARGINS]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    print(f"nnunet-ras predict on the 20-slice CT: {time.time() - start:.0f} s", file=sys.stderr)
    case = os.path.basename(os.path.normpath(series.folder))
    labels = label_on_series_grid(sitk.ReadImage(os.path.join(target, f'{case}.nii.gz')), series)
    masks = {'Liver': labels == 1, 'GTV': labels == 2}
    for name in ('CTV', 'PTV'):
        masks[name] = label_on_series_grid(sitk.ReadImage(os.path.join(target, f'{case}_{name}.nii.gz')),
                                           series) > 0
    return check_case('predicted (demo model)', series, masks, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='a trained model folder (e.g. the demo\'s) to add its prediction as a case')
    parser.add_argument('--out', help='keep the written files here (default: a temporary folder)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.abspath(args.out or tmp)
        ct = reidentified_copy(os.path.join(SHARED_DATA, 'ct_abdomen_example', 'example_ct_dicom'),
                               os.path.join(out, 'ct_abdomen'))
        series = read_ct_series(ct)
        labels = label_on_series_grid(
            sitk.ReadImage(os.path.join(SHARED_DATA, 'ct_abdomen_example', 'example_seg_dicom.nii.gz')), series)
        liver = labels == LIVER
        centre = np.argwhere(liver).mean(axis=0)
        rows = check_case('real CT, liver + targets', series, target_volumes(series, liver, centre), out)
        rows += check_case('real CT, fragmented liver', series, {'LiverFragmented': fragmented(liver)}, out)
        oblique = oblique_series(os.path.join(out, 'oblique'))
        rows += check_case('oblique 20 deg synthetic', oblique, oblique_structures(oblique), out)
        if args.model:
            rows += predicted_case(args.model, series, out)
    print('| case | ROI | cc | Dice plastimatch | Dice read_rtstruct | RTSTRUCT errors / warnings (dciodvfy) | '
          'SEG errors / warnings | contours < 3 points or zero area | write s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['case']} | {r['roi']} | {r['cc']:.1f} | {r['plastimatch']:.4f} | {r['ours']:.4f} | "
              f"{r['rs_errors']} / {r['rs_warnings']} | {r['seg_errors']} / {r['seg_warnings']} | "
              f"{r['degenerate']} of {r['contours']} | {r['write_s']:.1f} |")
    for error in sorted({e for r in rows for e in r['first_errors']}):
        print(f"    {error}")


if __name__ == '__main__':
    main()
