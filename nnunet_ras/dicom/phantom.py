"""Synthetic patients as DICOM (a CT series and an RTSTRUCT of liver and GTV), to try the DICOM workflow end to end.

The CT slices are real CT Image Storage instances (pydicom) with fresh UIDs, written under random file names so
that nothing can rely on file order. ROI spellings vary between patients ("GTV", "gtv_1", ...) the way they do
between planners, which ``dicom-to-dataset`` has to map to one label.
"""
import datetime
import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nnunet_ras._io import write_atomically
from nnunet_ras.dicom.rtstruct import Roi, write_rtstruct
from nnunet_ras.dicom.series import CT_IMAGE_STORAGE, read_ct_series
from nnunet_ras.phantom import LABELS, PhantomGeometry, make_case

LIVER_SPELLINGS = ('Liver', 'LIVER', 'liver')
GTV_SPELLINGS = ('GTV', 'gtv_1', 'GTV_liver')


def write_ct_series(image: sitk.Image, folder: str, patient_id: str, patient_name: str = 'PHANTOM^NNUNET_RAS',
                    seed: int = 0) -> str:
    """Writes ``image`` (HU, any direction) as a CT series, one file per slice; returns the SeriesInstanceUID."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    hu = sitk.GetArrayFromImage(image).astype(np.int32)
    stored = np.clip(hu + 1024, 0, 65535).astype(np.uint16)  # RescaleIntercept -1024
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    now = datetime.datetime.now()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = 'ISO_IR 100'
        ds.ImageType = ['ORIGINAL', 'PRIMARY', 'AXIAL']
        ds.Modality, ds.Manufacturer = 'CT', 'nnunet_ras phantom'
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, '', 'O'
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = now.strftime('%Y%m%d')
        ds.StudyTime = ds.SeriesTime = now.strftime('%H%M%S')
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = '1', '', ''
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, 1
        ds.BodyPartExamined = 'ABDOMEN'
        ds.SeriesDescription = 'phantom CT'
        ds.PositionReferenceIndicator = ''
        ds.PatientPosition = 'HFS'
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.r_[direction[:, 0], direction[:, 1]]]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.SliceLocation = f"{float(np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) @ direction[:, 2]):.4f}"
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.KVP, ds.GantryDetectorTilt = '120', '0'
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = '-1024', '1', 'HU'
        ds.PixelData = stored[k].tobytes()
        write_atomically(os.path.join(folder, f'CT_{rng.integers(1 << 40):012x}.dcm'),
                         lambda temporary: ds.save_as(temporary, enforce_file_format=True))
    return series_uid


def write_phantom_patients(folder: str, num_patients: int, seed: int = 0, with_rtstruct: bool = True,
                           geometry: PhantomGeometry = PhantomGeometry(),
                           direction: Optional[Sequence[float]] = None) -> list:
    """Writes ``folder/patient_XXX/`` (CT series, and an RTSTRUCT with liver and GTV); returns the patient folders."""
    rng = np.random.default_rng(seed)
    folders = []
    for i in range(num_patients):
        patient = os.path.join(folder, f'patient_{seed:02d}{i:03d}')
        hu, label = make_case(rng, geometry)
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing(tuple(float(s) for s in geometry.spacing_zyx[::-1]))
        extent_xyz = np.array(geometry.shape_zyx[::-1]) * np.array(geometry.spacing_zyx[::-1])
        image.SetOrigin((-extent_xyz[0] / 2, -extent_xyz[1] / 2, -extent_xyz[2]))
        if direction is not None:
            image.SetDirection(tuple(direction))
        write_ct_series(image, os.path.join(patient, 'CT'), patient_id=f'NNRAS{seed:02d}{i:03d}', seed=seed + i)
        if with_rtstruct:
            series = read_ct_series(os.path.join(patient, 'CT'))
            rois = [Roi(LIVER_SPELLINGS[i % len(LIVER_SPELLINGS)], label >= LABELS['liver']),  # the liver holds the GTV
                    Roi(GTV_SPELLINGS[i % len(GTV_SPELLINGS)], label == LABELS['tumour'], 'GTV')]
            write_rtstruct(series, rois, os.path.join(patient, 'RS_plan.dcm'), label='planning')
        folders.append(patient)
    return folders

