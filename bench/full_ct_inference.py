"""A full-size abdominal CT (DICOM) -> RTSTRUCT with GTV, CTV and PTV through ``nnunet-ras predict``'s code path on
the CPU, with models of realistic size: RAS U-Net against nnU-Net's default network under the same plans, and RAS
U-Net under its own planner's plans. Split into read (DICOM series, NIfTI copy, model loading), preprocess, sliding
window, nnU-Net's export (resampling back to the CT), and the DICOM writing (clean-up, margins, RTSTRUCT, SEG), plus
the peak resident memory.

The CT is the real abdominal CT of ``../shared/data/ct_abdomen_example`` resampled to 512 x 512 in-plane (its field
of view kept, 0.72 x 0.59 mm) and ``--slice_mm`` slices (2.5 mm: 134 slices), written as a DICOM series. The plans
are nnU-Net's (``ExperimentPlanner``) and the RAS planner's (``nnUNetPlannerRAS``) for a data set of that CT, both at
nnU-Net's default memory target (8 GB); the models have random weights (timing only) and are saved as nnU-Net model
folders by the trainers themselves (``nnUNetTrainer``, ``nnUNetTrainerRAS``).

Each prediction runs in a fresh process, one at a time, with all cores. ``nnUNet_def_n_proc`` is left unset: nnU-Net
caps the sliding window's torch threads at it, so the usual benchmark setting of 1 would run it on one core. Resumable: a finished run is kept in
``--out`` and printed again, not run again (``--force`` to redo).

Random weights predict speckle over the whole CT, whose contours take many minutes to write, far longer than an
organ's. So the models' last layer favours background by a large bias (the arithmetic, and so the time, is that of
random weights), their prediction is empty, and the DICOM writing is timed again, in the same process, for a
liver-sized label map (the CT's own liver from TotalSegmentator's map, and a tumour of 2 cm radius): total (b), the
one to compare with a trained model's, is the pipeline up to the export plus that writing.

    python bench/full_ct_inference.py [--step_size 1.0] [--tta] [--bf16] [--torch_resampling]
                                      [--runs default RAS RAS_own_plans]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.dicom_node import CT, full_size_ct  # noqa: E402
from nnunet_ras.dicom.phantom import write_ct_series  # noqa: E402

DATASET_ID, DATASET = 611, 'Dataset611_FullSizeCT'
RUNS = {'default': ('nnUNetTrainer', 'nnUNetPlans', "nnU-Net default, nnU-Net's plans"),
        'RAS': ('nnUNetTrainerRAS', 'nnUNetPlans', "RAS U-Net, nnU-Net's plans"),
        'RAS_own_plans': ('nnUNetTrainerRAS', 'nnUNetRASPlans', "RAS U-Net, RAS planner's plans")}
MARGINS = ['CTV=GTV+5@Liver', 'PTV=CTV+5']
LIVER = os.path.join(os.path.dirname(CT), 'example_seg.nii.gz')  # TotalSegmentator's label map; 5 is the liver


def _env(work: str) -> dict:
    return {**os.environ, 'nnUNet_raw': os.path.join(work, 'raw'),
            'nnUNet_preprocessed': os.path.join(work, 'preprocessed'),
            'nnUNet_results': os.path.join(work, 'results')}


def make_data(work: str, slice_mm: float) -> str:
    """The CT as a DICOM series and as a one-case nnU-Net raw data set (a thresholded liver-like label and a
    sphere as the tumour, only so that the fingerprint has foreground); returns the series folder."""
    series = os.path.join(work, 'ct_dicom')
    if os.path.isdir(series):
        return series
    image = full_size_ct(round(112 * 3 / slice_mm), slice_mm)
    raw = os.path.join(work, 'raw', DATASET)
    os.makedirs(os.path.join(raw, 'imagesTr'), exist_ok=True)
    os.makedirs(os.path.join(raw, 'labelsTr'), exist_ok=True)
    sitk.WriteImage(image, os.path.join(raw, 'imagesTr', 'ct_000_0000.nii.gz'))
    hu = sitk.GetArrayFromImage(image)
    label = ((hu > 40) & (hu < 200)).astype(np.uint8)
    z, y, x = np.ogrid[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    label[((z - hu.shape[0] / 2) / 8) ** 2 + ((y - 256) / 30) ** 2 + ((x - 200) / 30) ** 2 < 1] = 2
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    sitk.WriteImage(label_image, os.path.join(raw, 'labelsTr', 'ct_000.nii.gz'))
    with open(os.path.join(raw, 'dataset.json'), 'w') as f:
        json.dump({'channel_names': {'0': 'CT'}, 'labels': {'background': 0, 'liver': 1, 'tumour': 2},
                   'numTraining': 1, 'file_ending': '.nii.gz'}, f)
    write_ct_series(image, series + '.partial', 'BENCH_FULL_CT', 'BENCH^FULLCT')
    os.replace(series + '.partial', series)
    return series


_PLAN_AND_SAVE = """
import json, os, sys
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiment_dataset
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunet_ras.planning import nnUNetPlannerRAS
from nnunet_ras.training import nnUNetTrainerRAS
dataset_id, dataset, runs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
pre = os.path.join(os.environ['nnUNet_preprocessed'], dataset)
if not os.path.isfile(os.path.join(pre, 'nnUNetRASPlans.json')):
    extract_fingerprint_dataset(dataset_id, num_processes=1, clean=False, verbose=False, show_progress_bar=False)
    plan_experiment_dataset(dataset_id, ExperimentPlanner)
    plan_experiment_dataset(dataset_id, nnUNetPlannerRAS)
dataset_json = load_json(os.path.join(os.environ['nnUNet_raw'], dataset, 'dataset.json'))
for trainer_name, plans_name in runs:
    plans = load_json(os.path.join(pre, plans_name + '.json'))
    folder = os.path.join(os.environ['nnUNet_results'], dataset, f'{trainer_name}__{plans_name}__3d_fullres')
    final = os.path.join(folder, 'fold_0', 'checkpoint_final.pth')
    if os.path.isfile(final) and torch.load(final, weights_only=False).get('background_wins'):
        continue
    manager = PlansManager(plans)
    config = manager.get_configuration('3d_fullres')
    trainer_class = {'nnUNetTrainer': nnUNetTrainer, 'nnUNetTrainerRAS': nnUNetTrainerRAS}[trainer_name]
    # the network as the trainer builds it, with its initialisation; what nnU-Net's predictor reads of a checkpoint
    network = trainer_class.build_network_architecture(
        manager, config, 1, manager.get_label_manager(dataset_json).num_segmentation_heads, False)
    # background wins everywhere: random weights would predict speckle over the whole CT, whose contours take many
    # minutes to write (the DICOM writing is timed on a liver-sized label map instead); the arithmetic is unchanged
    with torch.no_grad():
        network.decoder.seg_layers[-1].bias[0] = 50.  # x 10 (the tile weights) stays within float16
    os.makedirs(os.path.dirname(final), exist_ok=True)
    for name, content in (('plans.json', plans), ('dataset.json', dataset_json)):
        save_json(content, os.path.join(folder, name))
    torch.save({'network_weights': network.state_dict(), 'trainer_name': trainer_name,
                'init_args': {'configuration': '3d_fullres'}, 'inference_allowed_mirroring_axes': (0, 1, 2),
                'background_wins': True}, final)
"""

_TIMED_PREDICT = """
import json, sys, time
start = time.time()
from nnunet_ras.dicom.margins import parse_margin
from nnunet_ras.dicom.postprocess import Cleanup
from nnunet_ras.dicom.predict import parse_style, predict_case
marks = {}
series, out, model, step, tta, margins, marks_file, speed, liver = sys.argv[1], sys.argv[2], sys.argv[3], \\
    float(sys.argv[4]), sys.argv[5] == '1', json.loads(sys.argv[6]), sys.argv[7], json.loads(sys.argv[8]), sys.argv[9]
style, cleanup = parse_style(['tumour=GTV', 'liver=Liver'], [], []), Cleanup(min_island_cc={'Liver': 1.0, 'GTV': 1.0})
def progress(stage, fraction):
    before = len(marks)
    marks.setdefault(stage, time.time())
    if stage == 'predicting' and fraction >= 1.0:
        marks.setdefault('tiles done', time.time())
    if len(marks) > before:  # seconds from the start of every stage reached, kept if the run is stopped
        with open(marks_file, 'w') as f:
            json.dump({k: round(v - start, 1) for k, v in marks.items()}, f)
predict_case(series, out, [model], folds=['0'], device='cpu', use_mirroring=tta, style=style,
             margins=[parse_margin(m) for m in margins], progress=progress, step_size=step,
             # random weights predict speckle; islands under 1 cc are what a trained model does not leave either
             cleanup=cleanup, **speed)
end = time.time()

# The DICOM writing again, as predict_case does it after the network, for the label map a trained model would give:
# the CT's own liver (TotalSegmentator's) and a tumour of 2 cm radius at its centre.
import numpy as np, SimpleITK as sitk, tempfile
from nnunet_ras.dicom.postprocess import clean_labels
from nnunet_ras.dicom.predict import _export
from nnunet_ras.dicom.series import read_ct_series
ct = read_ct_series(series)
labels = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(liver) == 5, ct.image, sitk.Transform(),
                                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
spacing = ct.image.GetSpacing()[::-1]
centre = np.argwhere(labels).mean(0)
z, y, x = np.ogrid[:labels.shape[0], :labels.shape[1], :labels.shape[2]]
labels[(labels == 1) & (((z - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2 +
                        ((x - centre[2]) * spacing[2]) ** 2 < 20 ** 2)] = 2
values = {'Liver': 1, 'GTV': 2}
written = tempfile.mkdtemp(dir=out + '/..')
liver_start = time.time()
labels, _ = clean_labels(labels, values, spacing, cleanup, None)
liver_report = _export(written, written, {'case': 'liver', 'labels': values}, labels, ct.image, ct, style,
                       [parse_margin(m) for m in margins], [], False)
liver_s = time.time() - liver_start
import shutil; shutil.rmtree(written)
with open('/proc/self/status') as f:
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
print(json.dumps({'read_s': marks['preprocessing'] - start, 'preprocess_s': marks['predicting'] - marks['preprocessing'],
                  'sliding_window_s': marks['tiles done'] - marks['predicting'],
                  'nnunet_export_s': marks['exporting'] - marks['tiles done'],
                  'dicom_writing_s': end - marks['exporting'], 'total_s': end - start,
                  'dicom_writing_liver_s': liver_s, 'liver_volumes_cc': liver_report['volumes_cc'],
                  'total_liver_s': end - start - (end - marks['exporting']) + liver_s,
                  'peak_rss_mb': peak_kb / 1024}))
"""


def model_folders(work: str, runs) -> dict:
    """Plans and a random-weight model folder for every run (made once)."""
    env = _env(work)
    pairs = sorted({RUNS[r][:2] for r in runs})
    subprocess.run([sys.executable, '-c', _PLAN_AND_SAVE, str(DATASET_ID), DATASET, json.dumps(pairs)], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    return {r: os.path.join(env['nnUNet_results'], DATASET, f'{RUNS[r][0]}__{RUNS[r][1]}__3d_fullres') for r in runs}


def plan_summary(model: str) -> dict:
    with open(os.path.join(model, 'plans.json')) as f:
        config = json.load(f)['configurations']['3d_fullres']
    return {'patch_size': config['patch_size'], 'spacing': [round(s, 2) for s in config['spacing']],
            'features': config['architecture']['arch_kwargs']['features_per_stage']}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', nargs='+', choices=sorted(RUNS), default=['default', 'RAS', 'RAS_own_plans'])
    parser.add_argument('--step_size', type=float, default=1.0, help="the sliding window's step (-step_size)")
    parser.add_argument('--tta', action='store_true', help='predict with mirroring')
    parser.add_argument('--bf16', action='store_true', help="the network in bfloat16 (predict's --bf16)")
    parser.add_argument('--torch_resampling', action='store_true',
                        help="nnU-Net's torch resampling for the export (predict's --torch_resampling)")
    parser.add_argument('--slice_mm', type=float, default=2.5)
    parser.add_argument('--work', default=os.path.join(ROOT, 'bench', 'results', 'full_ct_inference', 'work'),
                        help='data, plans and models (kept between runs)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'full_ct_inference'))
    parser.add_argument('--force', action='store_true')
    parser.add_argument('--timeout_s', type=float, default=1200, help='a run is stopped after this long')
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    series = make_data(args.work, args.slice_mm)
    models = model_folders(args.work, args.runs)
    setting = f"step{args.step_size:g}{'_tta' if args.tta else ''}{'_bf16' if args.bf16 else ''}" \
              f"{'_torchres' if args.torch_resampling else ''}"
    speed = {'bf16': args.bf16, 'torch_resampling': args.torch_resampling}
    results = {}
    for run in args.runs:
        result_file = os.path.join(args.out, f'{run}_{setting}.json')
        if os.path.isfile(result_file) and not args.force:
            with open(result_file) as f:
                kept = json.load(f)
            if 'dicom_writing_liver_s' in kept:  # else written by an earlier version of this bench: run again
                results[run] = kept
                continue
        out = os.path.join(args.work, f'prediction_{run}_{setting}')
        shutil.rmtree(out, ignore_errors=True)
        started = time.time()
        marks = os.path.join(args.work, f'marks_{run}_{setting}.json')
        try:
            answer = subprocess.run([sys.executable, '-c', _TIMED_PREDICT, series, out, models[run],
                                     str(args.step_size), '1' if args.tta else '0', json.dumps(MARGINS), marks,
                                     json.dumps(speed), LIVER],
                                    env=_env(args.work), check=True, capture_output=True, text=True, cwd=ROOT,
                                    timeout=args.timeout_s)
        except subprocess.CalledProcessError as e:
            print(f"{RUNS[run][2]}: failed:\n{e.stderr[-3000:]}")
            continue
        except subprocess.TimeoutExpired:
            reached = open(marks).read() if os.path.isfile(marks) else 'none'
            print(f"{RUNS[run][2]}: stopped after {args.timeout_s:.0f} s; stages reached (s from start): {reached}")
            continue
        result = {**json.loads(answer.stdout.strip().splitlines()[-1]), **plan_summary(models[run]),
                  'process_s': time.time() - started, 'step_size': args.step_size, 'tta': args.tta, **speed}
        with open(result_file + '.partial', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(result_file + '.partial', result_file)
        results[run] = result
    image = sitk.ReadImage(os.path.join(args.work, 'raw', DATASET, 'imagesTr', 'ct_000_0000.nii.gz'))
    print(f"\nCT {'x'.join(map(str, image.GetSize()))} at {' x '.join(f'{s:.2f}' for s in image.GetSpacing())} mm "
          f"(DICOM), {os.cpu_count()} CPU threads, step {args.step_size:g}, "
          f"{'with' if args.tta else 'without'} mirroring, {'bfloat16' if args.bf16 else 'float32'}, "
          f"{'torch' if args.torch_resampling else 'the plans'} resampling for the export; seconds. DICOM writing: "
          f"(a) of the model's (empty) prediction, (b) of a liver-sized label map (the CT's liver and a 2 cm tumour, "
          f"same process); total (b) = read to export + (b)\n")
    print('| network, plans | spacing mm | patch | read | preprocess | sliding window | nnU-Net export | '
          'RTSTRUCT + SEG + margins (a) | total (a) | RTSTRUCT + SEG + margins (b) | total (b) | peak memory MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for run, r in results.items():
        print(f"| {RUNS[run][2]} | {' x '.join(map(str, r['spacing']))} | {'x'.join(map(str, r['patch_size']))} | "
              f"{r['read_s']:.1f} | {r['preprocess_s']:.1f} | {r['sliding_window_s']:.1f} | "
              f"{r['nnunet_export_s']:.1f} | {r['dicom_writing_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['dicom_writing_liver_s']:.1f} | {r['total_liver_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
