"""Correctors: one step of Langevin MCMC targeting ``p_t``, as pure functions.

Each follows the step contract of :mod:`sde_diffusers.sampling._common`::

    corrector(sde, score, x, t, t_next=None, *, snr, num_steps=None, noise=None, generator=None) -> StepOutput

A corrector does not move in time: it samples ``p_t``. ``t_next`` (or ``num_steps``, the uniform grid) only sets
the VP/sub-VP factor ``alpha = 1 - beta`` of the step size, ``beta`` being that of the predictor step from ``t``
(see ``_BetaSDE.discrete_beta``). One call is one inner step; a sampler with ``n_corrector_steps = k`` calls it
``k`` times per noise level.
"""

from __future__ import annotations

import torch

from ..sde import SDE, broadcast_to
from ..validation import check_positive
from ._common import Estimate, StepOutput, check_step, per_sample_norm, resolve_score, standard_normal_like

__all__ = ["langevin_step", "annealed_langevin_step", "CORRECTORS", "CORRECTOR_KERNELS"]


def _langevin_update(x: torch.Tensor, grad: torch.Tensor, z: torch.Tensor, step_size: torch.Tensor) -> StepOutput:
    x_mean = x + broadcast_to(step_size, x) * grad
    std = torch.sqrt(2.0 * step_size)
    return StepOutput(x_mean + broadcast_to(std, x) * z, x_mean, std)


def langevin_step(
    sde: SDE,
    score: Estimate,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None = None,
    *,
    snr: float,
    num_steps: int | None = None,
    per_sample: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Langevin corrector with the step size set by a target signal-to-noise ratio.

    ``step = 2 alpha (snr ||z|| / ||score||)^2``. As in the reference implementation the norms are averaged
    over the batch; ``per_sample=True`` uses each sample's own norms so that a sample's trajectory does not
    depend on the rest of the batch. ``alpha`` is ``1 - beta_i`` for VP and sub-VP (the reference lacks it
    for sub-VP; both share the same beta schedule) and 1 for VE.
    """
    check_step(x, t, t_next, num_steps)
    check_positive("snr", snr)
    return _langevin(sde, resolve_score(score, x, t), x, t, t_next, num_steps, noise, generator, snr, per_sample)


def _langevin(
    sde: SDE,
    grad: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None,
    num_steps: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    snr: float,
    per_sample: bool = False,
) -> StepOutput:
    z = standard_normal_like(x, noise, generator)
    grad_norm, noise_norm = per_sample_norm(grad), per_sample_norm(z)
    if not per_sample:
        grad_norm, noise_norm = grad_norm.mean().expand_as(t), noise_norm.mean().expand_as(t)
    # A zero score (e.g. at a mode) would give an infinite step; the floor keeps the step finite.
    ratio = snr * noise_norm / grad_norm.clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
    step_size = 2.0 * sde.langevin_alpha(t, num_steps, t_next).to(x.dtype) * ratio**2
    return _langevin_update(x, grad, z, step_size)


def annealed_langevin_step(
    sde: SDE,
    score: Estimate,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None = None,
    *,
    snr: float,
    num_steps: int | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Annealed Langevin dynamics (NCSN): step size ``2 alpha (snr * std(t))^2``, independent of the batch."""
    check_step(x, t, t_next, num_steps)
    check_positive("snr", snr)
    return _annealed_langevin(sde, resolve_score(score, x, t), x, t, t_next, num_steps, noise, generator, snr)


def _annealed_langevin(
    sde: SDE,
    grad: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None,
    num_steps: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    snr: float,
    per_sample: bool = False,
) -> StepOutput:
    z = standard_normal_like(x, noise, generator)
    _, std = sde.marginal_coeffs(t)
    step_size = 2.0 * sde.langevin_alpha(t, num_steps, t_next).to(x.dtype) * (snr * std) ** 2
    return _langevin_update(x, grad, z, step_size)


CORRECTORS = {"langevin": langevin_step, "annealed_langevin": annealed_langevin_step}
#: The same steps without input checks, ``kernel(sde, score_tensor, x, t, t_next, num_steps, noise, generator, snr,
#: per_sample)`` (``per_sample`` is ignored by annealed Langevin): for callers that validated once (the schedulers).
CORRECTOR_KERNELS = {"langevin": _langevin, "annealed_langevin": _annealed_langevin}
