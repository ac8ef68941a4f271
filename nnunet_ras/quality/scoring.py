"""Score new contours with the QAM of a trained model (``nnunet-ras quality``).

A contour (a model's own prediction, a clinical contour, a label to check) is pre-processed with its image exactly
as nnU-Net pre-processes training cases for that model (the model folder's ``plans.json`` and ``dataset.json``), and
scored by the QAM stored in the checkpoint (``quality_assessment``) with ``ranking.score_case``. Lower scores mean
the QAM trusts the contour less: review those first.
"""
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_ras._io import declared_label_values, read_image
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.networks.quality import QualityAssessmentNet
from nnunet_ras.quality.ranking import score_case, write_ranking
from nnunet_ras.quality.weighting import CHECKPOINT_KEY

SCORES_NAME = 'quality_scores'


class QualityModel:
    """A trained model's QAM with everything needed to pre-process and score a contour like nnU-Net would."""

    def __init__(self, model_folder: str, fold: str = '0', checkpoint_name: str = 'checkpoint_final.pth',
                 device: torch.device = torch.device('cpu')):
        for name in ('plans.json', 'dataset.json'):
            if not os.path.isfile(os.path.join(model_folder, name)):
                raise DatasetError(f"{os.path.join(model_folder, name)}: missing; -m must be a trained model's "
                                   f"folder (<trainer>__<plans>__<configuration>)")
        fold_folder = 'fold_all' if str(fold) == 'all' else f'fold_{fold}'
        checkpoint_path = os.path.join(model_folder, fold_folder, checkpoint_name)
        if not os.path.isfile(checkpoint_path):
            raise DatasetError(f"{checkpoint_path}: checkpoint not found")
        checkpoint = torch.load(checkpoint_path, map_location='cpu', weights_only=False)
        quality = checkpoint.get(CHECKPOINT_KEY)
        if quality is None:
            raise DatasetError(f"{checkpoint_path}: holds no quality assessment module (trained with "
                               f"{checkpoint.get('trainer_name', 'a trainer')}, not a QAM trainer such as "
                               f"nnUNetTrainerQAM or nnUNetTrainerRASQAM)")
        self.dataset_json = load_json(os.path.join(model_folder, 'dataset.json'))
        self.plans_manager = PlansManager(os.path.join(model_folder, 'plans.json'))
        configuration = checkpoint.get('init_args', {}).get('configuration') or \
            os.path.basename(os.path.normpath(model_folder)).split('__')[-1]
        self.configuration_manager: ConfigurationManager = self.plans_manager.get_configuration(configuration)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        self.num_channels = len(self.dataset_json.get('channel_names', self.dataset_json.get('modality', {})))
        conv_op = convert_dim_to_conv_op(len(self.configuration_manager.patch_size))
        self.qam = QualityAssessmentNet(conv_op, self.num_channels + self.label_manager.num_segmentation_heads,
                                        quality['features_per_stage'], quality.get('image_gradient_channels', 0))
        # the weight-averaged QAM where the checkpoint has one (``qam_average_fraction``), else the last epoch's
        self.averaged_epochs = int(quality.get('averaged_epochs') or 0)
        self.qam.load_state_dict(quality['average_weights'] if self.averaged_epochs else quality['weights'])
        self.qam.to(device).eval()
        self.ocm_lambda = quality['ocm_lambda']
        self.device = device
        self.checkpoint_path = checkpoint_path

    def preprocess(self, image_files: List[str], seg_file: str) -> Tuple[np.ndarray, np.ndarray]:
        """(data, seg) as nnU-Net's preprocessor of this configuration makes them; checks both share one grid."""
        for path in image_files:  # the package's verified reader first: nnU-Net's readers accept truncated files
            read_image(path, 'image')
        read_image(seg_file, 'label', labels=declared_label_values(self.dataset_json['labels']))
        reader = self.plans_manager.image_reader_writer_class()
        try:
            data, image_properties = reader.read_images(image_files)
            seg, seg_properties = reader.read_seg(seg_file)
        except DatasetError:
            raise
        except Exception as e:  # readers raise anything from RuntimeError to AssertionError
            raise DatasetError(f"{seg_file} or its image(s) {image_files}: cannot be read ({e})") from None
        problems = []
        if data.shape[1:] != seg.shape[1:]:
            problems.append(f'size {tuple(seg.shape[1:])} vs {tuple(data.shape[1:])}')
        if not np.allclose(image_properties['spacing'], seg_properties['spacing'], rtol=1e-4, atol=1e-4):
            problems.append(f"spacing {tuple(seg_properties['spacing'])} vs {tuple(image_properties['spacing'])}")
        image_geometry, seg_geometry = image_properties.get('sitk_stuff'), seg_properties.get('sitk_stuff')
        if image_geometry and seg_geometry:
            for key in ('origin', 'direction'):
                if key in image_geometry and not np.allclose(image_geometry[key], seg_geometry[key], atol=1e-4):
                    problems.append(f'{key} {tuple(seg_geometry[key])} vs {tuple(image_geometry[key])}')
        if problems:
            raise DatasetError(f"{seg_file}: the segmentation is on another grid than its image {image_files[0]} "
                               f"(segmentation vs image: {'; '.join(problems)})")
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, seg, _ = preprocessor.run_case_npy(data, seg, image_properties, self.plans_manager,
                                                 self.configuration_manager, self.dataset_json)
        return data, seg

    def score(self, image_files: List[str], seg_file: str) -> float:
        data, seg = self.preprocess(image_files, seg_file)
        return score_case(self.qam, self.ocm_lambda, np.asarray(data, np.float32), np.asarray(seg),
                          self.label_manager, self.configuration_manager.patch_size, self.device)


def case_files(images_dir: str, segs_dir: str, file_ending: str, num_channels: int) -> List[Tuple[str, List[str], str]]:
    """(case, image files, segmentation file) for every ``<case><file_ending>`` in segs_dir."""
    if not os.path.isdir(segs_dir):
        raise DatasetError(f"{segs_dir}: no such folder of segmentations")
    cases = []
    for name in sorted(os.listdir(segs_dir)):
        if not name.endswith(file_ending) or name.startswith('.'):
            continue
        case = name[:-len(file_ending)]
        images = [os.path.join(images_dir, f'{case}_{c:04d}{file_ending}') for c in range(num_channels)]
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"{os.path.join(segs_dir, name)}: its image {missing[0]} is missing")
        cases.append((case, images, os.path.join(segs_dir, name)))
    if not cases:
        raise DatasetError(f"{segs_dir}: no segmentation files ending in {file_ending}")
    return cases


def score_folder(images_dir: str, segs_dir: str, model_folder: str, fold: str = '0',
                 checkpoint_name: str = 'checkpoint_final.pth', output_folder: Optional[str] = None,
                 device: torch.device = torch.device('cpu')) -> List[dict]:
    """Score every segmentation of segs_dir with the model's QAM; write ``quality_scores.csv/.json`` (lowest first)
    to output_folder (default: segs_dir) and return the rows."""
    from nnunet_ras._io import check_output_file
    for ending in ('.csv', '.json'):
        check_output_file(os.path.join(output_folder or segs_dir, SCORES_NAME + ending), 'the quality scores')
    model = QualityModel(model_folder, fold, checkpoint_name, device)
    cases = case_files(images_dir, segs_dir, model.dataset_json['file_ending'], model.num_channels)
    rows = [{'case': case, 'score': model.score(images, seg), 'segmentation': seg} for case, images, seg in cases]
    output_folder = output_folder or segs_dir
    os.makedirs(output_folder, exist_ok=True)
    write_ranking(rows, output_folder, SCORES_NAME,
                  summary={'model_folder': os.path.abspath(model_folder), 'checkpoint': model.checkpoint_path,
                           'ocm_lambda': model.ocm_lambda, 'qam_averaged_epochs': model.averaged_epochs,
                           'images': os.path.abspath(images_dir),
                           'segmentations': os.path.abspath(segs_dir)})
    return sorted(rows, key=lambda r: r['score'])
