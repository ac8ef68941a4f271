"""DICOM radiotherapy I/O: CT series in, RTSTRUCT and DICOM SEG out, GTV -> CTV -> PTV margins."""
from nnunet_ras.errors import UserInputError


class DicomError(UserInputError):
    """DICOM input that cannot be used safely; the message names the file or series and the problem.

    A user-input error, so ``nnunet-ras`` prints it as a one-line error with exit code 2.
    """
