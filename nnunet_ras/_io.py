"""The package's one verified image reader and one atomic writer, and the checks of output paths.

Reading: SimpleITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as zeros) and
happily returns NaN, 2D or 4D images and fractional labels; each of these gives a wrong result downstream with exit
code 0. ``read_image`` refuses them, naming the file and the problem. Every image or label the package reads goes
through it.

Writing: a file or folder only ever appears under its final name complete. It is written under a temporary name in
the same folder (``.<name>.part-<pid>-<token>``, hidden, and never taken by nnU-Net for a case or a data set) and
renamed into place, which is atomic on one file system. A process killed with SIGKILL leaves only such temporaries;
``remove_stale_parts`` deletes those whose process is gone, and the commands call it on the folders they write to.
"""
import gzip
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ras.errors import DatasetError

PART_PATTERN = re.compile(r'^\..+\.part-(\d+)-[0-9a-f]{8}')
NIFTI_ENDINGS = ('.nii.gz', '.nii')


# ---------------------------------------------------------------------------------------------------- writing


def file_ending(path: str) -> str:
    """``.nii.gz`` for compressed NIfTI (SimpleITK picks the format by it), else the last extension."""
    return '.nii.gz' if path.endswith('.nii.gz') else os.path.splitext(path)[1]


def part_path(path: str) -> str:
    """A temporary name next to ``path`` that keeps its ending and names this process."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.part-{os.getpid()}-{secrets.token_hex(4)}{file_ending(path)}')


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder: str) -> int:
    """Removes the temporaries in ``folder`` left by processes that no longer run; returns how many."""
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        match = PART_PATTERN.match(name)
        if match and not _process_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
            removed += 1
    return removed


def link_or_copy(src: str, dst: str) -> None:
    """Hard link where possible (same file system: no extra disk space), else a byte copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """Calls ``write(temporary_path)`` and renames the result onto ``path``; returns ``path``.

    The temporary is in the same folder (so the rename is atomic) and is removed if ``write`` fails or the process
    is interrupted, so ``path`` is either the old file, or the complete new one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = part_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary):
            os.remove(temporary)
        raise
    return path


def write_text_atomically(path: str, text: str) -> str:
    def write(temporary: str) -> None:
        with open(temporary, 'w', newline='') as f:
            f.write(text)
    return write_atomically(path, write)


def write_json_atomically(path: str, data) -> str:
    import json
    return write_text_atomically(path, json.dumps(data, indent=2))


def write_image_atomically(image: sitk.Image, path: str, compress: bool = True) -> str:
    return write_atomically(path, lambda temporary: sitk.WriteImage(image, temporary, useCompression=compress))


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_creatable(path: str, what: str) -> None:
    ancestor = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(ancestor):
        raise DatasetError(f"{path}: cannot be created as {what}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DatasetError(f"{path}: cannot be created as {what}: the folder {ancestor} is not writable")


def check_output_file(path: str, what: str = 'an output file') -> None:
    """Refuses an output file path that is a folder, or that cannot be written."""
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a folder; give the name of a file to write ({what})")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise DatasetError(f"{path}: exists and is not writable")
    _check_creatable(path, what)


def check_output_folder(path: str, overwrite: bool = False, what: str = 'the output folder') -> None:
    """Refuses an output folder that is a file, cannot be created, or already holds something (unless
    ``overwrite``: then it is replaced whole, once the new output is complete)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise DatasetError(f"{path}: is a file, not a folder ({what})")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK) or not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise DatasetError(f"{path}: {what} is not writable")
        if os.listdir(path) and not overwrite:
            raise DatasetError(f"{path}: {what} is not empty; choose a new folder, or use --overwrite to replace "
                               f"it whole")
        return
    _check_creatable(path, what)


def _swap_into_place(work: str, target: str, overwrite: bool) -> None:
    """Renames the finished folder ``work`` onto ``target``; an existing ``target`` is replaced only with
    ``overwrite`` (or when empty), and removed only after the new one is in place."""
    if os.path.isdir(target) and os.listdir(target):
        if not overwrite:
            raise DatasetError(f"{target}: appeared while this run was writing (another run?); the result is not "
                               f"moved there")
        old = part_path(target)
        os.rename(target, old)
        try:
            os.rename(work, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    if os.path.isdir(target):
        os.rmdir(target)
    os.rename(work, target)


@contextmanager
def atomic_folder(target: str, overwrite: bool = False, what: str = 'the output folder') -> Iterator[str]:
    """Yields an empty temporary folder next to ``target`` that is renamed onto it when the block completes.

    ``target`` must be absent or empty unless ``overwrite``, which replaces it whole. On an exception (or
    SIGTERM, see ``errors.Terminated``) the temporary folder is removed and ``target`` is left as it was.
    """
    parent = os.path.dirname(os.path.abspath(target))
    check_output_folder(target, overwrite, what)
    os.makedirs(parent, exist_ok=True)
    remove_stale_parts(parent)
    work = part_path(target)
    os.mkdir(work)
    try:
        yield work
        _swap_into_place(work, target, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------- reading


class LoadedImage(NamedTuple):
    image: sitk.Image
    array: np.ndarray  # an owned copy (z, y, x), never a view of the SimpleITK buffer


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def check_complete(path: str) -> None:
    """Raises DatasetError when the file's bytes are incomplete: a gzip stream that ends early or fails its
    checksum, or a NIfTI whose voxel data is shorter than its header says."""
    try:
        if path.endswith('.gz'):
            size = 0
            with gzip.open(path, 'rb') as f:
                header = f.read(544)
                size = len(header)
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    size += len(chunk)
        else:
            with open(path, 'rb') as f:
                header = f.read(544)
            size = os.path.getsize(path)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read as an image (damaged or truncated file: "
                           f"{_first_line(e)})") from None
    if path.endswith(NIFTI_ENDINGS):
        import io
        import nibabel
        try:
            sizeof_header = max(int.from_bytes(header[:4], 'little'), int.from_bytes(header[:4], 'big'))
            header_class = nibabel.Nifti2Header if sizeof_header == 540 else nibabel.Nifti1Header
            nifti_header = header_class.from_fileobj(io.BytesIO(header), check=False)
            needed = int(nifti_header.get_data_offset()) + \
                int(np.prod(nifti_header.get_data_shape(), dtype=np.int64)) * nifti_header.get_data_dtype().itemsize
        except Exception as e:  # nibabel raises many types for garbage headers
            raise DatasetError(f"{path}: cannot be read as an image (no valid NIfTI header: "
                               f"{_first_line(e)})") from None
        if size < needed:
            raise DatasetError(f"{path}: cannot be read as an image (truncated: {size} bytes where the NIfTI "
                               f"header needs {needed})")
        if np.issubdtype(nifti_header.get_data_dtype(), np.floating):
            # SimpleITK turns NaN voxels of a NIfTI into 0 without a word, so the stored values are checked here
            voxels = np.asanyarray(nibabel.load(path).dataobj)
            if not np.all(np.isfinite(voxels)):
                raise DatasetError(f"{path}: {int(np.count_nonzero(~np.isfinite(voxels)))} voxel(s) are NaN or "
                                   f"infinite")


def read_image(path: str, what: str = 'image', ndim: Collection[int] = (2, 3),
               labels: Optional[Collection[int]] = None) -> LoadedImage:
    """Reads an image (``what='image'``) or a label map (``what='label'``) and verifies it.

    Refused, with a message naming ``path``: a missing or unreadable file, truncation, a dimension not in ``ndim``,
    non-finite voxel values; for labels also several components, non-integer values and values not in ``labels``
    (when given: the values the data set declares).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file is missing" if not os.path.lexists(path) else
                           f"{path}: not a file")
    check_complete(path)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise DatasetError(f"{path}: cannot be read as an image ({_first_line(e)})") from None
    if image.GetDimension() not in ndim:
        raise DatasetError(f"{path}: a {image.GetDimension()}D {what} (size {image.GetSize()}) where "
                           f"{' or '.join(f'{n}D' for n in sorted(ndim))} is needed")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DatasetError(f"{path}: invalid voxel spacing {tuple(spacing)}")
    array = sitk.GetArrayFromImage(image)
    if what == 'label' and image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{path}: a label map must have one component per voxel, this one has "
                           f"{image.GetNumberOfComponentsPerPixel()}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DatasetError(f"{path}: {bad} voxel(s) are NaN or infinite")
    if what == 'label':
        if np.issubdtype(array.dtype, np.floating):
            fractional = array != np.round(array)
            if fractional.any():
                raise DatasetError(f"{path}: label values must be integers, found {float(array[fractional][0])!r} "
                                   f"({int(fractional.sum())} voxel(s))")
        if labels is not None:
            extra = sorted(set(np.unique(array).tolist()) - {float(v) for v in labels})
            if extra:
                raise DatasetError(f"{path}: label value(s) {[int(v) for v in extra]} are not declared in the "
                                   f"data set (declared: {sorted(int(v) for v in labels)})")
    return LoadedImage(image, array)


def declared_label_values(labels: dict) -> Sequence[int]:
    """Every integer value an nnU-Net dataset.json ``labels`` entry declares (plain labels, regions, ignore)."""
    values = set()
    for value in labels.values():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            values.add(int(v))
    return sorted(values)
