"""Speed / accuracy of the inference options, side by side in one run: the sliding window's step (``-step_size``),
test-time mirroring (``--disable_tta``), bfloat16 on the CPU (``--bf16``) and nnU-Net's torch resampling for the
export (``--torch_resampling``), on the held-out cases of ``make demo``'s phantom data set.

For each setting, ``nnunet-ras predict`` runs on every held-out case (NIfTI in, label map out, 2 CPU cores, one at a
time): the table gives the wall time over all cases, the ratio to nnU-Net's default setting (step 0.5 with
mirroring), and the mean liver and tumour Dice against the reference labels with the change from the default.
Resumable: a setting whose predictions exist in ``--out`` is not run again (``--force`` to redo all).

    python bench/inference_options.py [--workdir demo_run] [--out bench/results/inference_options]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nnunet_ras.demo import DEMO_DATASET, demo_model_folder, tumour_dice_table  # noqa: E402
from nnunet_ras.workspace import Workspace  # noqa: E402

SETTINGS = [('step 0.5, mirroring (nnU-Net default)', ['-step_size', '0.5']),
            ('step 0.5, no mirroring', ['-step_size', '0.5', '--disable_tta']),
            ('step 0.75, no mirroring', ['-step_size', '0.75', '--disable_tta']),
            ('step 1.0, no mirroring', ['-step_size', '1.0', '--disable_tta']),
            ('step 0.5, mirroring, bf16', ['-step_size', '0.5', '--bf16']),
            ('step 0.5, mirroring, torch resampling', ['-step_size', '0.5', '--torch_resampling']),
            ('step 1.0, no mirroring, bf16, torch resampling',
             ['-step_size', '1.0', '--disable_tta', '--bf16', '--torch_resampling'])]


def predict_all(model: str, images: str, out: str, options: list, env: dict) -> float:
    """Predicts every image of ``images`` into ``out`` with ``nnunet-ras predict``; returns the wall seconds."""
    work = out + '.partial'
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    start = time.time()
    for name in sorted(os.listdir(images)):
        case_out = os.path.join(work, 'case')
        subprocess.run(['nnunet-ras', 'predict', '-i', os.path.join(images, name), '-o', case_out, '-m', model,
                        '-device', 'cpu', '--postprocessing', 'none', *options], env=env, check=True,
                       capture_output=True)
        case = name[:-len('_0000.nii.gz')]
        os.replace(os.path.join(case_out, f'{case}.nii.gz'), os.path.join(work, f'{case}.nii.gz'))
        shutil.rmtree(case_out)
    seconds = time.time() - start
    with open(os.path.join(work, 'seconds.json'), 'w') as f:
        json.dump({'seconds': seconds}, f)
    os.replace(work, out)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', default='demo_run', help="make demo's folder (its model and phantom data set)")
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'inference_options'))
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args()
    # nnUNet_def_n_proc stays unset: nnU-Net caps the sliding window's torch threads at it (1 would use one core)
    env = Workspace(args.workdir, keep_set_folders=True).env
    model = demo_model_folder(args.workdir)
    raw = os.path.join(env['nnUNet_raw'], DEMO_DATASET)
    if not os.path.isfile(os.path.join(model, 'fold_0', 'checkpoint_final.pth')):
        sys.exit(f"no demo model at {model}: run `make demo` first")
    rows = []
    for label, options in SETTINGS:
        out = os.path.join(args.out, label.split(' (')[0].replace(', ', '_').replace(' ', '_'))
        if args.force:
            shutil.rmtree(out, ignore_errors=True)
        if not os.path.isdir(out):
            predict_all(model, os.path.join(raw, 'imagesTs'), out, options, env)
        with open(os.path.join(out, 'seconds.json')) as f:
            seconds = json.load(f)['seconds']
        scores = tumour_dice_table(out, os.path.join(raw, 'labelsTs'))
        rows.append((label, seconds, {k: float(np.mean([s[k] for s in scores.values()])) for k in ('liver', 'tumour')},
                     len(scores)))
    base_seconds, base = rows[0][1], rows[0][2]
    print(f"`nnunet-ras predict` on the {rows[0][3]} held-out phantom cases of make demo, {os.cpu_count()} CPU cores\n")
    print('| setting | wall s (all cases) | time vs default | liver Dice | tumour Dice |')
    print('|---|---|---|---|---|')
    for label, seconds, dice, _ in rows:
        print(f"| {label} | {seconds:.1f} | {seconds / base_seconds:.2f}x | {dice['liver']:.4f} "
              f"({dice['liver'] - base['liver']:+.4f}) | {dice['tumour']:.4f} ({dice['tumour'] - base['tumour']:+.4f}) |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
