"""Data-augmentation pieces for plans that window CT inside the network."""
from typing import Optional, Sequence

import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform


class ClipToIntensityWindow(ImageOnlyTransform):
    """Clips windowed channels (raw HU under ``NoNormalization``) to their window before any other augmentation.

    nnU-Net's gamma and contrast augmentations rescale a patch by its own min/max and mean/std; on raw HU, where air
    (-1000) and bone stretch that range, they shift soft tissue by tens of HU and break the [-150, 150] window the
    network applies. After clipping they act on the window, as they act on nnU-Net's own CT normalisation. The
    network clips again at inference, so training and stock prediction see the same values.
    """

    def __init__(self, windows: Sequence[Optional[Sequence[float]]]):
        super().__init__()
        self.windows = [list(w) if w is not None else None for w in windows]

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        for channel, window in enumerate(self.windows):
            if window is not None:
                img[channel].clamp_(window[0], window[1])
        return img
