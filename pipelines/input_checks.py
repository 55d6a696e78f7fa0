"""Input checks of the pipelines: the arguments users pass to ``__call__``, turned into tensors or clear errors.

Every pipeline validates its arguments once, before any network call, with these functions (numbers with the
package-wide helpers of :mod:`sde_diffusers.validation`). Each error is one line naming the argument and what was
expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from sde_diffusers.validation import check_choice, check_int, check_number

__all__ = [
    "OUTPUT_TYPES",
    "check_output_type",
    "check_callback_inputs",
    "check_latents",
    "resolve_batch_size",
    "class_label_tensor",
    "images_to_tensor",
    "mask_to_tensor",
]

OUTPUT_TYPES = ("pil", "np", "pt")


def check_output_type(output_type: object) -> str:
    """Return ``output_type`` if it is one of :data:`OUTPUT_TYPES`, else raise ``ValueError``."""
    return check_choice("output_type", output_type, OUTPUT_TYPES)


def check_callback_inputs(callback_on_step_end: object, tensor_inputs: object, allowed: Sequence[str]) -> None:
    """Validate ``callback_on_step_end`` (callable or ``None``) and the tensor names it asks for (in ``allowed``)."""
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}.")
    if tensor_inputs is not None and not isinstance(tensor_inputs, (list, tuple)):
        raise TypeError(f"`callback_on_step_end_tensor_inputs` must be a list, got {type(tensor_inputs).__name__}.")
    bad = [k for k in (tensor_inputs or []) if k not in allowed]
    if bad:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` may only contain {list(allowed)}, got {bad}.")


def check_latents(latents: object, shape: tuple[int, ...]) -> None:
    """``latents`` must be ``None`` or a floating-point tensor of exactly ``shape``."""
    if latents is None:
        return
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise TypeError(f"`latents` must be a floating-point torch.Tensor, got {type(latents).__name__}.")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"`latents` must be a tensor of shape {tuple(shape)}, got {tuple(latents.shape)}.")


def _generator_count(generator: object) -> int | None:
    """Length of a generator list (``None`` for a single generator or none); raises on anything else."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if isinstance(generator, list) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return len(generator)
    raise TypeError(
        f"`generator` must be a torch.Generator or a non-empty list of them, got {type(generator).__name__}."
    )


def resolve_batch_size(batch_size: object, generator: object, **counts: int | None) -> int:
    """The batch size: ``batch_size`` if given, else the length shared by the per-sample inputs, else 1.

    Args:
        batch_size: the user's ``batch_size`` (``None`` = infer).
        generator: a generator or a list of them (a list must have one per sample).
        **counts: number of items of other per-sample inputs (``None`` when the input is absent or broadcast).

    Raises:
        ValueError: the counts disagree with each other or with ``batch_size``.
    """
    named = {name: n for name, n in counts.items() if n is not None}
    n_gen = _generator_count(generator)
    if n_gen is not None:
        named["generator"] = n_gen
    if batch_size is not None:
        batch = check_int("batch_size", batch_size)
    elif named:
        batch = next(iter(named.values()))
    else:
        batch = 1
    for name, n in named.items():
        if n != batch:
            described = ", ".join(f"{k}: {v}" for k, v in named.items())
            source = f"batch_size={batch}" if batch_size is not None else "the other per-sample inputs"
            raise ValueError(
                f"`{name}` has {n} entries but {source} asks for {batch} samples ({described}); pass one per sample."
            )
    return batch


def class_label_tensor(class_labels: object) -> torch.Tensor:
    """Labels (an int, a sequence of ints, or an integer array/tensor) as a 1-D int64 tensor."""
    if isinstance(class_labels, bool):
        raise TypeError("`class_labels` must be integers, got a bool.")
    if isinstance(class_labels, (int, np.integer)):
        return torch.tensor([int(class_labels)])
    if isinstance(class_labels, torch.Tensor):
        labels = class_labels.detach().cpu()
    elif isinstance(class_labels, np.ndarray):
        labels = torch.from_numpy(class_labels)
    elif isinstance(class_labels, Sequence) and not isinstance(class_labels, str):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in class_labels):
            raise TypeError(f"`class_labels` must contain integers only, got {list(class_labels)!r}.")
        labels = torch.tensor([int(v) for v in class_labels], dtype=torch.long)
    else:
        raise TypeError(
            "`class_labels` must be an int, a list of ints or an integer tensor/array, "
            f"got {type(class_labels).__name__}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`class_labels` must be integers, got dtype {labels.dtype}.")
    if labels.dim() > 1:
        raise ValueError(f"`class_labels` must be a scalar or 1-D, got shape {tuple(labels.shape)}.")
    labels = labels.reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("`class_labels` is empty.")
    return labels


# ---------------------------------------------------------------------------------------------------------
# Images and masks: PIL, numpy (HWC) or torch (CHW), in [0, 1]
# ---------------------------------------------------------------------------------------------------------
def _pil_to_array(image: PIL.Image.Image, name: str, modes: tuple[str, ...]) -> np.ndarray:
    if image.mode not in modes:
        raise ValueError(f"`{name}` must be a PIL image of mode {' or '.join(modes)}, got mode {image.mode!r}.")
    if image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def images_to_tensor(
    images: Any, name: str, pil_modes: tuple[str, ...] = ("L", "RGB"), channels: int | None = None
) -> torch.Tensor:
    """Convert images to a float32 tensor ``(batch, channels, height, width)`` in ``[0, 1]``.

    Accepted (Diffusers' conventions): a PIL image or a list of them (modes ``pil_modes``); a numpy array
    ``(height, width)``, ``(height, width, channels)`` or ``(batch, height, width, channels)``; a torch tensor
    ``(height, width)``, ``(channels, height, width)`` or ``(batch, channels, height, width)``. ``uint8`` values are
    divided by 255, booleans become 0/1, floats must already lie in ``[0, 1]``.

    Args:
        images: the images.
        name (`str`): the argument's name, for error messages.
        pil_modes (`tuple[str, ...]`): PIL modes accepted as they are.
        channels (`int`, *optional*): convert PIL images of any mode to ``"L"`` (1) or ``"RGB"`` (3) first
            (``pil_modes`` is then that mode).

    Raises:
        TypeError / ValueError: naming ``name`` and what was expected.
    """
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images or not all(isinstance(im, PIL.Image.Image) for im in images):
            raise TypeError(f"`{name}` as a list must be a non-empty list of PIL images.")
        if channels is not None:
            pil_modes = ("L" if channels == 1 else "RGB",)
            images = [im.convert(pil_modes[0]) for im in images]
        arrays = [_pil_to_array(im, name, pil_modes) for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"the images in `{name}` must share one size and mode, got {[a.shape for a in arrays]}.")
        tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    elif isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = images[..., None]
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(
                f"`{name}` as a numpy array must be (H, W), (H, W, C) or (B, H, W, C), got {images.shape}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() == 3:
            tensor = tensor[None]
        if tensor.dim() != 4:
            raise ValueError(
                f"`{name}` as a torch tensor must be (H, W), (C, H, W) or (B, C, H, W), got {tuple(tensor.shape)}."
            )
    else:
        raise TypeError(
            f"`{name}` must be a PIL image, a list of PIL images, a numpy array or a torch tensor, "
            f"got {type(images).__name__}."
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.dtype == torch.bool:
        tensor = tensor.float()
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        if tensor.min() < 0 or tensor.max() > 1:
            raise ValueError(
                f"`{name}` must have values in [0, 1] (uint8 arrays are divided by 255), got values in "
                f"[{tensor.min().item():.4g}, {tensor.max().item():.4g}]."
            )
    else:
        raise TypeError(f"`{name}` must be uint8, bool or floating point, got dtype {tensor.dtype}.")
    if tensor.shape[1] not in (1, 3):
        raise ValueError(f"`{name}` must have 1 or 3 channels, got {tensor.shape[1]} (shape {tuple(tensor.shape)}).")
    return tensor.contiguous()


def mask_to_tensor(mask_image: object, mask_threshold: object, pixels: torch.Tensor) -> torch.Tensor:
    """An inpainting mask as ``(1 or batch, 1 or channels, height, width)``, 1 = repaint, 0 = keep.

    Diffusers' convention: white (1) marks the pixels to repaint. A black-and-white RGB mask is one mask for every
    channel. Without ``mask_threshold`` a mask with values other than 0 and 1 is an error; with it the mask is
    binarised (repaint where ``mask >= mask_threshold``).

    Args:
        mask_image: the mask (any input of :func:`images_to_tensor`; PIL modes ``"1"``, ``"L"``, ``"RGB"``).
        mask_threshold: ``None`` or a number in ``(0, 1]``.
        pixels (`torch.Tensor`): the images ``(batch, channels, height, width)`` the mask applies to.

    Raises:
        ValueError / TypeError: naming the argument and what was expected.
    """
    mask = images_to_tensor(mask_image, "mask_image", pil_modes=("1", "L", "RGB"))
    if mask.shape[2:] != pixels.shape[2:]:
        raise ValueError(
            f"`mask_image` is {mask.shape[2]}x{mask.shape[3]} but `image` is {pixels.shape[2]}x{pixels.shape[3]}; "
            "they must have the same height and width."
        )
    if mask.shape[1] == 3 and bool((mask == mask[:, :1]).all()):
        mask = mask[:, :1]
    if mask.shape[1] not in (1, pixels.shape[1]):
        raise ValueError(
            f"`mask_image` has {mask.shape[1]} channels; it needs 1 or as many as `image` ({pixels.shape[1]})."
        )
    if mask.shape[0] not in (1, pixels.shape[0]) and pixels.shape[0] != 1:
        raise ValueError(
            f"`mask_image` has {mask.shape[0]} masks for {pixels.shape[0]} images; pass one mask or one per image."
        )
    if mask_threshold is None:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(
                "`mask_image` is not binary (values other than 0 and 1, e.g. from resizing or JPEG): pass "
                "`mask_threshold` (e.g. 0.5) to repaint where mask >= threshold."
            )
        return mask
    threshold = check_number("mask_threshold", mask_threshold, 0.0, 1.0)
    if threshold == 0:
        raise ValueError(f"`mask_threshold` must lie in (0, 1], got {mask_threshold!r}.")
    return (mask >= threshold).float()
