"""nnU-Net v2 plugin: RAS U-Net, Dice-only and noisy-label trainers for radiotherapy target volumes."""
__version__ = "0.1.0"
