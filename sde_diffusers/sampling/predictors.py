"""Predictors: one reverse-time step of the SDE, as pure functions.

Each follows the step contract of :mod:`sde_diffusers.sampling._common`::

    predictor(sde, score, x, t, t_next=None, *, num_steps=None, noise=None, generator=None) -> StepOutput

``score`` is the score tensor at ``(x, t)`` (or a ``score_fn(x, t)``, called once). The step goes

* **to ``t_next``** (any grid: uniform, Karras, ...): Euler–Maruyama with ``dt = t - t_next``; reverse diffusion and
  ancestral sampling with the *exact* transition of the linear SDE over ``[t_next, t]`` (``a = m(t) / m(t_next)``,
  ``v = s(t)^2 - a^2 s(t_next)^2``);
* **or, without ``t_next``, one step of the uniform ``n``-level grid** of the reference implementation
  (``n = num_steps``, default ``sde.N``): Euler–Maruyama with ``dt = T / n``, and the discrete chains at index
  ``floor(t (n - 1))``: SMLD for VE, DDPM for VP (``beta_i = beta(i / (n - 1)) / n``; at ``n = N`` exactly the chain
  a DDPM-trained model was trained on, e.g. ``DDPMScheduler``'s betas). Where that first-order chain is invalid
  (``beta_max / n >= 1``) the exact transition over ``[t - T / n, t]`` is used (see ``_BetaSDE.discrete_beta``).
"""

from __future__ import annotations

import torch

from ..sde import SDE, VESDE, VPSDE, broadcast_to, reverse_coefficients
from ._common import Estimate, StepOutput, check_step, resolve_score, standard_normal_like

__all__ = [
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "ancestral_sampling_step",
    "PREDICTORS",
    "PREDICTOR_KERNELS",
]


def euler_maruyama_step(
    sde: SDE,
    score: Estimate,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None = None,
    *,
    num_steps: int | None = None,
    probability_flow: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Euler–Maruyama step of the reverse SDE with ``dt = t - t_next`` (``T / num_steps`` without ``t_next``).

    With ``probability_flow=True`` it is the Euler step of the probability-flow ODE (the reference
    implementation raises there; the ODE simply has zero diffusion, so no noise is added).
    """
    check_step(x, t, t_next, num_steps)
    return _euler_maruyama(
        sde, resolve_score(score, x, t), x, t, t_next, num_steps, noise, generator, probability_flow=probability_flow
    )


def _euler_maruyama(
    sde: SDE,
    score: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None,
    num_steps: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    probability_flow: bool = False,
) -> StepOutput:
    if t_next is None:
        dt = torch.full_like(t, sde.T / (sde.N if num_steps is None else num_steps))
    else:
        dt = t - t_next
    f, g = sde.sde(x, t)
    drift, diffusion = reverse_coefficients(f, g, score, probability_flow)
    x_mean = x - drift * broadcast_to(dt, x)
    if probability_flow:
        return StepOutput.deterministic(x_mean)
    std = diffusion * dt.sqrt()
    z = standard_normal_like(x, noise, generator)
    return StepOutput(x_mean + broadcast_to(std, x) * z, x_mean, std)


def reverse_diffusion_step(
    sde: SDE,
    score: Estimate,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None = None,
    *,
    num_steps: int | None = None,
    probability_flow: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Reverse of the discretised forward chain ``x_t = x_prev + f + G z`` (``SDE.discretize``):
    ``x <- x - f + G^2 score + G z``.

    With ``probability_flow=True`` it is the deterministic probability-flow predictor (half the score term, no
    noise).
    """
    check_step(x, t, t_next, num_steps)
    return _reverse_diffusion(
        sde, resolve_score(score, x, t), x, t, t_next, num_steps, noise, generator, probability_flow=probability_flow
    )


def _reverse_diffusion(
    sde: SDE,
    score: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None,
    num_steps: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    probability_flow: bool = False,
) -> StepOutput:
    f, g = sde.discretize(x, t, num_steps, t_prev=t_next)
    drift, diffusion = reverse_coefficients(f, g, score, probability_flow)
    x_mean = x - drift
    if probability_flow:
        return StepOutput.deterministic(x_mean)
    z = standard_normal_like(x, noise, generator)
    return StepOutput(x_mean + broadcast_to(diffusion, x) * z, x_mean, diffusion)


def ancestral_sampling_step(
    sde: SDE,
    score: Estimate,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None = None,
    *,
    num_steps: int | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOutput:
    """Ancestral sampling: draw the previous state from a Gaussian posterior of the chain.

    To ``t_next`` (and for sub-VP, which has no discrete chain in the reference implementation, to
    ``max(t - T / n, 0)``): the exact posterior ``p(x_s | x_t, x_0 = E[x_0 | x_t])`` of the transition kernel, whose
    mean is ``(x + v score) / a`` and variance ``s(s)^2 v / s(t)^2``. On the uniform grid: SMLD's chain for VE (the
    same posterior on the discrete noise levels) and, for VP, the DDPM update of the reference implementation,
    ``(x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) z`` (DDPM's ``fixed_large`` variance).
    """
    check_step(x, t, t_next, num_steps)
    return _ancestral(sde, resolve_score(score, x, t), x, t, t_next, num_steps, noise, generator)


def _ancestral(
    sde: SDE,
    score: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor | None,
    num_steps: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
) -> StepOutput:
    if t_next is None and isinstance(sde, VESDE):
        sigma, prev = sde.adjacent_sigmas(t, num_steps)
        var_step = sigma**2 - prev**2
        x_mean = x + broadcast_to(var_step, x) * score
        std = torch.sqrt(prev**2 * var_step / sigma**2)
    elif t_next is None and isinstance(sde, VPSDE):
        beta = sde.discrete_beta(t, num_steps)
        x_mean = (x + broadcast_to(beta, x) * score) / broadcast_to(torch.sqrt(1.0 - beta), x)
        std = torch.sqrt(beta)
    else:
        s = (t - sde.T / (sde.N if num_steps is None else num_steps)).clamp_min(0.0) if t_next is None else t_next
        a, v = sde.transition_coeffs(t, s)
        _, std_t = sde.marginal_coeffs(t)
        _, std_s = sde.marginal_coeffs(s)
        x_mean = (x + broadcast_to(v, x) * score) / broadcast_to(a, x)
        std = torch.sqrt(std_s**2 * v / std_t**2)
    z = standard_normal_like(x, noise, generator)
    return StepOutput(x_mean + broadcast_to(std, x) * z, x_mean, std)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_sampling_step,
}
#: The same steps without input checks, ``kernel(sde, score_tensor, x, t, t_next, num_steps, noise, generator)``:
#: for callers that validated their inputs once (the schedulers), so nothing is re-checked on every step.
PREDICTOR_KERNELS = {
    "euler_maruyama": _euler_maruyama,
    "reverse_diffusion": _reverse_diffusion,
    "ancestral": _ancestral,
}
