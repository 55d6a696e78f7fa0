"""The probability-flow ODE: in ``t`` for the adaptive solver, in ``sigma`` for fixed Euler/Heun steps.

Two views of the same ODE are used here.

* **In ``t``** (for the adaptive solver, the likelihood and encoding): ``dx/dt = f(x, t) - g(t)^2 score / 2``,
  exactly the drift of ``sde.reverse(score_fn, probability_flow=True)``, integrated by the batched Runge–Kutta
  solver of :mod:`sde_diffusers.sampling.solver`.
* **In ``sigma``** (for the fixed-step steps): write ``x_t = m(t) x_0 + s(t) eps`` and let ``x_hat = x / m``,
  ``sigma = s / m``. Then ``x_hat`` has the marginals of ``x_0 + sigma * eps`` and the probability-flow ODE of
  *every* linear SDE (VE, VP, sub-VP) becomes ``d x_hat / d sigma = -s * score(x, t)`` (the noise prediction).
  Its right-hand side is constant when the data is a single point, so an Euler step in ``sigma`` is exact there;
  it is DDIM for VP and the EDM Euler step for VE (Karras et al., 2022), and far more accurate than an Euler step
  in ``t`` at the same number of network evaluations. A final step to ``sigma = 0`` is Tweedie's denoiser.
  :func:`probability_flow_euler_step` and :func:`probability_flow_heun_step` follow the step contract of
  :mod:`sde_diffusers.sampling._common` (``sde, score, x, t, t_next``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ..parameterization import score_to_x0
from ..sde import SDE, VESDE, ScoreFn, broadcast_to
from ..validation import check_choice, check_int, check_number, check_positive
from ._common import SamplerOutput, StepOutput, check_time_span, checked_score
from .solver import (
    ADAPTIVE_METHODS,
    FIXED_METHODS,
    ODE_METHODS,
    ODESolution,
    check_sample,
    odeint,
)

__all__ = [
    "ODESolution",
    "SamplerOutput",
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "ODE_METHODS",
    "odeint",
    "probability_flow_fn",
    "solve_probability_flow",
    "sample_probability_flow",
    "sigma_and_scale",
    "t_from_sigma",
    "probability_flow_times",
    "time_grid",
    "ode_derivative",
    "ode_euler_step",
    "ode_heun_step",
    "probability_flow_euler_step",
    "probability_flow_heun_step",
    "sample_probability_flow_fixed",
]

ODEFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# The probability-flow ODE in t
# ---------------------------------------------------------------------------------------------------------
def probability_flow_fn(sde: SDE, score_fn: ScoreFn) -> ODEFunc:
    """``func(t, x) = dx/dt`` of the probability-flow ODE, for :func:`odeint`."""
    rsde = sde.reverse(lambda x, t: checked_score(score_fn, x, t), probability_flow=True)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rsde.sde(x, t)[0]

    return func


@torch.no_grad()
def solve_probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    t_start: float,
    t_end: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_control: str = "per_sample",
    num_steps: int | None = None,
) -> SamplerOutput:
    """Carry ``x`` from time ``t_start`` to ``t_end`` along the probability-flow ODE.

    ``t_start < t_end`` encodes (data towards the prior), ``t_start > t_end`` decodes. See :func:`odeint`
    for ``method``, the tolerances, ``step_control`` and ``num_steps``.

    Returns:
        :class:`SamplerOutput` with the state at ``t_end`` and the number of score evaluations.
    """
    check_sample("x", x)
    t_start, t_end = check_number("t_start", t_start, 0.0, sde.T), check_number("t_end", t_end, 0.0, sde.T)
    sol = odeint(
        probability_flow_fn(sde, score_fn),
        x,
        t_start,
        t_end,
        method=method,
        rtol=rtol,
        atol=atol,
        step_control=step_control,
        num_steps=num_steps,
    )
    return SamplerOutput(sample=sol.y, nfe=sol.nfe, nfe_per_sample=sol.nfe_per_sample)


def _prior_or_given(sde: SDE, x: torch.Tensor | None, shape, generator, device, dtype) -> torch.Tensor:
    if x is not None:
        return check_sample("x", x)
    if shape is None:
        raise ValueError("pass either the prior sample x or its shape")
    return sde.prior_sampling(tuple(shape), generator=generator, device=device, dtype=dtype)


@torch.no_grad()
def sample_probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    eps: float = 1e-3,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SamplerOutput:
    """Draw samples by solving the probability-flow ODE from ``T`` to ``eps`` with an adaptive solver.

    Args:
        score_fn (`Callable`): ``score_fn(x, t)``.
        sde (`SDE`): the forward process.
        x (`torch.Tensor`, optional): a prior sample to start from; drawn from ``sde.prior_sampling`` otherwise.
        shape (`tuple`, optional): shape of the prior draw when ``x`` is not given.
        eps (`float`, defaults to 1e-3): end time (the reference sampler's default).
        method, rtol, atol: see :func:`odeint`.
        denoise (`bool`, defaults to `False`): finish with Tweedie's denoiser ``E[x_0 | x_eps]`` (one more
            evaluation).
        generator (`torch.Generator`, optional): for the prior draw.
        device, dtype: of the prior draw.

    Returns:
        :class:`SamplerOutput`.
    """
    eps = check_time_span(sde, eps)
    x = _prior_or_given(sde, x, shape, generator, device, dtype)
    out = solve_probability_flow(score_fn, sde, x, sde.T, eps, method=method, rtol=rtol, atol=atol)
    if not denoise:
        return out
    t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    sample = score_to_x0(sde, checked_score(score_fn, out.sample, t), out.sample, t)
    return SamplerOutput(sample=sample, nfe=out.nfe + 1, nfe_per_sample=out.nfe_per_sample + 1)


# ---------------------------------------------------------------------------------------------------------
# The probability-flow ODE in sigma: grids and fixed-step steps
# ---------------------------------------------------------------------------------------------------------
class HasMarginals(Protocol):
    """Anything with the forward marginals ``p_t(x | x_0) = N(m x_0, s^2 I)``: an :class:`~sde_diffusers.sde.SDE`, or a
    scheduler's :class:`~sde_diffusers.scheduler_sde.SchedulerSDE` view (whose marginals may be a discrete chain's)."""

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def sigma_and_scale(sde: HasMarginals, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, m) = (s(t) / m(t), m(t))``: the noise level of ``x / m`` and the scale ``m``."""
    mean_coeff, std = sde.marginal_coeffs(t)
    return std / mean_coeff, mean_coeff


def t_from_sigma(
    sde: HasMarginals,
    sigma: torch.Tensor,
    t_lo: torch.Tensor | float | None = None,
    t_hi: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Inverse of ``sigma(t) = s(t) / m(t)`` on ``[t_lo, t_hi]`` (default ``[0, T]``): exact for a :class:`VESDE` on
    its whole range, bisection to float64 precision otherwise (``sigma(t)`` increases with ``t``; where it is
    piecewise constant, as for a discrete chain, the bisection lands on a jump)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if isinstance(sde, VESDE) and t_lo is None and t_hi is None:
        return sde.sigma_to_t(sigma)
    lo = torch.zeros_like(sigma) if t_lo is None else torch.as_tensor(t_lo, dtype=torch.float64).expand_as(sigma)
    hi = torch.full_like(sigma, sde.T) if t_hi is None else torch.as_tensor(t_hi, dtype=torch.float64).expand_as(sigma)
    for _ in range(64):  # 64 halvings reach float64 resolution
        mid = 0.5 * (lo + hi)
        below = sigma_and_scale(sde, mid)[0] < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def time_grid(
    sde: SDE, num_steps: int, *, spacing: str = "uniform", eps: float = 1e-3, rho: float = 7.0
) -> torch.Tensor:
    """Decreasing times ``t_0 = T > ... > t_{n-1} = eps`` (float64, shape ``(num_steps,)``): the grid of the
    fixed-step ODE samplers and, with ``spacing="karras"``, of the predictor–corrector schedulers.

    Args:
        sde (`SDE`): the forward process.
        num_steps (`int`): number of times ``n`` (>= 1; with 1 only ``T`` is returned).
        spacing (`str`, defaults to `"uniform"`): `"uniform"` in ``t``, or `"karras"`: uniform in
            ``sigma^(1 / rho)`` between ``sigma(T)`` and ``sigma(eps)`` with ``sigma = s / m`` (Karras et al., 2022).
        eps (`float`, defaults to 1e-3): the last time.
        rho (`float`, defaults to 7.0): exponent of the Karras spacing.
    """
    check_int("num_steps", num_steps)
    eps = check_time_span(sde, eps)
    if check_choice("spacing", spacing, ("uniform", "karras")) == "uniform":
        return torch.linspace(sde.T, eps, num_steps, dtype=torch.float64)
    check_positive("rho", rho)
    ends = sigma_and_scale(sde, torch.tensor([sde.T, eps], dtype=torch.float64))[0]
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    t = t_from_sigma(sde, (hi + ramp * (lo - hi)) ** rho)
    t[0], t[-1] = sde.T, eps  # exact end points (the inverse is exact only to rounding)
    return t


#: The former name of :func:`time_grid`.
probability_flow_times = time_grid


def ode_derivative(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``d(x / m) / d sigma = -s(t) * score``: the probability-flow ODE in the ``sigma`` variable.

    Args:
        sde (`SDE`): the forward process.
        x (`torch.Tensor`): the current sample (unused beyond its shape; kept for a uniform signature).
        t (`torch.Tensor` of shape `(batch,)`): its time.
        score (`torch.Tensor`): the score at ``(x, t)``.
    """
    _, std = sde.marginal_coeffs(t)
    return -broadcast_to(std, x) * score


def ode_euler_step(
    x: torch.Tensor,
    derivative: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    scale: torch.Tensor,
    scale_next: torch.Tensor,
) -> torch.Tensor:
    """One Euler step of ``d(x / m) / d sigma = derivative`` from ``sigma`` to ``sigma_next``.

    All coefficients have shape ``(batch,)``; ``scale`` is ``m``. With ``sigma_next = 0`` (and
    ``scale_next = 1``) the step returns Tweedie's denoised estimate.
    """
    x_hat = x / broadcast_to(scale, x) + broadcast_to(sigma_next - sigma, x) * derivative
    return broadcast_to(scale_next, x) * x_hat


def ode_heun_step(
    x: torch.Tensor,
    derivative: torch.Tensor,
    derivative_next: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    scale: torch.Tensor,
    scale_next: torch.Tensor,
) -> torch.Tensor:
    """Heun's (trapezoidal) correction: ``derivative_next`` is evaluated at the Euler prediction."""
    return ode_euler_step(x, 0.5 * (derivative + derivative_next), sigma, sigma_next, scale, scale_next)


def _sigma_scale_to(sde: SDE, t_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, m)`` at ``t_next``, where ``t_next = 0`` means the data itself (``sigma = 0``, ``m = 1``; for VE
    ``sigma(0) = sigma_min`` otherwise)."""
    sigma, scale = sigma_and_scale(sde, t_next)
    at_data = t_next <= 0
    return torch.where(at_data, torch.zeros_like(sigma), sigma), torch.where(at_data, torch.ones_like(scale), scale)


def probability_flow_euler_step(
    sde: SDE, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
) -> StepOutput:
    """The step contract's Euler step of the probability-flow ODE from ``t`` to ``t_next``, in the ``sigma``
    variable (DDIM for VP, the EDM Euler step for VE); ``t_next = 0`` lands on the data (Tweedie's denoiser).

    Args:
        sde (`SDE`): the forward process.
        score (`torch.Tensor`): the score at ``(x, t)``.
        x (`torch.Tensor`): the current sample.
        t, t_next (`torch.Tensor` of shape `(batch,)`): the current and the next time.

    Returns:
        :class:`~sde_diffusers.sampling._common.StepOutput` (deterministic: ``noise_std`` is zero).
    """
    sigma, scale = sigma_and_scale(sde, t)
    sigma_next, scale_next = _sigma_scale_to(sde, t_next)
    return StepOutput.deterministic(
        ode_euler_step(x, ode_derivative(sde, x, t, score), sigma, sigma_next, scale, scale_next)
    )


def probability_flow_heun_step(
    sde: SDE,
    score: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    score_next: torch.Tensor,
) -> StepOutput:
    """Heun's step (EDM's second-order sampler) of the probability-flow ODE from ``t`` to ``t_next``.

    Args:
        score_next (`torch.Tensor`): the score at the Euler prediction
            ``probability_flow_euler_step(sde, score, x, t, t_next).prev_sample`` and time ``t_next``.
        Others as :func:`probability_flow_euler_step`.
    """
    sigma, scale = sigma_and_scale(sde, t)
    sigma_next, scale_next = _sigma_scale_to(sde, t_next)
    d = ode_derivative(sde, x, t, score)
    x_euler = ode_euler_step(x, d, sigma, sigma_next, scale, scale_next)
    d_next = ode_derivative(sde, x_euler, t_next, score_next)
    return StepOutput.deterministic(ode_heun_step(x, d, d_next, sigma, sigma_next, scale, scale_next))


@torch.no_grad()
def sample_probability_flow_fixed(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor | None = None,
    *,
    num_steps: int = 50,
    solver: str = "heun",
    spacing: str = "uniform",
    eps: float = 1e-3,
    rho: float = 7.0,
    denoise: bool = True,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SamplerOutput:
    """Fixed-step Euler or Heun sampling of the probability-flow ODE in the ``sigma`` variable.

    The model is evaluated at the ``num_steps`` times of :func:`time_grid`. Steps go between
    consecutive times and, with ``denoise=True``, a last Euler step from ``eps`` to ``sigma = 0`` (Tweedie's
    denoiser), exactly as Diffusers' Euler/Heun schedulers end. Cost: ``num_steps`` evaluations (Euler) or
    ``2 num_steps - 1`` (Heun) with ``denoise``; ``num_steps - 1`` or ``2 (num_steps - 1)`` without.

    Returns:
        :class:`SamplerOutput`.
    """
    check_choice("solver", solver, ("euler", "heun"))
    times = time_grid(sde, num_steps, spacing=spacing, eps=eps, rho=rho)
    x = _prior_or_given(sde, x, shape, generator, device, dtype)
    b = x.shape[0]

    def coeffs(t_value: torch.Tensor):
        t = t_value.to(device=x.device, dtype=x.dtype).expand(b)
        sigma, scale = sigma_and_scale(sde, t)
        return t, sigma, scale

    nfe = 0
    t, sigma, scale = coeffs(times[0])
    for i in range(1, num_steps):
        d = ode_derivative(sde, x, t, checked_score(score_fn, x, t))
        t_next, sigma_next, scale_next = coeffs(times[i])
        x_next = ode_euler_step(x, d, sigma, sigma_next, scale, scale_next)
        if solver == "heun":
            d_next = ode_derivative(sde, x_next, t_next, checked_score(score_fn, x_next, t_next))
            x_next = ode_heun_step(x, d, d_next, sigma, sigma_next, scale, scale_next)
        nfe += 2 if solver == "heun" else 1
        x, t, sigma, scale = x_next, t_next, sigma_next, scale_next
    if denoise:
        d = ode_derivative(sde, x, t, checked_score(score_fn, x, t))
        x = ode_euler_step(x, d, sigma, torch.zeros_like(sigma), scale, torch.ones_like(scale))
        nfe += 1
    return SamplerOutput(sample=x, nfe=nfe, nfe_per_sample=torch.full((b,), nfe, dtype=torch.long, device=x.device))
