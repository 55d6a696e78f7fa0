"""Soft Diffusion sampling steps (Daras et al. 2022), as pure functions.

The corruption is ``x_t = C_t x_0 + s_t * eta`` (:class:`~sde_diffusers.corruption.CorruptionSchedule`).
Each step moves a sample from time ``t`` to an earlier time ``t_next`` given the network's estimate
``x0_hat = E[x_0 | x_t]``. They share the signature

    ``step(corruption, x0_hat, x, t, t_next, *, noise=None, generator=None) -> StepOutput``

the step contract of :mod:`sde_diffusers.sampling._common` with the corruption in place of the SDE and the
clean-image estimate in place of the score: the result unpacks as ``(x_next, x_next_mean)`` and carries the
per-sample ``noise_std`` of the fresh noise it added (``x_next = x_next_mean + noise_std * eta``).

* ``corruption``: the schedule; any object with ``blur(x, t) -> C_t x`` and ``noise_std(t) -> s_t``.
* ``x0_hat``: the clean-image estimate at ``(x, t)``, shape ``(batch, channels, H, W)``.
* ``x``: the current sample, same shape.
* ``t``, ``t_next``: tensors of shape ``(batch,)`` in ``[0, 1]`` with ``t_next <= t``.
* ``noise``: a fixed standard-normal draw like ``x`` (replays a run); otherwise one is drawn with
  ``generator`` (a list gives one generator per sample). The deterministic step ignores both.

Write ``C = C_t``, ``C' = C_{t_next}``, ``s = s_t``, ``s' = s_{t_next}``. The score of the corrupted
distribution is ``(C x0_hat - x) / s^2``, so ``x - C x0_hat`` is the current noise estimate times ``s``.

* Momentum (the paper's sampler): ``x' = C' x0_hat + (s'^2 / s^2) (x - C x0_hat) + sqrt(s^2 - s'^2) eta``.
  It is a reverse-diffusion step of size ``s^2 - s'^2`` on the noise (``x + (s^2 - s'^2) * score``, plus fresh
  noise of that variance) followed by the blur change ``C' x0_hat - C x0_hat``. It keeps the residual
  ``x - C x0_hat`` (the noise, and whatever part of the sample the estimate does not explain) instead of
  discarding it, so the sample keeps the variance the posterior mean lacks. Its per-step
  variance error ``(s^2 - s'^2)^2 / s^2`` vanishes as the steps shrink, so it converges to the corrupted
  data distribution. With ``s' = s`` it is Cold Diffusion's improved sampler ``x + (C' - C) x0_hat``.
* Naive: ``x' = C' x0_hat + s' eta``: re-corrupt the estimate. It throws the noise in ``x`` away, so every
  step replaces the sample by a corrupted posterior mean; it loses variance at every step and does not
  converge (samples come out too smooth).
* Deterministic: ``x' = C' x0_hat + (s' / s) (x - C x0_hat)``: keep the estimated noise and rescale it to
  the new level (the DDIM analogue, eta = 0).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..sde import broadcast_to
from ._common import StepOutput, check_state, standard_normal_like

__all__ = ["soft_momentum_step", "soft_naive_step", "soft_deterministic_step", "SOFT_SAMPLERS", "Corruption"]


class Corruption(Protocol):
    """What the steps need from a corruption schedule."""

    def blur(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def noise_std(self, t: torch.Tensor) -> torch.Tensor: ...


def _prepare(
    corruption: Corruption, x0_hat: torch.Tensor, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the inputs; return ``C x0_hat``, ``C' x0_hat`` and the two noise levels shaped like ``x``."""
    if not (callable(getattr(corruption, "blur", None)) and callable(getattr(corruption, "noise_std", None))):
        raise TypeError(
            "corruption must provide blur(x, t) and noise_std(t) (e.g. a CorruptionSchedule), "
            f"got {type(corruption).__name__}"
        )
    check_state(x, t)
    check_state(x0_hat, t_next)
    if x0_hat.shape != x.shape:
        raise ValueError(f"x0_hat has shape {tuple(x0_hat.shape)}, expected the sample's {tuple(x.shape)}")
    if bool((t_next > t).any()):
        raise ValueError("t_next must be <= t for every sample (the sampler walks back in time)")
    s = corruption.noise_std(t)
    s_next = corruption.noise_std(t_next)
    return (
        corruption.blur(x0_hat, t),
        corruption.blur(x0_hat, t_next),
        broadcast_to(s.to(x.dtype), x),
        broadcast_to(s_next.to(x.dtype), x),
    )


def _per_sample(std: torch.Tensor) -> torch.Tensor:
    """A noise level broadcast like the sample, back to shape ``(batch,)``."""
    return std.reshape(std.shape[0], -1)[:, 0]


def soft_momentum_step(
    corruption: Corruption,
    x0_hat: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Momentum Sampler step: ``C' x0_hat + (s'^2 / s^2)(x - C x0_hat) + sqrt(s^2 - s'^2) * eta``.

    Args: see the module docstring.

    Returns:
        :class:`~sde_diffusers.sampling.StepOutput`: the sample at ``t_next``, its noise-free part and the noise std.
    """
    blur_now, blur_next, s, s_next = _prepare(corruption, x0_hat, x, t, t_next)
    eta = standard_normal_like(x, noise, generator)
    # clamp: s' <= s holds for a monotone schedule; rounding must not turn 0 into a NaN.
    fresh = torch.sqrt((s**2 - s_next**2).clamp_min(0.0))
    mean = blur_next + (s_next**2 / s**2) * (x - blur_now)
    return StepOutput(mean + fresh * eta, mean, _per_sample(fresh))


def soft_naive_step(
    corruption: Corruption,
    x0_hat: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Naive step: ``C' x0_hat + s' * eta`` (re-corrupt the estimate; does not converge, for comparison).

    Args: see the module docstring.

    Returns:
        :class:`~sde_diffusers.sampling.StepOutput`: the sample at ``t_next``, its noise-free part and the noise std.
    """
    _, blur_next, _, s_next = _prepare(corruption, x0_hat, x, t, t_next)
    eta = standard_normal_like(x, noise, generator)
    return StepOutput(blur_next + s_next * eta, blur_next, _per_sample(s_next))


def soft_deterministic_step(
    corruption: Corruption,
    x0_hat: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Deterministic step: ``C' x0_hat + (s' / s)(x - C x0_hat)`` (DDIM-like, no fresh noise).

    Args: see the module docstring; ``noise`` and ``generator`` are accepted for a uniform signature and
        ignored.

    Returns:
        :class:`~sde_diffusers.sampling.StepOutput`: the sample at ``t_next``, its noise-free part and the noise std.
    """
    blur_now, blur_next, s, s_next = _prepare(corruption, x0_hat, x, t, t_next)
    return StepOutput.deterministic(blur_next + (s_next / s) * (x - blur_now))


SOFT_SAMPLERS = {
    "momentum": soft_momentum_step,
    "naive": soft_naive_step,
    "deterministic": soft_deterministic_step,
}
