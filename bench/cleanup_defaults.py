"""Which clean-up should ``nnunet-ras predict`` apply by default? Dice and fragments with and without each step.

Runs a trained model once per case (in-process, nnU-Net's predictor, no mirroring) and applies the clean-up
variants of ``nnunet_ras.dicom.postprocess`` to the same prediction: none; islands under 0.1 / 0.5 / 1 cc removed
(per structure; the largest part always stays); per-slice hole filling; both. Cases: the held-out cases of the
model's data set (``imagesTs`` / ``labelsTs``) with Dice per structure, and, without reference, the real abdominal
CT of ``../shared/data/ct_abdomen_example`` (``example_ct_sm``, 3 mm; what a phantom-trained model does on real
anatomy: fragments), with its liver Dice against TotalSegmentator's liver, the parts per structure and the cc each
step removes or adds.

    .venv/bin/python bench/cleanup_defaults.py --model demo_run/nnUNet_results/Dataset501_LiverPhantom/<trainer>__<plans>__3d_fullres
"""
import argparse
import glob
import json
import os
import sys
import tempfile

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
sys.path.insert(0, ROOT)

from nnunet_ras.dicom.postprocess import Cleanup, clean_labels  # noqa: E402
from nnunet_ras.dicom.predict import predict_probabilities  # noqa: E402
from nnunet_ras.evaluation.metrics import dice  # noqa: E402

VARIANTS = {'none': ({}, ()), 'islands < 0.1 cc': (0.1, ()), 'islands < 0.5 cc': (0.5, ()),
            'islands < 1 cc': (1.0, ()), 'holes filled': ({}, 'all'), 'islands < 0.1 cc + holes': (0.1, 'all')}


def parts(mask: np.ndarray) -> int:
    return ndimage.label(mask, np.ones((3, 3, 3), bool))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='trained model folder')
    parser.add_argument('-f', nargs='+', default=['0'], help='folds')
    parser.add_argument('--raw', help="the data set's raw folder (default: from the model's dataset name)")
    args = parser.parse_args()
    with open(os.path.join(args.model, 'dataset.json')) as f:
        values = {k: v for k, v in json.load(f)['labels'].items() if k != 'background'}
    raw = args.raw or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.model))).replace(
        'nnUNet_results', 'nnUNet_raw'), os.path.basename(os.path.dirname(os.path.abspath(args.model))))
    cases = [(image, os.path.join(raw, 'labelsTs', os.path.basename(image)[:-len('_0000.nii.gz')] + '.nii.gz'), {})
             for image in sorted(glob.glob(os.path.join(raw, 'imagesTs', '*_0000.nii.gz')))]
    example = os.path.join(SHARED_DATA, 'ct_abdomen_example')  # TotalSegmentator's liver is class 5
    cases.append((os.path.join(example, 'example_ct_sm.nii.gz'), os.path.join(example, 'example_seg.nii.gz'),
                   {'liver': 5}))
    rows = []
    for image, reference_path, reference_values in cases:
        name = os.path.basename(image)[:-len('.nii.gz')]
        with tempfile.TemporaryDirectory() as work:
            segmentation, _ = predict_probabilities([args.model], args.f, 'checkpoint_final.pth', image, 'cpu', False,
                                                    work)
        labels = sitk.GetArrayFromImage(segmentation)
        spacing = segmentation.GetSpacing()[::-1]
        reference = sitk.GetArrayFromImage(sitk.ReadImage(reference_path))
        for variant, (islands, holes) in VARIANTS.items():
            cleanup = Cleanup('none', {k: islands for k in values} if islands else {},
                              list(values) if holes == 'all' else [])
            cleaned, report = clean_labels(labels, values, spacing, cleanup, None)
            row = {'case': name, 'variant': variant, 'reference': not reference_values}
            for structure, value in values.items():
                row[f'{structure} parts'] = parts(cleaned == value)
                if not reference_values or structure in reference_values:
                    row[f'{structure} Dice'] = dice(cleaned == value,
                                                    reference == reference_values.get(structure, value), True)
            row['changed cc'] = sum(r.get('removed_cc', 0) + r.get('added_cc', 0) for r in report)
            rows.append(row)
            print(row, flush=True)
    structures = list(values)
    print(f"\nmodel {args.model}, folds {args.f}, no mirroring; {len(cases) - 1} held-out cases + the real CT "
          f"(example_ct_sm, against TotalSegmentator's liver)\n")
    print('| variant | ' + ' | '.join(f'{s} Dice (held-out mean)' for s in structures) + ' | ' +
          ' | '.join(f'{s} parts (held-out mean)' for s in structures) + ' | real CT: liver Dice | real CT: ' +
          ' | real CT: '.join(f'{s} parts' for s in structures) + ' | real CT: cc changed |')
    print('|' + '---|' * (3 * len(structures) + 3))
    for variant in VARIANTS:
        mine = [r for r in rows if r['variant'] == variant and r['reference']]
        real = next(r for r in rows if r['variant'] == variant and not r['reference'])
        print(f"| {variant} | " + ' | '.join(f"{np.mean([r[f'{s} Dice'] for r in mine]):.4f}" for s in structures) +
              ' | ' + ' | '.join(f"{np.mean([r[f'{s} parts'] for r in mine]):.1f}" for s in structures) + ' | ' +
              f"{real['liver Dice']:.4f} | " + ' | '.join(str(real[f'{s} parts']) for s in structures) +
              f" | {real['changed cc']:.2f} |")


if __name__ == '__main__':
    main()
