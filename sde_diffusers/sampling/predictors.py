"""Predictors: one reverse-time step of the SDE, as pure functions.

Each has the signature ``(sde, score_fn, x, t, *, num_steps=None, noise=None, generator=None)`` and returns
``(x, x_mean)``, where ``x_mean`` is the step without its final noise injection. ``num_steps`` (default
``sde.N``) is the number of steps of the grid the caller walks, from ``T`` down to ``eps``: it sets ``dt = T / n``
and the discrete noise levels of the reverse-diffusion and ancestral chains. ``noise`` replays a fixed
standard-normal draw; otherwise one is drawn with ``generator`` (a list gives one generator per sample).
"""

from __future__ import annotations

import math

import torch

from ..sde import SDE, VESDE, VPSDE, ScoreFn, broadcast_to
from ._common import check_state, standard_normal_like

__all__ = ["euler_maruyama_step", "reverse_diffusion_step", "ancestral_sampling_step", "PREDICTORS"]


def _grid(sde: SDE, num_steps: int | None) -> int:
    n = sde.N if num_steps is None else num_steps
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return n


def euler_maruyama_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    num_steps: int | None = None,
    probability_flow: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler–Maruyama step of the reverse SDE with ``dt = -T / num_steps``.

    With ``probability_flow=True`` it is the Euler step of the probability-flow ODE (the reference
    implementation raises there; the ODE simply has zero diffusion, so no noise is added).
    """
    check_state(x, t)
    dt = sde.T / _grid(sde, num_steps)
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x - drift * dt
    if probability_flow:
        return x_mean, x_mean
    z = standard_normal_like(x, noise, generator)
    return x_mean + broadcast_to(diffusion, x) * math.sqrt(dt) * z, x_mean


def reverse_diffusion_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    num_steps: int | None = None,
    probability_flow: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse of the discretised forward chain (``SDE.discretize``): ``x <- x - f + G^2 score + G z``.

    With ``probability_flow=True`` it is the deterministic probability-flow predictor
    (half the score term, no noise).
    """
    check_state(x, t)
    f, g = sde.reverse(score_fn, probability_flow).discretize(x, t, _grid(sde, num_steps))
    x_mean = x - f
    if probability_flow:
        return x_mean, x_mean
    z = standard_normal_like(x, noise, generator)
    return x_mean + broadcast_to(g, x) * z, x_mean


def ancestral_sampling_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    num_steps: int | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling: draw ``x_{i-1}`` from the Gaussian posterior of the discrete chain.

    VE follows SMLD's chain and VP the DDPM update ``(x + beta score) / sqrt(1 - beta)`` of the reference
    implementation. Sub-VP has no discrete chain there; it uses the exact Gaussian posterior
    ``p(x_s | x_t, x_0 = E[x_0 | x_t])`` of its transition kernel with ``s = max(t - T/n, 0)``, which for VE
    reduces to the SMLD update.
    """
    check_state(x, t)
    n = _grid(sde, num_steps)
    score = score_fn(x, t)
    if isinstance(sde, VESDE):
        sigma, prev = sde.adjacent_sigmas(t, n)
        var_step = sigma**2 - prev**2
        x_mean = x + broadcast_to(var_step, x) * score
        std = torch.sqrt(prev**2 * var_step / sigma**2)
    elif isinstance(sde, VPSDE):
        beta = sde.discrete_beta(t, n)
        x_mean = (x + broadcast_to(beta, x) * score) / broadcast_to(torch.sqrt(1.0 - beta), x)
        std = torch.sqrt(beta)
    else:
        s = (t - sde.T / n).clamp_min(0.0)
        m_t, std_t = sde.marginal_coeffs(t)
        m_s, std_s = sde.marginal_coeffs(s)
        a, v = sde.transition_coeffs(t, s)
        x0 = (x + broadcast_to(std_t**2, x) * score) / broadcast_to(m_t, x)
        x_mean = (broadcast_to(a * std_s**2, x) * x + broadcast_to(v * m_s, x) * x0) / broadcast_to(std_t**2, x)
        std = torch.sqrt(std_s**2 * v / std_t**2)
    z = standard_normal_like(x, noise, generator)
    return x_mean + broadcast_to(std, x) * z, x_mean


PREDICTORS = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_sampling_step,
}
