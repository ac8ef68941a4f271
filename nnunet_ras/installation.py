"""What ``nnunet-ras check`` verifies: the things that make an nnU-Net plugin fail in confusing ways."""
import contextlib
import io
import os
from dataclasses import dataclass
from typing import List, Optional

import nnunet_ras.ext.trainers


def trainer_path() -> str:
    """The folder to put into ``nnUNet_extTrainer`` (the installed copy of the repository's trainers/)."""
    return os.path.abspath(nnunet_ras.ext.trainers.__path__[0])


@dataclass
class Finding:
    what: str
    problem: Optional[str] = None  # None: fine
    fix: Optional[str] = None


def _check_folders() -> List[Finding]:
    findings = []
    for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        value = os.environ.get(var)
        if not value:
            findings.append(Finding(var, f"{var} is not set",
                                    f"export {var}=/path/to/{var} (nnU-Net's documentation/setting_up_paths.md)"))
        elif not os.path.isdir(value):
            findings.append(Finding(var, f"{var}={value} is not an existing folder", f"mkdir -p {value}"))
        elif not os.access(value, os.W_OK):
            findings.append(Finding(var, f"{var}={value} is not writable", "choose a folder you can write to"))
        else:
            findings.append(Finding(f"{var}={value}"))
    return findings


def _check_trainer_lookup() -> Finding:
    folder = trainer_path()
    fix = f'export nnUNet_extTrainer="{folder}"   # or: export nnUNet_extTrainer="$(nnunet-ras trainer-path)"'
    ext = os.environ.get('nnUNet_extTrainer', '')
    if folder not in [os.path.abspath(p) for p in ext.split(os.pathsep) if p]:
        return Finding('nnUNet_extTrainer', f"nnUNet_extTrainer ({ext or 'unset'}) does not list {folder}, so "
                                            f"nnUNetv2_train -tr nnUNetTrainerRAS cannot find the trainer", fix)
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunet_ras.training import nnUNetTrainerRAS
        with contextlib.redirect_stdout(io.StringIO()):
            found = recursive_find_trainer_class_by_name('nnUNetTrainerRAS')
    except Exception as e:  # the lookup imports every trainer module of nnunetv2: any import error shows here
        return Finding('trainer lookup', f"nnU-Net's trainer lookup failed: {type(e).__name__}: {e}", fix)
    if found is not nnUNetTrainerRAS:
        return Finding('trainer lookup', f"nnU-Net found another nnUNetTrainerRAS ({found.__module__})",
                       "remove the other copy from nnUNet_extTrainer or from nnunetv2")
    return Finding('trainer lookup: nnUNetTrainerRAS found through nnUNet_extTrainer')


def _check_torch() -> Finding:
    fix = ("install the standard torch from PyPI together with its matching torchvision "
           "(pip install --force-reinstall torch torchvision); a CPU-only torch build cannot load PyPI's "
           "torchvision, and nnU-Net's trainer lookup imports timm, which imports torchvision")
    try:
        import torch
        import torchvision
        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
        import timm  # noqa: F401
    except Exception as e:
        return Finding('torch + torchvision', f"{type(e).__name__}: {e}", fix)
    return Finding(f"torch {torch.__version__} + torchvision {torchvision.__version__} load together")


def check_installation() -> List[Finding]:
    return _check_folders() + [_check_torch(), _check_trainer_lookup()]
