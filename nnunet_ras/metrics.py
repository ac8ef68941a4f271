"""Overlap metrics used by the demo and the benchmarks."""
import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    """Dice of one label. Both empty counts as 1.0 (nothing to find, nothing found)."""
    p, r = prediction == label, reference == label
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2 * np.logical_and(p, r).sum() / denominator)
