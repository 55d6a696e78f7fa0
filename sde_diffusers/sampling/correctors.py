"""Correctors: one step of Langevin MCMC targeting ``p_t``, as pure functions.

Each has the signature ``(sde, score_fn, x, t, *, snr, num_steps=None, noise=None, generator=None)`` and
returns ``(x, x_mean)``. One call is one inner step; a sampler with ``n_corrector_steps = k`` calls it ``k``
times per noise level.
"""

from __future__ import annotations

import torch

from ..sde import SDE, ScoreFn, broadcast_to
from ._common import check_state, per_sample_norm, standard_normal_like

__all__ = ["langevin_step", "annealed_langevin_step", "CORRECTORS"]


def _check_snr(snr: float) -> None:
    if not isinstance(snr, (int, float)) or isinstance(snr, bool) or not snr > 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")


def _langevin_update(
    x: torch.Tensor, grad: torch.Tensor, z: torch.Tensor, step_size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x_mean = x + broadcast_to(step_size, x) * grad
    return x_mean + broadcast_to(torch.sqrt(2.0 * step_size), x) * z, x_mean


def langevin_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    snr: float,
    num_steps: int | None = None,
    per_sample: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Langevin corrector with the step size set by a target signal-to-noise ratio.

    ``step = 2 alpha (snr ||z|| / ||score||)^2``. As in the reference implementation the norms are averaged
    over the batch; ``per_sample=True`` uses each sample's own norms so that a sample's trajectory does not
    depend on the rest of the batch. ``alpha`` is ``1 - beta_i`` for VP and sub-VP (the reference lacks it
    for sub-VP; both share the same beta schedule) and 1 for VE.
    """
    check_state(x, t)
    _check_snr(snr)
    grad = score_fn(x, t)
    z = standard_normal_like(x, noise, generator)
    grad_norm, noise_norm = per_sample_norm(grad), per_sample_norm(z)
    if not per_sample:
        grad_norm, noise_norm = grad_norm.mean().expand_as(t), noise_norm.mean().expand_as(t)
    # A zero score (e.g. at a mode) would give an infinite step; the floor keeps the step finite.
    ratio = snr * noise_norm / grad_norm.clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
    step_size = 2.0 * sde.langevin_alpha(t, num_steps).to(x.dtype) * ratio**2
    return _langevin_update(x, grad, z, step_size)


def annealed_langevin_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    snr: float,
    num_steps: int | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Annealed Langevin dynamics (NCSN): step size ``2 alpha (snr * std(t))^2``, independent of the batch."""
    check_state(x, t)
    _check_snr(snr)
    grad = score_fn(x, t)
    z = standard_normal_like(x, noise, generator)
    _, std = sde.marginal_coeffs(t)
    step_size = 2.0 * sde.langevin_alpha(t, num_steps).to(x.dtype) * (snr * std) ** 2
    return _langevin_update(x, grad, z, step_size)


CORRECTORS = {"langevin": langevin_step, "annealed_langevin": annealed_langevin_step}
