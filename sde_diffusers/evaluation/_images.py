"""Input checks shared by the feature extractors: image batches to float pixels in ``[0, 1]``."""

from __future__ import annotations

import math

import numpy as np
import torch

# Values this far outside the declared range (as a fraction of its width) mean the range is wrong
# (e.g. [0, 255] pixels declared as [0, 1], or [-1, 1] samples declared as [0, 1]); smaller overshoot is
# what samplers produce and is clamped.
_RANGE_SLACK = 0.5


def to_unit_range(
    images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0), name: str = "images"
) -> torch.Tensor:
    """Return ``images`` (shape ``(batch, channels, height, width)``) as float32 in ``[0, 1]``.

    ``uint8`` input is divided by 255 (``input_range`` is ignored); float input is mapped linearly from
    ``input_range`` and clamped. Raises if the values are far outside ``input_range``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (batch, channels, height, width), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not (images.is_floating_point() or images.dtype in (torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must be uint8 or a float tensor, got dtype {images.dtype}")
    if (
        not isinstance(input_range, (tuple, list))
        or len(input_range) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in input_range)
        or input_range[1] <= input_range[0]
    ):
        raise ValueError(f"input_range must be a pair (low, high) with low < high, got {input_range!r}")
    low, high = float(input_range[0]), float(input_range[1])
    x = images.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    slack = _RANGE_SLACK * (high - low)
    lo_seen, hi_seen = float(x.min()), float(x.max())
    if lo_seen < low - slack or hi_seen > high + slack:
        raise ValueError(
            f"{name} have values in [{lo_seen:.3g}, {hi_seen:.3g}], far outside input_range=({low:g}, {high:g}); "
            "pass the range your images use, e.g. input_range=(-1, 1) for model samples or (0, 255) for pixels"
        )
    return ((x - low) / (high - low)).clamp_(0.0, 1.0)
