"""Segmentation metrics in physical units, folder evaluation and the comparison of trainers (docs/evaluation.md)."""
