"""Adaptive-step reverse-SDE sampler of Jolicoeur-Martineau et al. (2021), "Gotta Go Fast When Generating
Data with Score-Based Models".

Each attempted step of size ``h`` (time runs from ``T`` down to ``eps``) draws one Gaussian ``z`` and forms two
solutions that share it: Euler–Maruyama ``x' = x + K1`` and the stochastic improved-Euler (Heun) step
``x'' = x + (K1 + K2) / 2``, where ``K1 = -h f(x, t) + sqrt(h) g(t) z`` and
``K2 = -h f(x', t - h) + sqrt(h) g(t - h) z`` with the reverse drift ``f`` and diffusion ``g``. Their difference
``E = (K2 - K1) / 2`` estimates the local error. With the mixed tolerance
``delta = max(atol, rtol * max(|x'|, |x'_prev|))`` (``x'_prev`` is the Euler–Maruyama proposal of the previous
accepted step), the step is accepted when ``rms(E / delta) <= 1``, and the state moves to ``x''``
(extrapolation). Either way the next step size is ``min(t - eps, safety * h * rms(E / delta)^(-exponent))``.
Every sample has its own time, step size and acceptance, and the whole loop runs on the device (masks, no
host reads per step; on CUDA the "all finished" flag is read one step late, which costs two discarded
evaluations per solve, see :mod:`sde_diffusers.sampling.solver`). A final Tweedie denoising step is optional (on by
default, as in the paper).

Defaults follow the paper for data in ``[-1, 1]``: ``atol = 0.0078``, ``rtol = 0.01`` (the authors' repository
default; 0.05 is their faster setting), ``h_init = 0.01``, ``safety = 0.9``, ``exponent = 0.9``, ``eps = 1e-3``.
Use ``atol = 0.0039`` for data in ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch

from ..parameterization import score_to_x0
from ..sde import SDE, ScoreFn, broadcast_to
from ..validation import check_int, check_positive
from ._common import SamplerOutput, check_time_span, checked_score, standard_normal_like
from .solver import FlagReader, check_sample, rms

__all__ = ["sample_adaptive_sde", "adaptive_sde_step"]


def adaptive_sde_step(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    t: torch.Tensor,
    h: torch.Tensor,
    *,
    eps: float = 1e-3,
    rtol: float = 0.01,
    atol: float = 0.0078,
    safety: float = 0.9,
    exponent: float = 0.9,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attempted step of the adaptive solver for every sample (two score evaluations).

    Args:
        sde (`SDE`): the forward process.
        score_fn (`Callable`): ``score_fn(x, t)``.
        x (`torch.Tensor`): current samples at times ``t``.
        x_prev (`torch.Tensor`): the Euler–Maruyama proposal of each sample's last accepted step (``x`` at start).
        t (`torch.Tensor` of shape `(batch,)`): current times (samples with ``t <= eps`` do not move).
        h (`torch.Tensor` of shape `(batch,)`): proposed step sizes (> 0).
        eps, rtol, atol, safety, exponent: see :func:`sample_adaptive_sde`.
        noise (`torch.Tensor`, optional): the standard-normal ``z`` to use; drawn with ``generator`` otherwise.
        generator (`torch.Generator` or a list of them, optional): noise source.

    Returns:
        ``(x, x_prev, t, h, accepted)``: the updated state, times and next step sizes (all per sample), and the
        boolean mask of accepted steps.
    """
    remaining = (t - eps).clamp_min(0.0)
    active = remaining > 0
    h = torch.minimum(h, remaining)
    last = h >= remaining
    rsde = sde.reverse(lambda x_, t_: checked_score(score_fn, x_, t_))
    z = standard_normal_like(x, noise, generator)
    sqrt_h = broadcast_to(h.sqrt(), x)

    drift, diffusion = rsde.sde(x, t)
    k1 = -broadcast_to(h, x) * drift + broadcast_to(diffusion, x) * sqrt_h * z
    x_em = x + k1
    t_next = torch.where(last, torch.full_like(t, eps), t - h)
    drift2, diffusion2 = rsde.sde(x_em, t_next)
    k2 = -broadcast_to(h, x) * drift2 + broadcast_to(diffusion2, x) * sqrt_h * z
    x_heun = x + 0.5 * (k1 + k2)

    delta = torch.maximum(torch.maximum(x_prev.abs(), x_em.abs()) * rtol, torch.full_like(x, atol))
    ratio = rms(0.5 * (k2 - k1) / delta)
    accept = (ratio <= 1) & active
    mask = broadcast_to(accept, x)
    x = torch.where(mask, x_heun, x)
    x_prev = torch.where(mask, x_em, x_prev)
    t = torch.where(accept, t_next, t)
    # A zero error (e.g. a sample that has finished) would give an infinite factor: the cap below is t - eps.
    factor = safety * ratio.clamp_min(1e-10) ** (-exponent)
    h = torch.minimum((t - eps).clamp_min(0.0), h * factor.to(h.dtype))
    return x, x_prev, t, h, accept


@torch.no_grad()
def sample_adaptive_sde(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    eps: float = 1e-3,
    rtol: float = 0.01,
    atol: float = 0.0078,
    h_init: float = 0.01,
    safety: float = 0.9,
    exponent: float = 0.9,
    denoise: bool = True,
    max_steps: int = 100_000,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SamplerOutput:
    """Sample by integrating the reverse SDE from ``T`` to ``eps`` with adaptive steps ("Gotta Go Fast").

    Args:
        score_fn (`Callable`): ``score_fn(x, t)`` with continuous ``t`` of shape ``(batch,)``.
        sde (`SDE`): the forward process.
        x (`torch.Tensor`, optional): prior samples to start from (drawn from ``sde.prior_sampling`` if omitted).
        shape (`tuple`, optional): shape of the prior draw when ``x`` is not given.
        eps (`float`, defaults to 1e-3): end time.
        rtol (`float`, defaults to 0.01): relative tolerance.
        atol (`float`, defaults to 0.0078): absolute tolerance (about 1/128: data in ``[-1, 1]``).
        h_init (`float`, defaults to 0.01): first step size.
        safety (`float`, defaults to 0.9): safety factor of the step-size update.
        exponent (`float`, defaults to 0.9): exponent ``r`` of the update ``h <- safety h E^(-r)``.
        denoise (`bool`, defaults to `True`): finish with Tweedie's denoiser (one more evaluation).
        max_steps (`int`, defaults to 100000): attempted steps after which sampling fails.
        generator (`torch.Generator` or a list of them, optional): noise source (a list: one per sample).
        device, dtype: of the prior draw.

    Returns:
        :class:`~sde_diffusers.sampling._common.SamplerOutput` with the samples and the number of network
        evaluations (two per attempted step, plus one for denoising).
    """
    eps = check_time_span(sde, eps)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    h_init, safety = check_positive("h_init", h_init), check_positive("safety", safety)
    exponent = check_positive("exponent", exponent)
    check_int("max_steps", max_steps)
    if x is None:
        if shape is None:
            raise ValueError("pass either the prior sample x or its shape")
        first_gen = generator[0] if isinstance(generator, list) else generator
        x = sde.prior_sampling(tuple(shape), generator=first_gen, device=device, dtype=dtype)
    x = check_sample("x", x)

    b = x.shape[0]
    t = torch.full((b,), sde.T, dtype=x.dtype, device=x.device)
    h = torch.full_like(t, min(h_init, sde.T - eps))
    x_prev = x
    nfe = 0
    nfe_per = torch.zeros(b, dtype=torch.long, device=x.device)
    flags = FlagReader(x.device)
    finished = False
    min_step = 10 * torch.finfo(x.dtype).eps * sde.T  # below this, t - h == t in the state's precision
    for _ in range(max_steps):
        active = t > eps
        x, x_prev, t, h, _ = adaptive_sde_step(
            sde,
            score_fn,
            x,
            x_prev,
            t,
            h,
            eps=eps,
            rtol=rtol,
            atol=atol,
            safety=safety,
            exponent=exponent,
            generator=generator,
        )
        nfe += 2
        nfe_per += 2 * active
        # The previous step's flags, read while this step's work is queued: if they say "finished", this step
        # moved nothing (every sample was inactive) and only its two evaluations are lost.
        if flags.lagged and flags.finished("sample_adaptive_sde"):
            finished = True
            break
        still = t > eps
        # a NaN score leaves x untouched (the step is rejected) but makes h NaN: flag both
        flags.post(~still.any(), ~(torch.isfinite(x).all() & torch.isfinite(h).all()), (still & (h < min_step)).any())
        if not flags.lagged and flags.finished("sample_adaptive_sde"):
            finished = True
            break
    if not finished:
        flags.require_finished("sample_adaptive_sde", f"max_steps={max_steps}; loosen rtol/atol")
    if denoise:
        t_eps = torch.full((b,), eps, dtype=x.dtype, device=x.device)
        x = score_to_x0(sde, checked_score(score_fn, x, t_eps), x, t_eps)
        nfe += 1
        nfe_per += 1
    if not math.isfinite(float(x.abs().max())):
        raise FloatingPointError("sample_adaptive_sde: the samples are NaN or infinite (check the model)")
    return SamplerOutput(sample=x, nfe=nfe, nfe_per_sample=nfe_per)
