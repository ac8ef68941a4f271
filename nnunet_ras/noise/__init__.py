"""Label-noise experiments (seed 002): a simulator that corrupts a share of an nnU-Net raw data set's training
labels, and a converter of the JSRT/SCR chest radiographs into nnU-Net raw data sets."""
import os
from contextlib import contextmanager
from typing import Iterator

from nnunet_ras.dataset_checks import DatasetError


def raw_folder() -> str:
    """$nnUNet_raw, read when called (not at import) so that a changed environment is honoured."""
    folder = os.environ.get('nnUNet_raw')
    if not folder:
        raise DatasetError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw")
    if not os.path.isdir(folder):
        raise DatasetError(f"nnUNet_raw folder {folder} does not exist")
    return folder


def check_dataset_id_free(raw: str, dataset_id: int, name: str) -> None:
    """Refuses an id that any data set in nnUNet_raw, nnUNet_preprocessed or nnUNet_results already uses (nnU-Net
    resolves ids by prefix, so two data sets with one id are ambiguous); the package's one id check."""
    from nnunet_ras.dataset_ids import check_dataset_id_free as check
    check(raw, dataset_id, name)


@contextmanager
def new_dataset_folder(raw: str, dataset_id: int, name: str, replace: bool = False) -> Iterator[str]:
    """Yields a hidden work folder that becomes ``raw/DatasetNNN_name`` only if the block finishes (the package's
    one id claim, ``dataset_ids.claim_dataset``), so a failure or interruption leaves nothing half-written. With
    ``replace`` an existing data set of this id and name is replaced whole, once the new one is complete."""
    from nnunet_ras.dataset_ids import claim_dataset
    with claim_dataset(raw, dataset_id, name, replace) as claim:
        yield claim.work
