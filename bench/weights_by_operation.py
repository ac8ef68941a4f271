"""How a QAM trainer weighted dilated and eroded labels over training, against the clean ones.

    python bench/weights_by_operation.py FOLD_FOLDER RAW_DATASET_FOLDER [--windows 10]

FOLD_FOLDER is a finished QAM run's ``fold_0`` (its ``checkpoint_final.pth`` carries the training batches' quality
log); RAW_DATASET_FOLDER is the corrupted data set's raw folder (its ``corruption_manifest.json`` says which labels
were dilated and which eroded). Per span of epochs the table gives the mean weight of the clean, the dilated and the
eroded training labels, and the ROC AUC of their mean logged scores (clean above dilated, clean above eroded), from
``quality_over_training``, run once per operation. A QAM that settles on a size cue ("a larger label is a better
one") shows as dilations weighted above the clean labels, an AUC below 0.5.
"""
import argparse
import json
import os

import torch

from nnunet_ras.quality.ranking import MANIFEST_NAME, quality_over_training
from nnunet_ras.quality.weighting import CHECKPOINT_KEY


def operation_of(entry: dict) -> str:
    """'clean', or the operation of a corrupted case's labels ('dilate', 'erode'; 'mixed' if they differ)."""
    if not entry['corrupted']:
        return 'clean'
    operations = {label['operation'] for label in entry['labels'].values() if label['operation'] != 'none'}
    return operations.pop() if len(operations) == 1 else 'mixed'


def weights_by_operation(log: dict, manifest: dict, num_epochs: int, windows: int) -> dict:
    """operation -> the spans of ``quality_over_training`` for the clean cases against that operation's."""
    kinds = {case: operation_of(entry) for case, entry in manifest['cases'].items()}
    result = {}
    for operation in sorted(set(kinds.values()) - {'clean'}):
        corrupted = {case: kind == operation for case, kind in kinds.items() if kind in ('clean', operation)}
        result[operation] = quality_over_training(log, corrupted, list(log), num_epochs, windows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('fold_folder')
    parser.add_argument('raw_folder')
    parser.add_argument('--windows', type=int, default=10)
    args = parser.parse_args()
    checkpoint_path = os.path.join(args.fold_folder, 'checkpoint_final.pth')
    checkpoint = torch.load(checkpoint_path, map_location='cpu', weights_only=False)
    if CHECKPOINT_KEY not in checkpoint:
        raise SystemExit(f'{checkpoint_path}: no quality log (not a QAM trainer\'s checkpoint)')
    with open(os.path.join(args.raw_folder, MANIFEST_NAME)) as f:
        manifest = json.load(f)
    num_epochs = checkpoint['current_epoch']
    spans = weights_by_operation(checkpoint[CHECKPOINT_KEY]['log'], manifest, num_epochs, args.windows)
    operations = list(spans)
    if not operations:
        raise SystemExit(f'{args.raw_folder}/{MANIFEST_NAME}: no corrupted case, nothing to compare')
    print(f'{args.fold_folder}: {num_epochs} epochs\n')
    print('| epochs | clean weight | ' + ' | '.join(f'{o} weight | AUC clean vs {o}' for o in operations) + ' |')
    print('|---' * (2 + 2 * len(operations)) + '|')
    for i, span in enumerate(spans[operations[0]]):
        cells = [f"{span['first_epoch']}-{span['last_epoch']}", f"{span['mean_weight_clean']:.2f}"]
        for operation in operations:
            other = spans[operation][i]
            auc = other['auc_logged_score']
            cells += [f"{other['mean_weight_corrupted']:.2f}" if other['mean_weight_corrupted'] is not None else '-',
                      f'{auc:.3f}' if auc is not None else '-']
        print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
