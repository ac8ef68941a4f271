"""Label-noise experiments (Zhu H.'s thesis, after Pick-and-Learn, MICCAI 2019): a simulator that corrupts a share of
an nnU-Net raw data set's training labels, and a converter of the JSRT/SCR chest radiographs into nnU-Net raw data
sets.

New data sets are claimed through the package's one id claim, ``dataset_ids.claim_dataset``."""
import os

from nnunet_ras.errors import DatasetError


def raw_folder() -> str:
    """$nnUNet_raw, read when called (not at import) so that a changed environment is honoured."""
    folder = os.environ.get('nnUNet_raw')
    if not folder:
        raise DatasetError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw")
    if not os.path.isdir(folder):
        raise DatasetError(f"nnUNet_raw folder {folder} does not exist")
    return folder
