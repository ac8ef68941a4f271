"""Uploads: stored under names the service makes, checked completely before a job is queued.

Accepted: one NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MetaImage (.mha) file holding one 3D single-channel image, or a
DICOM CT series as one zip or as several files. A zip is unpacked member by member with the bytes counted as they
are decompressed, so a zip bomb is refused after at most ``max_unzipped_bytes``, whatever its headers claim; members
with absolute paths, ``..``, drive letters or symlink modes, and zips with more than ``max_members`` members, are
refused before anything is unpacked. No name the user sends becomes a path on disk. The checks that ``nnunet-ras
predict`` runs before inference (one regular CT series, identity for RTSTRUCT / SEG, the model's input) run here
too, so a job that is queued can run.
"""
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Sequence, Tuple

from nnunet_ras._io import read_image, write_image_atomically
from nnunet_ras.dicom.predict import ModelInfo, check_input
from nnunet_ras.errors import UserInputError

IMAGE_ENDINGS = {'.nii.gz': 'nifti', '.nii': 'nifti', '.nrrd': 'nrrd', '.mha': 'mha'}
REFUSED_ENDINGS = {'.nhdr': 'a detached NRRD header (upload the .nrrd with its data attached)',
                   '.mhd': 'a MetaImage header whose data is in another file (upload a .mha)',
                   '.png': 'a 2D picture', '.jpg': 'a 2D picture', '.jpeg': 'a 2D picture', '.tif': 'a 2D picture',
                   '.tiff': 'a 2D picture', '.bmp': 'a 2D picture'}
CHUNK = 1 << 20


class UploadRefused(UserInputError):
    """An upload the service cannot take; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_upload_bytes: int = 1 << 30
    max_unzipped_bytes: int = 4 << 30
    max_members: int = 5000


@dataclass
class StoredInput:
    kind: str  # nifti, nrrd, mha, dicom
    name: str  # what the user called it (for display only)
    predict_path: str  # what predict_case reads: a NIfTI file or a folder of DICOM files
    view_path: str  # a NIfTI of the image for the viewer
    patient: Optional[str]
    warnings: List[str]


def _ending(name: str) -> str:
    lower = name.lower()
    for ending in list(IMAGE_ENDINGS) + list(REFUSED_ENDINGS) + ['.zip', '.dcm']:
        if lower.endswith(ending):
            return ending
    return os.path.splitext(lower)[1]


def _is_zip(path: str) -> bool:
    with open(path, 'rb') as f:
        return f.read(4) in (b'PK\x03\x04', b'PK\x05\x06')


def _is_dicom(path: str) -> bool:
    with open(path, 'rb') as f:
        f.seek(128)
        return f.read(4) == b'DICM'


def _copy(source: BinaryIO, target: str) -> int:
    with open(target, 'xb') as out:
        shutil.copyfileobj(source, out, CHUNK)
    return os.path.getsize(target)


def _unsafe_member(info: zipfile.ZipInfo) -> Optional[str]:
    name = info.filename
    parts = name.replace('\\', '/').split('/')
    if name.startswith(('/', '\\')) or (len(name) > 1 and name[1] == ':'):
        return 'an absolute path'
    if '..' in parts:
        return "a '..' path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return 'a symbolic link'
    return None


def unpack_zip(path: str, folder: str, limits: Limits, shown_name: str) -> int:
    """Unpacks the files of a zip into ``folder`` as 00001.dcm, 00002.dcm ...; returns how many."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadRefused(f"{shown_name}: not a readable zip file ({e})") from None
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise UploadRefused(f"{shown_name}: {len(members)} members, more than the {limits.max_members} allowed",
                                413)
        for info in members:
            problem = _unsafe_member(info)
            if problem:
                raise UploadRefused(f"{shown_name}: member {info.filename!r} is {problem}; refused")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_unzipped_bytes:
            raise UploadRefused(f"{shown_name}: unpacks to {declared} bytes, more than the "
                                f"{limits.max_unzipped_bytes} allowed", 413)
        os.makedirs(folder, exist_ok=True)
        total, count = 0, 0
        for info in members:
            if info.is_dir():
                continue
            count += 1
            target = os.path.join(folder, f'{count:05d}.dcm')
            try:
                with archive.open(info) as source, open(target, 'xb') as out:
                    while True:
                        chunk = source.read(CHUNK)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > limits.max_unzipped_bytes:  # headers can lie: the bytes are counted
                            raise UploadRefused(f"{shown_name}: unpacks to more than the {limits.max_unzipped_bytes} "
                                                f"bytes allowed", 413)
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
                raise UploadRefused(f"{shown_name}: member {info.filename!r} cannot be unpacked ({e})") from None
        if count == 0:
            raise UploadRefused(f"{shown_name}: the zip holds no files")
        return count


def _explain(error: Exception, folder: str, shown_name: str) -> str:
    """The message of a refused input with the service's own paths replaced by the name the user gave."""
    return str(error).replace(os.path.join(folder, 'dicom'), shown_name).replace(folder + os.sep, '') \
        .replace(folder, shown_name)


def store_upload(files: Sequence[Tuple[str, BinaryIO]], folder: str, model: ModelInfo, limits: Limits
                 ) -> StoredInput:
    """Stores the uploaded (name, file) pairs into ``folder`` (new) and checks them as ``predict`` would.
    Raises UploadRefused (with an HTTP status) for anything that cannot become a job; ``folder`` is then removed."""
    if not files:
        raise UploadRefused("no file uploaded (send one image file, a DICOM zip, or the files of a DICOM series)", 400)
    os.makedirs(folder)
    try:
        return _store(files, folder, model, limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _store(files: Sequence[Tuple[str, BinaryIO]], folder: str, model: ModelInfo, limits: Limits) -> StoredInput:
    names = [os.path.basename((name or 'upload').replace('\\', '/')) or 'upload' for name, _ in files]
    shown = names[0] if len(names) == 1 else f"{len(names)} files ({names[0]}, ...)"
    endings = [_ending(n) for n in names]
    for name, ending in zip(names, endings):
        if ending in REFUSED_ENDINGS:
            raise UploadRefused(f"{name}: {REFUSED_ENDINGS[ending]}; upload a 3D image (NIfTI, NRRD, MHA) or a "
                                f"DICOM series", 415)
    if len(files) == 1 and endings[0] in IMAGE_ENDINGS:
        kind = IMAGE_ENDINGS[endings[0]]
        stored = os.path.join(folder, 'upload' + endings[0])
        _copy(files[0][1], stored)
        try:
            image = read_image(stored, 'image', ndim=(3,)).image
        except UserInputError as e:
            raise UploadRefused(_explain(e, folder, shown)) from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise UploadRefused(f"{shown}: {image.GetNumberOfComponentsPerPixel()} values per voxel; the model takes "
                                f"one channel ({model.channel})")
        if kind == 'nifti':
            predict_path = stored
        else:  # nnU-Net's reader of the plans is given a NIfTI copy
            predict_path = os.path.join(folder, 'image.nii.gz')
            write_image_atomically(image, predict_path)
            os.remove(stored)
        try:
            _, warnings = check_input(predict_path, None, model, allow_missing_identity=False)
        except UserInputError as e:
            raise UploadRefused(_explain(e, folder, shown)) from None
        return StoredInput(kind, shown, predict_path, predict_path, None, warnings)

    dicom_folder = os.path.join(folder, 'dicom')
    os.makedirs(dicom_folder)
    if len(files) == 1:
        stored = os.path.join(folder, 'upload')
        _copy(files[0][1], stored)
        if _is_zip(stored):
            unpack_zip(stored, dicom_folder, limits, shown)
            os.remove(stored)
        elif _is_dicom(stored):
            os.replace(stored, os.path.join(dicom_folder, '00001.dcm'))
        else:
            raise UploadRefused(f"{shown}: neither an image file (.nii, .nii.gz, .nrrd, .mha), a zip, nor a DICOM "
                                f"file", 415)
    else:
        if len(files) > limits.max_members:
            raise UploadRefused(f"{len(files)} files, more than the {limits.max_members} allowed", 413)
        for index, (name, source) in enumerate(files, 1):
            target = os.path.join(dicom_folder, f'{index:05d}.dcm')
            _copy(source, target)
            if not _is_dicom(target):
                raise UploadRefused(f"{name}: not a DICOM file (several files are taken as one DICOM series; send "
                                    f"an image file alone)", 415)
    return check_dicom_input(folder, model, shown)


def check_dicom_input(folder: str, model: ModelInfo, shown: str) -> StoredInput:
    """Checks the DICOM series in ``folder``/dicom as ``predict`` would and writes the viewer's NIfTI next to it;
    messages name the series as ``shown``, never the service's paths."""
    dicom_folder = os.path.join(folder, 'dicom')
    try:
        series, warnings = check_input(dicom_folder, None, model, allow_missing_identity=False)
    except UserInputError as e:
        raise UploadRefused(_explain(e, folder, shown)) from None
    view_path = os.path.join(folder, 'image.nii.gz')
    write_image_atomically(series.image, view_path)
    return StoredInput('dicom', shown, dicom_folder, view_path, series.text('PatientID') or None,
                       [_explain(w, folder, shown) for w in warnings])

