"""The README's first command: phantom data -> RAS planner -> stock nnUNetv2_train / nnUNetv2_predict -> Dice.

Everything after the planning runs through nnU-Net's own command-line tools, exactly as a user would run them.
"""
import os
import sys
import time
from typing import Dict

import numpy as np

from nnunet_ras._io import read_image, write_json_atomically
from nnunet_ras.evaluation.metrics import dice
from nnunet_ras.phantom import LABELS
from nnunet_ras.workspace import Workspace

DEMO_WORKDIR, DEMO_DATASET, DEMO_TRAINER, DEMO_PLANS = 'demo_run', 'Dataset501_LiverPhantom', \
    'nnUNetTrainerRAS_30epochs_25iters', 'nnUNetRASPlans'
DEMO_ROI_NAMES = {'liver': 'Liver', 'tumour': 'GTV'}
# The demo model's card (model_card.json in its folder): a phantom-trained model contours a real CT badly (liver Dice
# 0.15 on a real abdominal CT), and a clinician looking at its output must be told so.
DEMO_MODEL_CARD = {
    'trained_on': 'synthetic CT phantoms made by `nnunet-ras phantom` (ellipsoid body, liver and tumours with CT-like '
                  'intensities and noise); no patient data',
    'intended_use': 'trying out nnunet_ras and its contouring service; software testing',
    'warning': 'NOT FOR CLINICAL USE: trained on synthetic phantoms only. On a real abdominal CT it contours the '
               'liver badly (Dice 0.15).',
    'roi_names': DEMO_ROI_NAMES,
}


def demo_model_folder(workdir: str = DEMO_WORKDIR, trainer: str = DEMO_TRAINER) -> str:
    """Where ``make demo`` leaves its model (``$nnUNet_results`` when set, as for the demo itself)."""
    results = os.environ.get('nnUNet_results') or os.path.join(workdir, 'nnUNet_results')
    return os.path.abspath(os.path.join(results, DEMO_DATASET, f'{trainer}__{DEMO_PLANS}__3d_fullres'))


def tumour_dice_table(prediction_folder: str, reference_folder: str) -> Dict[str, Dict[str, float]]:
    scores = {}
    for name in sorted(os.listdir(reference_folder)):
        if not name.endswith('.nii.gz'):
            continue
        reference = read_image(os.path.join(reference_folder, name), 'label').array
        prediction = read_image(os.path.join(prediction_folder, name), 'label').array
        scores[name[:-len('.nii.gz')]] = {label: dice(prediction, reference, value)
                                          for label, value in LABELS.items() if value > 0}
    return scores


def run_demo(workdir: str = 'demo_run', dataset_id: int = 501, trainer: str = 'nnUNetTrainerRAS_30epochs_25iters',
             min_tumour_dice: float = 0.5) -> int:
    ws = Workspace(workdir, keep_set_folders=True)  # nnU-Net folders under workdir where they are not set already
    env = ws.env
    os.environ.update(env)  # the in-process planner reads the same folders
    timings = {}
    from nnunet_ras.phantom import write_phantom_dataset
    from nnunet_ras.planning.preprocessing import plan_and_preprocess

    start = time.time()
    dataset_folder = write_phantom_dataset(env['nnUNet_raw'], dataset_id)
    timings['phantom data set'] = time.time() - start
    print(f"phantom data set: {dataset_folder}")

    start = time.time()
    # a CPU-sized plan: 16 base features and a small memory budget give a patch that trains in seconds per step
    plans = plan_and_preprocess(dataset_id, ['3d_fullres'], [2], 2, gpu_memory_target_in_gb=1, base_features=16,
                                clean=True, show_progress_bar=False)
    timings['plan_and_preprocess (nnUNetPlannerRAS)'] = time.time() - start

    dataset = os.path.basename(dataset_folder)
    timings['nnUNetv2_train'] = ws.run(['nnUNetv2_train', str(dataset_id), '3d_fullres', '0', '-tr', trainer,
                                        '-p', plans, '-device', 'cpu']).seconds
    prediction_folder = os.path.join(workdir, 'predictions')
    timings['nnUNetv2_predict'] = ws.run(['nnUNetv2_predict', '-i', os.path.join(dataset_folder, 'imagesTs'),
                                          '-o', prediction_folder, '-d', str(dataset_id), '-c', '3d_fullres',
                                          '-tr', trainer, '-p', plans, '-f', '0', '-device', 'cpu']).seconds

    scores = tumour_dice_table(prediction_folder, os.path.join(dataset_folder, 'labelsTs'))
    print(f"\nHeld-out cases of {dataset} ({trainer}, plans {plans}, fold 0):")
    print(f"{'case':<16}{'liver Dice':>12}{'tumour Dice':>13}")
    for case, s in scores.items():
        print(f"{case:<16}{s['liver']:>12.3f}{s['tumour']:>13.3f}")
    mean_tumour = float(np.mean([s['tumour'] for s in scores.values()]))
    mean_liver = float(np.mean([s['liver'] for s in scores.values()]))
    print(f"{'mean':<16}{mean_liver:>12.3f}{mean_tumour:>13.3f}")
    print("\nwall time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if mean_tumour < min_tumour_dice:
        print(f"FAILED: mean tumour Dice {mean_tumour:.3f} is below {min_tumour_dice}", file=sys.stderr)
        return 1
    print(f"OK: mean tumour Dice {mean_tumour:.3f} >= {min_tumour_dice}")
    model = os.path.join(env['nnUNet_results'], dataset, f'{trainer}__{plans}__3d_fullres')
    write_json_atomically(os.path.join(model, 'model_card.json'), DEMO_MODEL_CARD)
    command = os.path.relpath(os.path.join(os.path.dirname(sys.executable), 'nnunet-ras')) + ' serve'
    if os.path.abspath(model) != demo_model_folder(workdir, trainer):
        command += f' -m {model}'
    print(f"\nTo contour with this model in the browser, start the contouring service:\n  {command}\n"
          f"then open http://127.0.0.1:8000 with the admin token it prints on its first start "
          f"(README: 'Contouring service').")
    return 0
