"""The one place that claims an nnU-Net data set id and name for a command that writes a new raw data set.

nnU-Net finds a data set by the prefix ``DatasetNNN_`` in nnUNet_raw, nnUNet_preprocessed and nnUNet_results, so
two data sets with one id are ambiguous, and a name with a space or a slash breaks its paths. A claim checks the id
(1-999), the name, and that no other data set uses the id in any of the three folders; it then creates the hidden
work folder ``.DatasetNNN_name.part-<pid>-<token>`` next to the target while holding an exclusive lock (flock) on the
raw folder. A second run that claims the same id while the first is still writing sees
that work folder and is refused; one that asks for any free id gets another. The work folder is renamed onto
``DatasetNNN_name`` only when complete; a killed run leaves only the work folder, which the next claim removes.
"""
import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

from nnunet_ras._io import PART_PATTERN, _process_alive, _swap_into_place, part_path, remove_stale_parts
from nnunet_ras.errors import DatasetError

NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_\-]*')


def check_id_and_name(dataset_id: int, name: str) -> None:
    if not isinstance(dataset_id, int) or not 0 < dataset_id < 1000:
        raise DatasetError(f"dataset id {dataset_id} is not in 1..999")
    if not NAME_PATTERN.fullmatch(name or ''):
        raise DatasetError(f"dataset name {name!r} must start with a letter or digit and hold only letters, "
                           f"digits, '_' or '-'")


def resolve_dataset(dataset: str) -> str:
    """nnU-Net's lookup of a data set id or name (``4``, ``Dataset004_Hippocampus``); DatasetError if unknown."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DatasetError(f"dataset {dataset}: not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results "
                           f"({_first(e)})") from None


def _first(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _base_folders(raw: str) -> List[str]:
    folders = [raw] + [os.environ.get(var, '') for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')]
    return list(dict.fromkeys(os.path.abspath(f) for f in folders if f and os.path.isdir(f)))


def datasets_with_id(raw: str, dataset_id: int) -> List[str]:
    """Paths of the data set folders that use ``dataset_id`` in ``raw`` and in $nnUNet_raw/_preprocessed/_results."""
    prefix = f'Dataset{dataset_id:03d}_'
    return sorted(os.path.join(base, d) for base in _base_folders(raw) for d in os.listdir(base)
                  if d.startswith(prefix) and os.path.isdir(os.path.join(base, d)))


def _in_flight(raw: str, dataset_id: int) -> List[str]:
    """Work folders of other runs that are still alive and claim ``dataset_id``."""
    prefix = f'.Dataset{dataset_id:03d}_'
    found = []
    for d in os.listdir(raw):
        match = PART_PATTERN.match(d)
        if d.startswith(prefix) and match and _process_alive(int(match.group(1))) and \
                int(match.group(1)) != os.getpid():
            found.append(f"{d} (pid {match.group(1)})")
    return found


def check_dataset_id_free(raw: str, dataset_id: int, name: str, replace: bool = False) -> None:
    """Refuses an id used by another data set (any name but ``name``), in raw, preprocessed or results, or being
    written by another run; ``DatasetNNN_name`` itself may exist only when ``replace``."""
    check_id_and_name(dataset_id, name)
    if not os.path.isdir(raw):
        raise DatasetError(f"raw folder {raw} does not exist")
    own = f'Dataset{dataset_id:03d}_{name}'
    taken = datasets_with_id(raw, dataset_id)
    others = [p for p in taken if os.path.basename(p) != own]
    if others:
        raise DatasetError(f"dataset id {dataset_id} is already used by {', '.join(others)}; choose another id")
    if taken and not replace:
        raise DatasetError(f"{', '.join(taken)}: the data set exists already; choose another id, or use "
                           f"--overwrite to replace it")
    busy = _in_flight(raw, dataset_id)
    if busy:
        raise DatasetError(f"dataset id {dataset_id} is being written by another run in {raw}: {busy[0]}")


@contextmanager
def _claims_lock(raw: str) -> Iterator[None]:
    """An exclusive lock on the raw folder itself (no lock file is left behind); the kernel releases it when the
    process ends, however it ends."""
    descriptor = os.open(raw, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@dataclass
class Claim:
    dataset_id: int
    name: str
    target: str  # raw/DatasetNNN_name
    work: str  # the hidden folder to write into


def first_free_id(raw: str, start: int = 1) -> int:
    for dataset_id in range(max(start, 1), 1000):
        if not datasets_with_id(raw, dataset_id) and not _in_flight(raw, dataset_id):
            return dataset_id
    raise DatasetError(f"no free dataset id from {start} to 999 in {raw}")


@contextmanager
def claim_dataset(raw: str, dataset_id: Optional[int], name: str, replace: bool = False,
                  first_id: int = 1) -> Iterator[Claim]:
    """Claims ``dataset_id`` (or, if None, the first free id from ``first_id``) and ``name``, and yields the claim.

    Write the data set into ``claim.work``; when the block completes it becomes ``claim.target`` (an existing
    ``DatasetNNN_name`` is replaced only with ``replace``, after the new one is complete). On an exception or
    SIGTERM the work folder is removed and nothing else changes.
    """
    if not os.path.isdir(raw):
        raise DatasetError(f"raw folder {raw} does not exist")
    with _claims_lock(raw):
        remove_stale_parts(raw)
        if dataset_id is None:
            check_id_and_name(1, name)
            dataset_id = first_free_id(raw, first_id)
        check_dataset_id_free(raw, dataset_id, name, replace)
        target = os.path.join(raw, f'Dataset{dataset_id:03d}_{name}')
        work = part_path(target)
        os.mkdir(work)
    try:
        yield Claim(dataset_id, name, target, work)
        with _claims_lock(raw):
            _swap_into_place(work, target, replace)
    except BaseException:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
        raise
