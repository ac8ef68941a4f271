"""How far can the contour quality score be trusted? Spearman rank correlation between the QAM score of
``nnunet-ras quality`` and the true Dice of deliberately corrupted test labels.

    python bench/quality_trust.py [--row 50:5-13] [--size 64] [--schedule 20x25] [--versions 4] [--workdir ...]

Uses the QAM+OCM models trained by bench/noisy_labels.py (one per JSRT structure). Each clean test label is
corrupted ``--versions`` times (dilation or erosion, radius drawn from 0 up to the row's largest radius at the
benchmark's image size, seeded), every version is scored with the model's QAM, and its Dice against the clean label
is the truth the score should rank.
"""
import argparse
import glob
import json
import os

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr

from common import Workspace, model_folder
from noisy_labels import (DEFAULT_SCHEDULE, STRUCTURE_IDS, default_workdir, jsrt_noisy_name, parse_row, scaled,
                          trainer_name)
from nnunet_ras_bench_trainers import parse_schedule, schedule_name

from nnunet_ras.evaluation.metrics import dice
from nnunet_ras.noise.corrupt import corrupt_label_map
from nnunet_ras.quality.scoring import QualityModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--row', default='50:5-13', help='the noisy_labels.py row whose QAM+OCM models are used')
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--schedule', default=DEFAULT_SCHEDULE, help="those models' EPOCHSxITERATIONS")
    parser.add_argument('--workdir', default=None, help="default: noisy_labels.py's workspace at --size")
    parser.add_argument('--versions', type=int, default=4, help='corrupted versions per test label')
    args = parser.parse_args()
    args.workdir = args.workdir or default_workdir(args.size)
    trainer = trainer_name('QAM+OCM', schedule_name(parse_schedule(args.schedule)))
    ws = Workspace(args.workdir)
    _, radii = parse_row(args.row)
    largest = scaled(radii, args.size)[1]
    rng = np.random.default_rng(0)
    lines = ['| structure | test labels x versions | Spearman rho (score vs true Dice) | p |', '|---|---|---|---|']
    results = {}
    for structure, source in STRUCTURE_IDS.items():
        noisy_id = ws.dataset_ids().get(jsrt_noisy_name(structure, args.row))
        folder = noisy_id and model_folder(ws, noisy_id, trainer, 'nnUNetBenchPlans', '2d')
        if not folder or not os.path.isfile(os.path.join(folder, 'fold_0', 'checkpoint_final.pth')):
            continue
        model = QualityModel(folder, '0', device='cpu')
        clean_folder = os.path.join(ws.dataset_folder(source), 'labelsTs')
        images = os.path.join(ws.dataset_folder(source), 'imagesTs')
        scratch = os.path.join(args.workdir, 'quality_trust', structure)
        os.makedirs(scratch, exist_ok=True)
        scores, truth = [], []
        for path in sorted(glob.glob(os.path.join(clean_folder, '*.png'))):
            case = os.path.basename(path)[:-4]
            clean_image = sitk.ReadImage(path)
            clean = sitk.GetArrayFromImage(clean_image)
            for version in range(args.versions):
                radius = int(rng.integers(0, largest + 1))
                noisy = clean if radius == 0 else corrupt_label_map(clean, [1], rng, (radius, radius))[0]
                out_image = sitk.GetImageFromArray(noisy.astype(clean.dtype))
                out_image.CopyInformation(clean_image)
                out = os.path.join(scratch, f'{case}_v{version}.png')
                sitk.WriteImage(out_image, out)
                scores.append(model.score([os.path.join(images, f'{case}_0000.png')], out))
                truth.append(dice(noisy, clean, 1))
        rho, p = spearmanr(scores, truth)
        results[structure] = {'rho': float(rho), 'p': float(p), 'n': len(scores)}
        lines.append(f'| {structure} | {len(scores)} | {rho:.3f} | {p:.1e} |')
    table = '\n'.join(lines)
    print(table)
    with open(os.path.join(args.workdir, 'quality_trust.json'), 'w') as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.workdir, 'quality_trust.md'), 'w') as f:
        f.write(table + '\n')


if __name__ == '__main__':
    main()
