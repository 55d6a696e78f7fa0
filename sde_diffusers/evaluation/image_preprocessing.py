"""Batched torch image preprocessing that reproduces transformers' image processors (and Pillow's resampling).

Feature extractors backed by `transformers` vision models (DINOv2, CLIP) expect the preprocessing their image
processor defines: resize (shortest edge or an exact size, Pillow filter), centre crop, rescale to ``[0, 1]``,
normalise with a per-channel mean and std. The processors do this one PIL image at a time on the CPU;
:class:`ImagePreprocessing` does the same on a batch tensor on any device, so that evaluating 50,000 samples does
not leave the GPU.

Pillow resizes 8-bit images in two separable passes (horizontal, then vertical) with fixed-point filter
coefficients (22 fractional bits) and rounds and clips to 8 bits after each pass. With ``arithmetic="uint8"`` (the
default) the resampling matrices here are built the way Pillow builds its coefficients and applied with the same
rounding, in float64 (every intermediate is an integer below 2**53, so the result is exact), which reproduces the
processors' output bit for bit on square images (what evaluation uses). On non-square images recent Pillow
releases sometimes run the vertical pass first, which moves a few pixels by a level or more.
``arithmetic="float"`` skips the fixed point and the rounding (Pillow's float mode, i.e. ``torch``'s
``interpolate(..., antialias=True)``): EDM2's fast FD_DINOv2 path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ._images import to_unit_range

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImagePreprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2 fractional bits
_CHUNK = 16  # images preprocessed at a time
# PIL.Image.Resampling codes, as stored in preprocessor_config.json ("resample": 3)
_PIL_CODES = {1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's (and Keys') bicubic; torch's non-antialiased bicubic uses -0.75
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x)  # numpy's sinc is the normalised sin(pi x) / (pi x)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, _sinc(x) * (0.54 + 0.46 * np.cos(np.pi * x)), 0.0)


# name -> (filter, support in input pixels at scale 1)
_FILTERS = {
    "box": (lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64), 0.5),
    "bilinear": (lambda x: np.clip(1.0 - np.abs(x), 0.0, None), 1.0),
    "hamming": (_hamming, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (lambda x: np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0), 3.0),
}


@lru_cache(maxsize=64)
def _resampling_matrix(in_size: int, out_size: int, resample: str, fixed_point: bool) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of one Pillow resampling pass (antialiased when shrinking)."""
    filt, base_support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # shrinking widens the filter: this is the antialiasing
    support = base_support * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int(): C truncation, as Pillow
        hi = min(int(center + support + 0.5), in_size)
        weights = filt((np.arange(lo, hi) - center + 0.5) / filterscale)
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        matrix[i, lo:hi] = weights
    if fixed_point:
        # round half away from zero to 22 fractional bits, as Pillow's normalize_coeffs_8bpc
        matrix = np.trunc(matrix * (1 << _PRECISION_BITS) + np.where(matrix < 0, -0.5, 0.5))
    return matrix


def _as_pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, Mapping):
        if not {"height", "width"} <= set(value):
            raise ValueError(f"{name} must have 'height' and 'width', got {dict(value)}")
        value = (value["height"], value["width"])
    elif isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def _as_triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must hold 3 per-channel values (RGB), got {value!r}")
    out = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize, centre crop, rescale and normalise a batch of images as a transformers image processor does.

    Build it from a processor's configuration with :meth:`from_processor_config` or :meth:`from_pretrained`, or
    directly. Calling it maps images `(batch, 1 or 3, height, width)` (``uint8`` pixels, or floats in
    ``input_range``) to the model's ``pixel_values`` `(batch, 3, crop_height, crop_width)` in float32.

    Args:
        resize (`int` or `tuple[int, int]`, *optional*): an `int` resizes the shorter edge to it (the processors'
            ``{"shortest_edge": n}``, the longer edge becomes ``int(n * long / short)``); a pair resizes to exactly
            ``(height, width)``; `None` does not resize.
        crop_size (`tuple[int, int]`, *optional*): centre crop ``(height, width)`` (zero-padded if larger than the
            image, as the processors do); `None` does not crop.
        resample (`str`, defaults to `"bicubic"`): Pillow filter: ``"bicubic"``, ``"bilinear"``, ``"lanczos"``,
            ``"box"`` or ``"hamming"``.
        image_mean (`tuple[float, float, float]`, defaults to ImageNet's): subtracted after rescaling.
        image_std (`tuple[float, float, float]`, defaults to ImageNet's): divides after subtracting the mean.
        rescale_factor (`float`, defaults to `1/255`): multiplies the 8-bit pixel values.
        arithmetic (`str`, defaults to `"uint8"`): ``"uint8"`` reproduces Pillow's 8-bit resampling (rounded after
            each pass; float inputs are rounded to 8 bits first, as a PIL image would be); ``"float"`` resamples
            the unrounded values (EDM2's fast path). See the module docstring.
    """

    resize: int | tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    resample: str = "bicubic"
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    rescale_factor: float = 1.0 / 255.0
    arithmetic: str = "uint8"

    def __post_init__(self) -> None:
        if self.resize is not None and not isinstance(self.resize, int):
            object.__setattr__(self, "resize", _as_pair(self.resize, "resize"))
        elif isinstance(self.resize, bool) or (isinstance(self.resize, int) and self.resize < 1):
            raise ValueError(f"resize must be a positive int or (height, width), got {self.resize!r}")
        if self.crop_size is not None:
            object.__setattr__(self, "crop_size", _as_pair(self.crop_size, "crop_size"))
        if self.resample not in _FILTERS:
            raise ValueError(f"resample must be one of {sorted(_FILTERS)}, got {self.resample!r}")
        object.__setattr__(self, "image_mean", _as_triple(self.image_mean, "image_mean"))
        object.__setattr__(self, "image_std", _as_triple(self.image_std, "image_std"))
        if not all(s > 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        if not (isinstance(self.rescale_factor, (int, float)) and 0 < self.rescale_factor < math.inf):
            raise ValueError(f"rescale_factor must be a positive number, got {self.rescale_factor!r}")
        if self.arithmetic not in ("uint8", "float"):
            raise ValueError(f"arithmetic must be 'uint8' or 'float', got {self.arithmetic!r}")

    # ------------------------------------------------------------------------------------------------------
    # Construction from a processor configuration
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any], arithmetic: str = "uint8") -> ImagePreprocessing:
        """The preprocessing a ``preprocessor_config.json`` (``BitImageProcessor``, ``CLIPImageProcessor``) defines.

        Args:
            config (`Mapping`): the processor's configuration (``processor.to_dict()`` or the parsed JSON).
            arithmetic (`str`, defaults to `"uint8"`): see the class docstring.

        Returns:
            `ImagePreprocessing`

        Raises:
            ValueError: a size other than ``{"shortest_edge"}`` / ``{"height", "width"}``, or a filter without
                separable coefficients (nearest).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (a processor's to_dict()), got {type(config).__name__}")
        resize: int | tuple[int, int] | None = None
        if config.get("do_resize", True):
            size = config.get("size")
            if isinstance(size, Mapping) and set(k for k, v in size.items() if v is not None) == {"shortest_edge"}:
                resize = int(size["shortest_edge"])
            elif isinstance(size, Mapping) and {"height", "width"} <= set(size):
                resize = _as_pair(size, "size")
            else:
                raise ValueError(
                    f"unsupported processor size {size!r}: expected {{'shortest_edge': n}} or "
                    "{'height': h, 'width': w}"
                )
        crop = _as_pair(config["crop_size"], "crop_size") if config.get("do_center_crop", False) else None
        code = config.get("resample", 2)
        resample = _PIL_CODES.get(int(code)) if isinstance(code, (int, np.integer)) else None
        if resample is None:
            raise ValueError(f"unsupported resample {code!r}: expected one of {_PIL_CODES} (not nearest)")
        normalize = config.get("do_normalize", True)
        return cls(
            resize=resize,
            crop_size=crop,
            resample=resample,
            image_mean=config.get("image_mean", IMAGENET_MEAN) if normalize else (0.0, 0.0, 0.0),
            image_std=config.get("image_std", IMAGENET_STD) if normalize else (1.0, 1.0, 1.0),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
            arithmetic=arithmetic,
        )

    @classmethod
    def from_pretrained(
        cls, path_or_repo: str | os.PathLike, arithmetic: str = "uint8", **hub_kwargs: Any
    ) -> ImagePreprocessing:
        """Read ``preprocessor_config.json`` from a local folder or a Hub repository (uses `transformers`).

        Args:
            path_or_repo (`str` or `os.PathLike`): folder or repo id.
            arithmetic (`str`, defaults to `"uint8"`): see the class docstring.
            hub_kwargs: passed to transformers' loader (``revision``, ``cache_dir``, ``local_files_only``, ...).

        Raises:
            FileNotFoundError: there is no ``preprocessor_config.json``.
        """
        from transformers.image_processing_base import ImageProcessingMixin

        try:
            config, _ = ImageProcessingMixin.get_image_processor_dict(os.fspath(path_or_repo), **hub_kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"no image processor configuration (preprocessor_config.json) in {os.fspath(path_or_repo)!r}: {err}"
            ) from err
        return cls.from_processor_config(config, arithmetic=arithmetic)

    def to_processor_config(self) -> dict[str, Any]:
        """Keyword arguments that build the equivalent transformers processor (``BitImageProcessor(**config)``)."""
        codes = {name: code for code, name in _PIL_CODES.items()}
        if self.resize is None:
            size: dict[str, int] = {"shortest_edge": 1}
        elif isinstance(self.resize, int):
            size = {"shortest_edge": self.resize}
        else:
            size = {"height": self.resize[0], "width": self.resize[1]}
        crop = self.crop_size or (1, 1)
        return {
            "do_resize": self.resize is not None,
            "size": size,
            "resample": codes[self.resample],
            "do_center_crop": self.crop_size is not None,
            "crop_size": {"height": crop[0], "width": crop[1]},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for reports and the metadata of cached statistics."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    # ------------------------------------------------------------------------------------------------------
    # Geometry
    # ------------------------------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize step (before cropping)."""
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the ``pixel_values`` for an input of ``(height, width)``."""
        return self.crop_size or self.resized_size(height, width)

    # ------------------------------------------------------------------------------------------------------
    # Running
    # ------------------------------------------------------------------------------------------------------
    def _resample(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pillow's two passes (horizontal, then vertical) on pixels in ``[0, 255]``."""
        fixed = self.arithmetic == "uint8"
        for axis, (n_in, n_out) in ((3, (x.shape[3], size[1])), (2, (x.shape[2], size[0]))):
            if n_in == n_out:
                continue  # Pillow skips a pass that does not change the size
            matrix = torch.from_numpy(_resampling_matrix(n_in, n_out, self.resample, fixed)).to(x.device, x.dtype)
            x = x @ matrix.T if axis == 3 else matrix @ x
            if fixed:
                # Pillow: add half, shift out the fractional bits (a floor), clip to 8 bits
                x = x.add_(1 << (_PRECISION_BITS - 1)).mul_(2.0**-_PRECISION_BITS).floor_().clamp_(0.0, 255.0)
        return x

    def _center_crop(self, x: torch.Tensor) -> torch.Tensor:
        ch, cw = self.crop_size  # type: ignore[misc]
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # the processors pad with zeros (black) first
            pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
            top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
            x = torch.nn.functional.pad(x, (left, pad_w - left, top, pad_h - top))
            h, w = x.shape[-2:]
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top : top + ch, left : left + cw]

    def __call__(
        self,
        images: torch.Tensor | np.ndarray,
        input_range: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Preprocess a batch.

        Args:
            images: `(batch, 1 or 3, height, width)`; ``uint8`` pixels, or floats in ``input_range``. Grayscale is
                repeated to RGB (the processors' ``do_convert_rgb``).
            input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float inputs.
            device (*optional*): where to compute (default: where ``images`` are).

        Returns:
            `torch.Tensor` float32 `(batch, 3, out_height, out_width)`: the model's ``pixel_values``.
        """
        x = to_unit_range(images, input_range)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels, got {x.shape[1]}")
        device = torch.device(device) if device is not None else x.device
        # float64 for Pillow's arithmetic: its fixed-point sums are integers below 2**53, so they stay exact
        dtype = torch.float64 if self.arithmetic == "uint8" else torch.float32
        std = torch.tensor(self.image_std, dtype=dtype, device=device).view(1, 3, 1, 1)
        scale = self.rescale_factor / std
        shift = -torch.tensor(self.image_mean, dtype=dtype, device=device).view(1, 3, 1, 1) / std
        out = torch.empty(x.shape[0], 3, *self.output_size(*x.shape[-2:]), dtype=torch.float32, device=device)
        # a few images at a time: float64 intermediates of a whole batch would take gigabytes
        for first in range(0, x.shape[0], _CHUNK):
            chunk = x[first : first + _CHUNK].to(device=device, dtype=dtype) * 255.0
            if self.arithmetic == "uint8":
                chunk = chunk.round_()  # a PIL image holds 8-bit values
            if self.resize is not None:
                chunk = self._resample(chunk, self.resized_size(*chunk.shape[-2:]))
            if self.crop_size is not None:
                chunk = self._center_crop(chunk)
            out[first : first + _CHUNK] = torch.addcmul(shift, chunk, scale)  # rescale and normalise in one pass
        return out
