"""Model cards: what a served model was trained on, how well it did in cross-validation, and what it is for.

The card is built from the model folder itself (``dataset.json``, the plans, each fold's ``validation/summary.json``
written by ``nnUNetv2_train``); what only its provider can say (intended use, a warning) comes from an optional
``model_card.json`` in the first model folder, with keys ``trained_on``, ``intended_use`` and ``warning`` (and
``roi_names`` / ``roi_colors``, the ROI names and colours the service writes for this model). The card
is shown on the web page and copied into every job's report, in the spirit of Mitchell et al., "Model Cards for
Model Reporting" (FAT* 2019).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from nnunet_ras.dicom.margins import check_margins, parse_margin
from nnunet_ras.dicom.predict import (DEFAULT_STEP_SIZE, ModelInfo, RoiStyle, check_bf16, check_model_folders,
                                      check_step_size)
from nnunet_ras.quality.weighting import CHECKPOINT_KEY

CARD_FILE = 'model_card.json'
NO_INTENDED_USE = (f"not stated by the model's provider (put a {CARD_FILE} with 'intended_use' into the model "
                   f"folder)")
NO_CLINICAL_VALIDATION = ('nnunet_ras has not validated this model for clinical use: every contour must be reviewed '
                          'by a qualified person before use')


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cross_validation_dice(model_folder: str, folds: Sequence[str], labels: Dict[str, object]) -> Dict[str, float]:
    """Mean validation Dice per label over the folds that have nnU-Net's ``validation/summary.json``."""
    names = {str(value): name for name, value in labels.items() if isinstance(value, int) and value > 0}
    per_label: Dict[str, list] = {}
    for fold in folds:
        summary = _read_json(os.path.join(model_folder, f'fold_{fold}', 'validation', 'summary.json'))
        for key, metrics in ((summary or {}).get('mean') or {}).items():
            if key in names and isinstance(metrics, dict) and metrics.get('Dice') is not None:
                per_label.setdefault(names[key], []).append(float(metrics['Dice']))
    return {name: round(sum(v) / len(v), 4) for name, v in per_label.items()}


def has_quality_module(model_folder: str, folds: Sequence[str], checkpoint: str) -> bool:
    """Whether the first fold's checkpoint holds a quality assessment module (a QAM trainer's model)."""
    path = os.path.join(model_folder, f'fold_{folds[0]}', checkpoint)
    return CHECKPOINT_KEY in torch.load(path, map_location='cpu', weights_only=False)


def model_card(model_folders: Sequence[str], folds: Optional[Sequence[str]], checkpoint: str,
               defaults: Optional[dict] = None, info: Optional[ModelInfo] = None) -> dict:
    """The card of the served model (several folders: an ensemble); ``defaults`` fill what ``model_card.json``
    does not say; ``info``: the folders' ``check_model_folders``, when the caller has it already."""
    info = info or check_model_folders(model_folders, folds, checkpoint)
    first = os.path.normpath(model_folders[0])
    trainer, plans, configuration = (os.path.basename(first).split('__') + ['', '', ''])[:3]
    dataset = os.path.basename(os.path.dirname(first))
    dataset_json = _read_json(os.path.join(first, 'dataset.json')) or {}
    provided = {**(defaults or {}), **(_read_json(os.path.join(first, CARD_FILE)) or {})}
    trained_on = provided.get('trained_on') or \
        f"{dataset} ({dataset_json.get('numTraining', '?')} training cases" + \
        (f"; {dataset_json['description']}" if dataset_json.get('description') else '') + ')'
    return {
        'name': f"{dataset} / {trainer}" + (f" (ensemble of {len(model_folders)})" if len(model_folders) > 1 else ''),
        'trainer': trainer, 'plans': plans, 'configuration': configuration, 'folds': info.folds,
        'model_folders': [os.path.abspath(m) for m in model_folders],
        'labels': {k: v for k, v in info.labels.items() if k != 'background'},
        'input_channel': info.channel,
        'trained_on': trained_on,
        'cross_validation_dice': cross_validation_dice(first, info.folds, info.labels),
        'intended_use': provided.get('intended_use') or NO_INTENDED_USE,
        'warning': provided.get('warning') or NO_CLINICAL_VALIDATION,
        'has_quality': has_quality_module(first, info.folds, checkpoint),
        'roi_names': provided.get('roi_names') or {},  # model label -> ROI name in RTSTRUCT / SEG
        'roi_colors': provided.get('roi_colors') or {},  # ROI name -> [R, G, B]
    }


def checked_margin_specs(specs: Sequence[str], structures: Sequence[str]) -> List[str]:
    """Margin specs (``CTV=GTV+5@Liver``) checked against the structures they grow from; returns them without empty
    ones. Raises UserInputError naming the bad spec."""
    specs = [s.strip() for s in specs if s and s.strip()]
    check_margins([parse_margin(spec) for spec in specs], list(structures))
    return specs


@dataclass
class ServedModel:
    """A model the service runs (the web page's, or one a DICOM node rule names) with how its jobs run it: folds,
    checkpoint, mirroring, clean-up, and the ROI names and colours its RTSTRUCT / SEG get (the card's, overridden by
    the service's options)."""
    folders: List[str]
    folds: Optional[List[str]] = None
    checkpoint: str = 'checkpoint_final.pth'
    use_mirroring: bool = True
    postprocessing: str = 'auto'
    style: RoiStyle = field(default_factory=RoiStyle)
    defaults: Optional[dict] = None  # card entries its model_card.json does not give (the demo's)
    step_size: float = DEFAULT_STEP_SIZE  # the sliding window's step (a fraction of the patch)
    bf16: bool = False  # the network in bfloat16 on the CPU (predict --bf16)
    torch_resampling: bool = False  # the export with nnU-Net's torch resampling (predict --torch_resampling)

    def __post_init__(self):
        check_step_size(self.step_size)
        if self.bf16:
            check_bf16('cpu')
        self.info: ModelInfo = check_model_folders(self.folders, self.folds, self.checkpoint)
        self.card = model_card(self.folders, self.folds, self.checkpoint, self.defaults, self.info)
        self.roi_names = {**self.card['roi_names'], **self.style.names}
        self.roi_colors = {**self.card['roi_colors'], **{k: list(v) for k, v in self.style.colors.items()}}

    @property
    def structures(self) -> List[str]:
        """The ROI names of the model's labels: what margins can grow from."""
        return [self.roi_names.get(label, label) for label in self.info.labels if label != 'background']

    def check_margins(self, specs: Sequence[str]) -> List[str]:
        return checked_margin_specs(specs, self.structures)

    def job_params(self, predict_path: str, view_path: str, margins: Sequence[str], warnings: Sequence[str],
                   **extra) -> dict:
        """What a worker needs to run a job of this model (the job table's ``params``)."""
        return {'input': predict_path, 'view': view_path, 'models': self.folders, 'folds': self.folds,
                'checkpoint': self.checkpoint, 'use_mirroring': self.use_mirroring, 'step_size': self.step_size,
                'bf16': self.bf16, 'torch_resampling': self.torch_resampling,
                'postprocessing': self.postprocessing, 'roi_names': self.roi_names, 'roi_colors': self.roi_colors,
                'margins': list(margins), 'has_quality': self.card.get('has_quality', False),
                'model_card': self.card, 'warnings': list(warnings), **extra}
