"""DICOM SEG in and out with highdicom: the raster twin of the RTSTRUCT, for viewers and archives that prefer it.

A SEG keeps the voxels exactly (no contour conversion), so it is the lossless record of what the model predicted.
"""
import copy
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import nnunet_ras
from nnunet_ras._io import write_atomically
from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.rtstruct import Roi, check_identity
from nnunet_ras.dicom.series import CtSeries, label_on_series_grid

TARGET_TYPES = ('GTV', 'CTV', 'PTV')


def _segment_description(number: int, roi: Roi):
    """Target volumes are coded as morphologically abnormal structures (tumour); everything else as organs."""
    import highdicom as hd
    is_target = roi.interpreted_type in TARGET_TYPES
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=roi.name[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if is_target else
        codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Neoplasm if is_target else codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name='nnunet_ras', version=nnunet_ras.__version__, family=codes.cid7162.ArtificialIntelligence))


def write_dicom_seg(series: CtSeries, rois: Sequence[Roi], path: str, allow_missing_identity: bool = False) -> List[str]:
    """Writes a binary DICOM SEG with one segment per ROI, referencing every slice of ``series``; returns warnings.

    Empty ROIs are left out (a SEG segment must have pixels); patient and study are copied from the CT by highdicom.
    """
    import highdicom as hd
    warnings = check_identity(series, allow_missing_identity)
    shape = tuple(reversed(series.image.GetSize()))
    kept = [roi for roi in rois if roi.mask.any()]
    warnings += [f"ROI {roi.name!r} is empty and left out of the SEG" for roi in rois if not roi.mask.any()]
    if not kept:
        raise DicomError(f"{path}: every ROI is empty; a DICOM SEG needs at least one non-empty segment")
    for roi in kept:
        if roi.mask.shape != shape:
            raise DicomError(f"ROI {roi.name!r}: mask of shape {roi.mask.shape}, the series is {shape}")
    sources = []
    for header in series.headers:  # an empty SpecificCharacterSet is legal DICOM (default repertoire), not for highdicom
        header = copy.copy(header)
        if 'SpecificCharacterSet' in header and not header.SpecificCharacterSet:
            del header.SpecificCharacterSet
        sources.append(header)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.stack([roi.mask.astype(np.uint8) for roi in kept], axis=-1),  # (slices, rows, cols, segs)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(i + 1, roi) for i, roi in enumerate(kept)],
            series_instance_uid=generate_uid(), series_number=int(series.first.get('SeriesNumber') or 0) + 900,
            sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer='nnunet_ras', manufacturer_model_name='nnunet_ras',
            software_versions=nnunet_ras.__version__, device_serial_number='none',
            series_description='nnunet_ras segmentation')
    except (ValueError, AttributeError, TypeError) as e:
        raise DicomError(f"{path}: highdicom cannot build a SEG on {series.describe()}: {e}") from None
    write_atomically(path, seg.save_as)
    return warnings


def _channel_as_image(array_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A highdicom volume channel (slice, row, column) with its affine, as a SimpleITK image (x = column)."""
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    axes = affine[:3, [2, 1, 0]]  # columns of the affine for x (column), y (row), z (slice)
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple((axes / spacing).ravel().tolist()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    return image


def read_dicom_seg(path: str, series: CtSeries) -> Dict[str, np.ndarray]:
    """The segments of a DICOM SEG, placed on ``series`` through physical space, as bool masks (z, y, x) by label.

    Going through the SEG's own geometry (not its source image references, which some writers do not vouch for)
    also reads SEGs made on a different grid of the same frame of reference.
    """
    import highdicom as hd
    try:
        seg = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError) as e:
        raise DicomError(f"{path}: not a readable DICOM SEG ({e})") from None
    if series.frame_of_reference_uid and seg.get('FrameOfReferenceUID') != series.frame_of_reference_uid:
        raise DicomError(f"{path}: the SEG is in frame of reference {seg.get('FrameOfReferenceUID')}, "
                         f"{series.describe()} in {series.frame_of_reference_uid}")
    numbers = list(seg.get_segment_numbers())
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    except (ValueError, RuntimeError) as e:
        raise DicomError(f"{path}: the SEG's frames do not form a volume ({e})") from None
    return {seg.get_segment_description(number).segment_label:
            label_on_series_grid(_channel_as_image(volume.array[..., j], volume.affine), series) > 0
            for j, number in enumerate(numbers)}
