"""``nnunet-ras dicom-to-dataset``: DICOM patients -> nnU-Net raw data set, with per-patient reports and skips."""
import glob
import json
import os

import numpy as np
import SimpleITK as sitk

from nnunet_ras.cli import main
from nnunet_ras.dataset_checks import check_raw_dataset
from nnunet_ras.dicom.phantom import write_ct_series, write_phantom_patients
from nnunet_ras.dicom.rtstruct import Roi, read_rtstruct, write_rtstruct
from nnunet_ras.dicom.series import read_ct_series
from nnunet_ras.phantom import PhantomGeometry

GEOMETRY = PhantomGeometry()  # the size the phantom's liver and tumours are made for
LABELS = ['liver=Liver,LIVER', 'gtv=GTV,gtv_1']


def _patients(folder) -> list:
    """Six phantom patients; 0 and 1 convert, the others each carry one problem."""
    patients = write_phantom_patients(str(folder), 6, seed=0, geometry=GEOMETRY)
    # 0: a second CT series in the folder; the RTSTRUCT says which one was contoured
    other = sitk.GetImageFromArray(np.zeros((4, 96, 96), dtype=np.int16))
    write_ct_series(other, os.path.join(patients[0], 'scout'), patient_id='NNRAS00000')
    # 2: its GTV is spelled 'GTV_liver', which the mapping does not know (missing)
    # 3: two ROIs that both mean the GTV (ambiguous)
    series = read_ct_series(os.path.join(patients[3], 'CT'))
    rois = read_rtstruct(os.path.join(patients[3], 'RS_plan.dcm'), series).rois
    write_rtstruct(series, [Roi(r.name, r.mask, r.interpreted_type or 'ORGAN') for r in rois] +
                   [Roi('gtv_1', rois[1].mask, 'GTV')], os.path.join(patients[3], 'RS_plan.dcm'))
    # 4: no RTSTRUCT
    os.remove(os.path.join(patients[4], 'RS_plan.dcm'))
    # 5: a slice missing from the CT
    os.remove(read_ct_series(os.path.join(patients[5], 'CT')).files[5])
    return patients


def test_dicom_patients_become_an_nnunet_dataset(tmp_path, capsys):
    patients = _patients(tmp_path / 'dicom')
    raw = tmp_path / 'raw'
    assert main(['dicom-to-dataset', '-i', str(tmp_path / 'dicom'), '-d', '601', '-name', 'DicomPhantom',
                 '-l', *LABELS, '-o', str(raw)]) == 0
    printed = capsys.readouterr().out
    folder = raw / 'Dataset601_DicomPhantom'
    reports = {r['patient']: r for r in json.load(open(folder / 'dicom_conversion_report.json'))}
    converted = sorted(p for p, r in reports.items() if r['status'] == 'converted')
    assert converted == [os.path.basename(p) for p in patients[:2]]
    names = [os.path.basename(p) for p in patients]
    assert reports[names[1]]['found'] == {'liver': 'LIVER', 'gtv': 'gtv_1'}
    assert reports[names[2]]['missing'] == ['gtv'] and reports[names[2]]['unmapped'] == ['GTV_liver']
    assert reports[names[3]]['ambiguous'] == {'gtv': ['GTV', 'gtv_1']}
    assert 'no RTSTRUCT' in reports[names[4]]['reason']
    assert 'missing slice' in reports[names[5]]['reason']
    for name in names:
        assert name in printed
    assert '2 of 6 patient(s) converted' in printed

    dataset = json.load(open(folder / 'dataset.json'))
    assert dataset['labels'] == {'background': 0, 'liver': 1, 'gtv': 2} and dataset['numTraining'] == 2
    assert check_raw_dataset(str(folder)) == converted  # nnU-Net can plan it
    assert not glob.glob(str(folder / '**' / '*.part*'), recursive=True)
    for patient in patients[:2]:
        case = os.path.basename(patient)
        series = read_ct_series(os.path.join(patient, 'CT'))
        image = sitk.ReadImage(str(folder / 'imagesTr' / f'{case}_0000.nii.gz'))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / 'labelsTr' / f'{case}.nii.gz')))
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(series.image))
        assert np.allclose(image.GetOrigin(), series.image.GetOrigin())
        structures = read_rtstruct(os.path.join(patient, 'RS_plan.dcm'), series)
        liver, gtv = (structures.rois[i].mask for i in (0, 1))
        assert np.array_equal(label == 2, gtv) and np.array_equal(label == 1, liver & ~gtv)
        assert reports[case]['volumes_cc']['gtv'] > 0


def test_no_convertible_patient_is_an_error(tmp_path, capsys):
    patients = write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=0, geometry=GEOMETRY, with_rtstruct=False)
    assert main(['dicom-to-dataset', '-i', str(tmp_path / 'dicom'), '-d', '602', '-name', 'Empty',
                 '-l', *LABELS, '-o', str(tmp_path / 'raw')]) == 2
    error = capsys.readouterr().err
    assert 'no patient could be converted' in error and os.path.basename(patients[0]) in error
