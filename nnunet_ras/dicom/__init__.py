"""DICOM radiotherapy I/O: CT series in, RTSTRUCT and DICOM SEG out, GTV -> CTV -> PTV margins."""
from nnunet_ras.dataset_checks import DatasetError


class DicomError(DatasetError):
    """DICOM input that cannot be used safely; the message names the file or series and the problem.

    A subclass of DatasetError so that ``nnunet-ras`` prints it as a one-line error with exit code 2.
    """
