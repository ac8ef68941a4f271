"""Label-noise experiments (seed 002): a simulator that corrupts a share of an nnU-Net raw data set's training
labels, and a converter of the JSRT/SCR chest radiographs into nnU-Net raw data sets."""
import os
import re
import shutil
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
    """Refuses an id that any data set in nnUNet_raw (or, through nnU-Net's own lookup, nnUNet_preprocessed or
    nnUNet_results) already uses, since nnU-Net resolves ids by prefix and two data sets with one id are ambiguous."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
    if not os.path.isdir(raw):
        raise DatasetError(f"raw folder {raw} does not exist")
    if not 0 < dataset_id < 1000:
        raise DatasetError(f"dataset id {dataset_id} is not in 1..999")
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_\-]*', name):
        raise DatasetError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    prefix = f'Dataset{dataset_id:03d}_'
    taken = sorted({d for d in os.listdir(raw) if d.startswith(prefix) and os.path.isdir(os.path.join(raw, d))}
                   | set(find_candidate_datasets(dataset_id)))
    if taken:
        raise DatasetError(f"dataset id {dataset_id} is already used by {', '.join(taken)} "
                           f"(in {raw} or nnUNet_preprocessed/nnUNet_results); choose another id")


@contextmanager
def new_dataset_folder(raw: str, dataset_id: int, name: str) -> Iterator[str]:
    """Yields a temporary folder that becomes ``raw/DatasetNNN_name`` only if the block finishes, so a failure
    leaves nothing half-written. Its name does not start with 'Dataset': nnU-Net never takes it for a data set."""
    check_dataset_id_free(raw, dataset_id, name)
    prefix = f'Dataset{dataset_id:03d}_'
    target = os.path.join(raw, prefix + name)
    tmp = os.path.join(raw, f'.tmp_{prefix}{name}.{os.getpid()}')  # makedirs, unlike mkdtemp, honours the umask
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
