"""Contour quality scores from a trained QAM: per-case scoring, the training-case ranking, and its ROC AUC.

A case is scored tile by tile, with the training patch size as the tile (the QAM was trained on patches), and the
score is the mean over the tiles that hold foreground (all tiles if the label is empty). Higher means the QAM trusts
the label more; rankings list the lowest score first, the contours to review first.
"""
import csv
import io
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
from nnunetv2.paths import nnUNet_raw
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from scipy.stats import mannwhitneyu

from nnunet_ras._io import write_json_atomically, write_text_atomically
from nnunet_ras.networks.quality import QualityAssessmentNet
from nnunet_ras.quality.weighting import case_label_channels, overfitting_control

MANIFEST_NAME = 'corruption_manifest.json'
RANKING_NAME = 'quality_ranking'


@torch.no_grad()
def score_case(qam: QualityAssessmentNet, ocm_lambda: Optional[float], data: np.ndarray, seg: np.ndarray,
               label_manager: LabelManager, patch_size: Sequence[int], device: torch.device,
               tiles_per_batch: int = 4) -> float:
    """Mean QAM score (after the OCM) over the foreground tiles of one preprocessed case: data (C, z, y, x), seg
    (1, z, y, x). In a 2D configuration the tiles are patches of single slices."""
    two_d = len(patch_size) == 2
    tile = (1, *patch_size) if two_d else tuple(patch_size)
    pad = [(0, 0)] + [(0, max(0, t - s)) for t, s in zip(tile, data.shape[1:])]
    data, seg = np.pad(data, pad), np.pad(np.where(seg < 0, 0, seg), pad)  # padding is background
    channels = case_label_channels(seg, label_manager)
    steps = compute_steps_for_sliding_window(data.shape[1:], tile, 0.5)
    starts = np.stack(np.meshgrid(*steps, indexing='ij'), -1).reshape(-1, len(tile))
    windows = [tuple(slice(s, s + t) for s, t in zip(start, tile)) for start in starts]
    windows = [w for w in windows if seg[(0, *w)].any()] or windows
    qam.eval()
    scores = []
    for i in range(0, len(windows), tiles_per_batch):
        chunk = windows[i:i + tiles_per_batch]
        image = torch.from_numpy(np.stack([data[(slice(None), *w)] for w in chunk])).float()
        label = torch.from_numpy(np.stack([channels[(slice(None), *w)] for w in chunk])).float()
        if two_d:
            image, label = image[:, :, 0], label[:, :, 0]
        scores.append(overfitting_control(qam(image.to(device), label.to(device)), ocm_lambda).cpu())
    return float(torch.cat(scores).mean())


def corrupted_cases(dataset_name: str) -> Optional[Dict[str, bool]]:
    """case -> corrupted, from the data set's ``corruption_manifest.json`` (``nnunet-ras corrupt-labels``)."""
    path = os.path.join(nnUNet_raw or '', dataset_name, MANIFEST_NAME)
    if not nnUNet_raw or not os.path.isfile(path):
        return None
    with open(path) as f:
        return {case: bool(entry['corrupted']) for case, entry in json.load(f)['cases'].items()}


def separation_auc(scores: Dict[str, float], corrupted: Dict[str, bool]) -> Optional[float]:
    """ROC AUC of 'clean scores higher than corrupted ones' (0.5 = chance, 1 = perfect); None if a class is absent."""
    clean = [s for c, s in scores.items() if c in corrupted and not corrupted[c]]
    noisy = [s for c, s in scores.items() if c in corrupted and corrupted[c]]
    if not clean or not noisy:
        return None
    return float(mannwhitneyu(clean, noisy).statistic / (len(clean) * len(noisy)))


def write_ranking(rows: List[dict], folder: str, name: str = RANKING_NAME, summary: Optional[dict] = None) -> None:
    """``<name>.csv`` (lowest score first) and ``<name>.json`` (rows + summary), each written atomically."""
    rows = sorted(rows, key=lambda r: r['score'])
    for rank, row in enumerate(rows, 1):
        row['rank'] = rank
    fields = list(dict.fromkeys(k for row in rows for k in row))
    path = os.path.join(folder, name)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path + '.csv', buffer.getvalue())
    write_json_atomically(path + '.json', {'summary': summary or {}, 'cases': rows})


def _logged_means(log: Iterable[tuple], from_epoch: int) -> dict:
    late = [(s, w) for epoch, s, w in log if epoch >= from_epoch]
    if not late:
        return {'logged_batches': 0, 'mean_logged_score': None, 'mean_weight': None}
    return {'logged_batches': len(late), 'mean_logged_score': float(np.mean([s for s, _ in late])),
            'mean_weight': float(np.mean([w for _, w in late]))}


def quality_over_training(quality_log: Dict[str, List[tuple]], corrupted: Dict[str, bool], cases: Iterable[str],
                          num_epochs: int, windows: int = 10) -> List[dict]:
    """How the weighting separated the corrupted labels as training went on, in ``windows`` equal spans of epochs.

    Per span, from the training batches' log (case -> [(epoch, score, weight)]): the mean weight the clean and the
    corrupted cases got, and the ROC AUC of their mean logged score (clean above corrupted). This is the evidence for
    *when* the QAM learns which labels are wrong, and whether it does so before the network has fitted them (noisy
    labels do their harm late in training: Arpit et al., "A Closer Look at Memorization in Deep Networks", ICML 2017).
    A span without both kinds of case in its batches has no AUC (None).
    """
    cases = [c for c in cases if c in corrupted]
    bounds = np.linspace(0, num_epochs, windows + 1)
    spans = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        first, last = int(np.ceil(start)), int(np.ceil(end)) - 1
        if last < first:
            continue
        scores, weights = {}, {False: [], True: []}
        for case in cases:
            entries = [(s, w) for epoch, s, w in quality_log.get(case, ()) if first <= epoch <= last]
            if entries:
                scores[case] = float(np.mean([s for s, _ in entries]))
                weights[corrupted[case]].extend(w for _, w in entries)
        spans.append({'first_epoch': first, 'last_epoch': last,
                      'mean_weight_clean': float(np.mean(weights[False])) if weights[False] else None,
                      'mean_weight_corrupted': float(np.mean(weights[True])) if weights[True] else None,
                      'auc_logged_score': separation_auc(scores, corrupted)})
    return spans


def write_training_ranking(trainer, quality_log: Optional[Dict[str, List[tuple]]] = None) -> dict:
    """Rank the fold's training and validation cases by the score of the trainer's ``ranking_qam`` (the weight
    average of the last epochs' QAMs) and, for comparison, of the last epoch's QAM; add the AUCs against the
    manifest.

    Also lists each case's mean weight (and mean score) over the batches of the second half of training, from
    ``quality_log`` (default: the trainer's own; under DDP the caller passes all ranks' logs merged), and, with a
    manifest, how the weights of clean and corrupted cases moved over training (``quality_over_training``).
    """
    quality_log = trainer.quality_log if quality_log is None else quality_log
    training_keys, validation_keys = trainer.do_split()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, training_keys + validation_keys)
    corrupted = corrupted_cases(trainer.plans_manager.dataset_name)
    half = trainer.num_epochs // 2
    # the weight-averaged QAM ranks; the last epoch's is scored too, where it is another network, to show what the
    # averaging changed
    qams = {'score': trainer.ranking_qam}
    if trainer.ranking_qam is not trainer.qam:
        qams['score_final_qam'] = trainer.qam
    rows = []
    for split, keys in (('train', training_keys), ('validation', validation_keys)):
        for key in keys:
            data, seg, _, _ = dataset.load_case(key)
            data, seg = np.asarray(data, dtype=np.float32), np.asarray(seg)
            row = {'case': key, 'split': split,
                   **{name: score_case(qam, trainer.ocm_lambda, data, seg, trainer.label_manager,
                                       trainer.configuration_manager.patch_size, trainer.device)
                      for name, qam in qams.items()},
                   **_logged_means(quality_log.get(key, ()), half)}
            row.setdefault('score_final_qam', row['score'])
            if corrupted is not None:
                row['corrupted'] = corrupted.get(key)
            rows.append(row)
    summary = {'ocm_lambda': trainer.ocm_lambda, 'qam_features': list(trainer.qam_features),
               'qam_image_gradient_channels': trainer.qam.image_gradient_channels,
               'qam_warmup_fraction': trainer.qam_warmup_fraction,
               'qam_averaged_epochs': int(trainer.qam_average.n_averaged)}
    if corrupted is not None:
        for split in ('train', 'validation'):
            in_split = [r for r in rows if r['split'] == split]
            summary[f'auc_{split}'] = separation_auc({r['case']: r['score'] for r in in_split}, corrupted)
            summary[f'auc_{split}_final_qam'] = separation_auc({r['case']: r['score_final_qam'] for r in in_split},
                                                               corrupted)
            weighted = {r['case']: r['mean_weight'] for r in in_split if r['mean_weight'] is not None}
            summary[f'auc_{split}_mean_weight'] = separation_auc(weighted, corrupted)
        summary['over_training'] = quality_over_training(quality_log, corrupted, training_keys, trainer.num_epochs)
    write_ranking(rows, trainer.output_folder, summary=summary)
    trainer.print_to_log_file(f'QAM quality ranking written to {RANKING_NAME}.csv/.json; {summary}')
    return summary
