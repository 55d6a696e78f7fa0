"""Small helpers shared by the step functions."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def standard_normal_like(
    x: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Return ``noise`` (checked) or a fresh standard-normal draw shaped like ``x``.

    A list of generators gives one per sample, so each sample is reproducible on its own.
    """
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected the sample's {tuple(x.shape)}")
        return noise.to(device=x.device, dtype=x.dtype)
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_state(x: torch.Tensor, t: torch.Tensor) -> None:
    """Validate a sample and its per-sample times before any work starts."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample (shape ``(batch,)``)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)
