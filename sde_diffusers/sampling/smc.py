"""Sequential Monte Carlo over the reverse process: the particle arithmetic, as pure functions.

A conditional sampler that is exact in the limit of many particles runs ``K`` particles per output through the
reverse chain, weights them, and resamples. These functions hold no state and never call a network: the pipeline
(:mod:`sde_diffusers.pipelines.pipeline_score_sde_inverse`) evaluates the model and the scheduler and hands the
numbers here. Log-weights are laid out ``(groups, particles)``: one row per output image, each row an independent
particle system; a flat particle batch is ``(groups * particles, ...)``, row-major, so particle ``k`` of group ``b`` is
entry ``b * K + k``.

Weight update of a twisted (guided) step, for a Gaussian reverse kernel ``p(x' | x) = N(mu(x), sigma^2 I)``, a
proposal ``q(x' | x) = N(mu(x) + sigma^2 h(x), sigma^2 I)`` shifted along a guidance direction ``h`` and a twisting
function ``g`` (an approximation of ``p(y | x_t)``)::

    w' = w * g'(x') / g(x) * p(x' | x) / q(x' | x)

:func:`twisted_step_log_ratio` gives ``log p / q`` in closed form, :func:`gaussian_log_likelihood` the log of a
Gaussian twist, :func:`systematic_resample` and :func:`effective_sample_size` the rest. :func:`lookahead_sigma`,
:func:`probability_flow_step` and :func:`lookahead_variance` build the one-step lookahead twist.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..sde import broadcast_to
from .ode import ode_euler_step

__all__ = [
    "normalized_log_weights",
    "effective_sample_size",
    "systematic_resample",
    "select_by_weight",
    "flat_indices",
    "uniforms_from_normals",
    "gaussian_log_likelihood",
    "proposal_log_ratio",
    "observed_subspace_step",
    "lookahead_sigma",
    "probability_flow_step",
    "lookahead_variance",
]


def normalized_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """``log_weights`` shifted so that ``exp`` of each row sums to 1 (shape ``(groups, particles)``)."""
    return log_weights - torch.logsumexp(log_weights, dim=-1, keepdim=True)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of each row, shape ``(groups,)``, in ``[1, particles]``.

    Computed in log space, so weights that differ by hundreds of nats neither overflow nor underflow.
    """
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, dim=-1) - torch.logsumexp(2 * lw, dim=-1)).to(log_weights.dtype)


def _inverse_cdf(log_weights: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Index ``i`` of each row with ``cdf[i - 1] <= position < cdf[i]`` (positions in ``[0, 1)``)."""
    cdf = torch.cumsum(torch.softmax(log_weights.double(), dim=-1), dim=-1)
    cdf[..., -1] = 1.0  # guard against the last partial sum rounding below a position
    index = torch.searchsorted(cdf, positions.double().contiguous(), right=True)
    return index.clamp_max(log_weights.shape[-1] - 1)


def systematic_resample(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Systematic resampling: ``K`` ancestors per row from one uniform per row.

    The positions ``(u + k) / K``, ``k = 0..K-1``, are pushed through each row's weight CDF. Particle ``i`` is
    copied ``floor(K w_i)`` or ``ceil(K w_i)`` times, so its expected number of copies is exactly ``K w_i``
    (unbiased) with the lowest variance of the standard schemes.

    Args:
        log_weights (`torch.Tensor` of shape `(groups, particles)`): unnormalised log-weights.
        uniforms (`torch.Tensor` of shape `(groups,)`): one ``U[0, 1)`` draw per row.

    Returns:
        `torch.Tensor` of shape `(groups, particles)` (int64): the ancestor of each new particle, within its row,
        in increasing order.
    """
    k = log_weights.shape[-1]
    offsets = torch.arange(k, device=log_weights.device, dtype=torch.float64)
    positions = (uniforms.double()[:, None] + offsets) / k
    return _inverse_cdf(log_weights, positions)


def select_by_weight(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row drawn with probability proportional to the weights, shape ``(groups,)`` (int64)."""
    return _inverse_cdf(log_weights, uniforms[:, None])[:, 0]


def flat_indices(indices: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Row-local particle indices ``(groups, n)`` to indices into the flat ``(groups * num_particles)`` batch."""
    offsets = num_particles * torch.arange(indices.shape[0], device=indices.device)[:, None]
    return (indices + offsets).reshape(-1)


def uniforms_from_normals(normals: torch.Tensor) -> torch.Tensor:
    """``U[0, 1)`` draws from standard-normal ones (``Phi(z)``), so a pipeline can draw them with
    :func:`diffusers.utils.torch_utils.randn_tensor` and its per-sample generators."""
    return torch.special.ndtr(normals.double()).clamp(0.0, 1.0 - 1e-12)


def gaussian_log_likelihood(residual: torch.Tensor, variance: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """``log N(residual; 0, variance I_dims)`` per sample.

    Args:
        residual (`torch.Tensor` of shape `(batch, ...)`): zero outside the ``dims``-dimensional observed subspace.
        variance (`torch.Tensor` of shape `(batch,)`): the variance along every observed direction.
        dims (`torch.Tensor` of shape `(batch,)`): dimension of the observed subspace.

    Returns:
        `torch.Tensor` of shape `(batch,)`.
    """
    sq = residual.flatten(1).pow(2).sum(1)
    return -0.5 * sq / variance - 0.5 * dims * torch.log(2 * math.pi * variance)


def proposal_log_ratio(
    noise: torch.Tensor,
    shift: torch.Tensor,
    observed_scale: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    num_observed: torch.Tensor,
) -> torch.Tensor:
    """``log p(x' | x) - log q(x' | x)`` for a Gaussian proposal built on the model's Gaussian kernel.

    The kernel is ``p = N(mu, sigma^2 I)``; the proposal draws ``x' = mu + sigma (shift + A z)`` with
    ``A = I - (1 - c) P``: shifted by ``sigma * shift`` and with standard deviation ``c * sigma`` (``0 < c <= 1``) on
    the observed subspace (the range of the orthogonal projection ``P``). With ``u = shift + A z`` the ratio is
    ``-|u|^2 / 2 + |z|^2 / 2 + d_obs log c``: no division by ``sigma``, so a step with ``sigma = 0`` and no shift
    gives exactly 0.

    Args:
        noise (`torch.Tensor` of shape `(batch, ...)`): the proposal's standard-normal draw ``z``.
        shift (`torch.Tensor` of the same shape): the mean shift in units of ``sigma``.
        observed_scale (`torch.Tensor` of shape `(batch,)`): ``c``.
        project (`Callable`): ``P``.
        num_observed (`torch.Tensor` of shape `(batch,)`): ``d_obs = trace(P)``.

    Returns:
        `torch.Tensor` of shape `(batch,)`.
    """
    c = observed_scale.reshape(-1, *([1] * (noise.dim() - 1)))
    u = (shift + noise - (1 - c) * project(noise)).flatten(1)
    z = noise.flatten(1)
    return -0.5 * u.pow(2).sum(1) + 0.5 * z.pow(2).sum(1) + num_observed * torch.log(observed_scale)


def observed_subspace_step(
    std: torch.Tensor, next_std: torch.Tensor, next_mean_coeff: torch.Tensor, inv_prior_variance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain and width of the proposal on the observed subspace: the kernel times the next twist, both Gaussian.

    Near a particle the data are modelled as locally Gaussian with variance ``v`` along the observed directions.
    Then the next twist ``N(y; P x0_hat(x'), r'^2)``, as a function of ``P x'``, is a Gaussian of variance
    ``tau'^2 = s'^2 (1 + sigma'^2 / v)`` (``s'`` the forward std at the next time, ``sigma' = s' / m'``), centred
    where Tweedie's estimate, which is a martingale along the reverse process, meets ``y``: ``P mu + (y - P x0_hat)
    / gamma'`` with ``1 / gamma' = m' (1 + sigma'^2 / v)``. The product with the kernel ``N(P mu, sigma^2)`` moves
    ``P mu`` by ``kappa (y - P x0_hat) / gamma'`` with ``kappa = sigma^2 / (sigma^2 + tau'^2)`` and leaves the
    standard deviation ``sigma sqrt(1 - kappa)``. Unlike the first-order (gradient) shift it cannot overshoot when
    the step is wider than the twist, which is what happens over the last steps of a noiseless observation.

    Args:
        std (`torch.Tensor` of shape `(batch,)`): the kernel's ``sigma``.
        next_std, next_mean_coeff (`torch.Tensor` of shape `(batch,)`): ``s'`` and ``m'`` of the next time.
        inv_prior_variance (`torch.Tensor` of shape `(batch,)`): ``1 / v`` (0 for a flat prior).

    Returns:
        ``(gain, scale)``, each of shape `(batch,)`: the residual ``y - P x0_hat`` moves ``P mu`` by
        ``gain * residual``; the observed subspace keeps ``scale * sigma`` of the kernel's standard deviation.
    """
    inflation = 1 + (next_std / next_mean_coeff) ** 2 * inv_prior_variance
    tau2 = next_std**2 * inflation
    kappa = std**2 / (std**2 + tau2)
    return kappa * next_mean_coeff * inflation, torch.sqrt(1 - kappa)


def lookahead_sigma(sigma: torch.Tensor, sigma_end: torch.Tensor) -> torch.Tensor:
    """Noise level ``sqrt(sigma * sigma_end)`` where the one-step lookahead twist lands: the geometric middle between
    the current level and the chain's last one (``sigma`` itself when ``sigma_end >= sigma``)."""
    return sigma * (sigma_end / sigma).clamp(max=1.0).sqrt()


def probability_flow_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    mean_coeff: torch.Tensor,
    std: torch.Tensor,
    next_mean_coeff: torch.Tensor,
    next_std: torch.Tensor,
) -> torch.Tensor:
    """One deterministic DDIM step from ``x`` at the marginal ``(m, s)`` to ``(m', s')`` given Tweedie's estimate
    ``x0`` at ``x``: :func:`~sde_diffusers.sampling.ode.ode_euler_step` in ``(x / m, sigma)`` with the
    probability-flow derivative ``(x / m - x0) / sigma``, i.e. ``m' (x0 + (sigma' / sigma) (x / m - x0))``.
    Coefficients of shape ``(batch,)``; differentiable in ``x`` and ``x0``."""
    m, s, m_next, s_next = (c.to(x.dtype) for c in (mean_coeff, std, next_mean_coeff, next_std))
    sigma, next_sigma = s / m, s_next / m_next
    derivative = (x / broadcast_to(m, x) - x0) / broadcast_to(sigma, x)
    return ode_euler_step(x, derivative, sigma, next_sigma, m, m_next)


def lookahead_variance(sigma2: torch.Tensor, landing_r2: torch.Tensor, landing_sigma2: torch.Tensor) -> torch.Tensor:
    """Variance ``r^2 = sigma^2 / (1 + sigma^2 / v)`` of the lookahead twist at the current level ``sigma^2``.

    ``v`` is the within-mode prior variance read at the landing point, where the posterior variance is
    ``landing_r2 = v s^2 / (v + s^2)`` at level ``s^2 = landing_sigma2``, so ``1 / v = 1 / landing_r2 - 1 / s^2``
    (clamped to ``v <= 1e6``). When the landing point is the current point this is ``landing_r2`` itself (up to that
    clamp). All of shape ``(batch,)``.
    """
    inv_v = (1 / landing_r2 - 1 / landing_sigma2).clamp_min(1e-6)
    return sigma2 / (1 + sigma2 * inv_v)
