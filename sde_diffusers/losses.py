"""Score-matching objectives.

All losses take a score function ``score_fn(x, t) -> grad_x log p_t(x)`` with continuous ``t`` of shape
``(batch,)`` (wrap a network with :func:`sde_diffusers.parameterization.make_score_fn`), except the DDPM
loss, which compares a network's ``epsilon`` with the noise on the discrete chain. Perturbation kernels,
diffusion coefficients and noise levels come from the :class:`~sde_diffusers.sde.SDE` object; nothing is
re-derived here.

* :func:`denoising_score_matching_loss`: continuous-time DSM for VE / VP / sub-VP (Song et al., 2021, eq. 7),
  ``t ~ U(eps, T)``, weighting ``lambda(t) = std(t)^2`` or, with ``likelihood_weighting``, ``g(t)^2``
  (Song et al., 2021b, "Maximum likelihood training of score-based diffusion models").
* :func:`smld_loss`: NCSN's discrete loss over ``N`` noise levels, ``sigma^2``-weighted (Song & Ermon, 2019).
* :func:`ddpm_loss`: DDPM's ``epsilon`` MSE on the discrete chain (Ho et al., 2020).
* :func:`sliced_score_matching_loss`: sliced score matching with Rademacher or Gaussian projections,
  optionally variance-reduced (Song et al., 2019).
* :func:`exact_score_matching_loss`: Hyvärinen's implicit score matching with the full Jacobian trace
  (``D`` backward passes: for low-dimensional data).
* :func:`soft_score_matching_loss`: Soft Score Matching (Daras et al., 2022) of an ``x_0``-predicting network under
  any :class:`~sde_diffusers.corruption.LinearCorruption` ``x_t = C_t x_0 + s_t z`` (blur + noise, or a Gaussian SDE).

The continuous losses corrupt the data through the corruption strategy
(:class:`~sde_diffusers.corruption.GaussianCorruption` for an SDE), so ``x_t`` is built in one place for every loss.

Per-sample reduction (``reduce_mean``), as in score_sde: ``True`` averages the squared error over data
dimensions; ``False`` takes half its sum (the usual ``1/2 ||.||^2``). Every loss returns the batch mean,
and with ``return_per_sample=True`` also the per-sample values (shape ``(batch,)``).

Gradient-based objectives (sliced / exact) differentiate ``score_fn`` with respect to its input summed
over the batch, which is exact only when samples do not interact (GroupNorm is fine, BatchNorm in training
mode is not).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .corruption import GaussianCorruption, LinearCorruption, as_corruption
from .corruption.base import check_batch, check_noise
from .sde import SDE, VESDE, VPSDE, ScoreFn, broadcast_to
from .validation import check_choice, check_int, check_positive

__all__ = [
    "PROJECTION_TYPES",
    "sample_time",
    "denoising_score_matching_loss",
    "smld_loss",
    "ddpm_loss",
    "sliced_score_matching_loss",
    "exact_score_matching_loss",
    "SOFT_WEIGHTINGS",
    "soft_score_matching_loss",
]

PROJECTION_TYPES = ("rademacher", "gaussian")
SOFT_WEIGHTINGS = ("score", "uniform")

LossReturn = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# ---- shared helpers ----------------------------------------------------------------------------------
def _check_output(name: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = getattr(out, "sample", out)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor of the input's shape {tuple(x.shape)}, got {shape}")
    return out


def _reduce(sq: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """Per-sample reduction of a squared error: mean over data dims, or half the sum."""
    flat = sq.reshape(sq.shape[0], -1)
    return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


def _finish(per_sample: torch.Tensor, return_per_sample: bool) -> LossReturn:
    loss = per_sample.mean()
    return (loss, per_sample) if return_per_sample else loss


def _call_score(score_fn: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return score_fn(x) if t is None else score_fn(x, t)


def sample_time(
    sde: SDE,
    batch_size: int,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw ``t ~ U(eps, T)``, shape ``(batch_size,)`` (the training-time distribution of score_sde).

    Args:
        sde (`SDE`): supplies ``T``.
        batch_size (`int`): number of times.
        eps (`float`, defaults to 1e-5): smallest time, in ``(0, T)`` (avoids ``std(0) = 0`` for VP).
        generator (`torch.Generator`, *optional*): for reproducible draws (on ``device``).
        device, dtype: of the result.
    """
    corruption = GaussianCorruption(sde, eps)
    check_int("batch_size", batch_size, 1)
    return corruption.sample_time(batch_size, generator=generator, device=device, dtype=dtype)


def _dsm_per_sample(
    score_fn: ScoreFn,
    corruption: GaussianCorruption,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    reduce_mean: bool,
    likelihood_weighting: bool,
) -> torch.Tensor:
    """DSM at given (validated) times and noise: the single implementation behind the continuous and SMLD losses."""
    x_t = corruption._corrupt(x0, t, noise)
    std_b = broadcast_to(corruption._noise_std(t), x0)
    score = _check_output("score_fn", score_fn(x_t, t), x_t)
    if likelihood_weighting:
        # lambda(t) = g(t)^2 on the unscaled score error: the ELBO weighting.
        g2 = corruption.sde.sde(torch.zeros_like(x0), t)[1] ** 2
        return _reduce((score + noise / std_b) ** 2, reduce_mean) * g2
    # lambda(t) = std(t)^2: (std * score + z)^2, unit scale at every noise level.
    return _reduce((score * std_b + noise) ** 2, reduce_mean)


# ---- denoising score matching ------------------------------------------------------------------------
def denoising_score_matching_loss(
    score_fn: ScoreFn,
    sde: SDE,
    x0: torch.Tensor,
    *,
    eps: float = 1e-5,
    reduce_mean: bool = True,
    likelihood_weighting: bool = False,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_per_sample: bool = False,
) -> LossReturn:
    r"""Continuous-time denoising score matching for any :class:`~sde_diffusers.sde.SDE`.

    ``x_t = m(t) x_0 + s(t) z`` with ``t ~ U(eps, T)`` and ``z ~ N(0, I)``; per sample

    * default: ``reduce(|| s(t) score_fn(x_t, t) + z ||^2)`` (weighting ``lambda(t) = s(t)^2``);
    * ``likelihood_weighting=True``: ``g(t)^2 reduce(|| score_fn(x_t, t) + z / s(t) ||^2)``, with ``g`` from
      ``sde.sde``, which makes the loss an upper bound on the negative log-likelihood (up to a constant).

    For an ``epsilon`` network wrapped by ``make_score_fn`` the default is exactly the DDPM ``epsilon`` MSE.

    Args:
        score_fn (`Callable`): ``score_fn(x, t)`` returning the score, shape of ``x``.
        sde (`SDE`): the forward process.
        x0 (`torch.Tensor`): clean data ``(batch, ...)``.
        eps (`float`, defaults to 1e-5): smallest sampled time, in ``(0, T)``.
        reduce_mean (`bool`, defaults to `True`): mean over data dimensions (else half the sum). score_sde's
            CIFAR-10 VE configs use ``False``, its VP / sub-VP configs ``True``.
        likelihood_weighting (`bool`, defaults to `False`): use ``g(t)^2`` instead of ``s(t)^2``.
        t (`torch.Tensor`, *optional*): times ``(batch,)`` in ``[0, T]`` (``std(t) > 0``) instead of sampling them.
        noise (`torch.Tensor`, *optional*): ``z`` with the shape of ``x0`` instead of sampling it.
        generator (`torch.Generator`, *optional*): for the sampled ``t`` and ``z`` (on ``x0``'s device).
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.

    Returns:
        `torch.Tensor`: the batch-mean loss, or ``(loss, per_sample)`` with ``per_sample`` of shape ``(batch,)``.
    """
    corruption = GaussianCorruption(sde, eps)
    x0 = check_batch(x0, "x0")
    if t is None:
        t = corruption.sample_time(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = corruption.check_time(t, x0).to(device=x0.device, dtype=x0.dtype)
    noise = check_noise(noise, x0, generator)
    per_sample = _dsm_per_sample(score_fn, corruption, x0, t, noise, reduce_mean, likelihood_weighting)
    return _finish(per_sample, return_per_sample)


def _check_indices(
    timesteps: torch.Tensor | None,
    batch: int,
    n: int,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if timesteps is None:
        return torch.randint(0, n, (batch,), generator=generator, device=device)
    if not isinstance(timesteps, torch.Tensor) or timesteps.is_floating_point() or timesteps.dtype == torch.bool:
        raise TypeError("timesteps must be an integer tensor of indices")
    if timesteps.shape != (batch,):
        raise ValueError(f"timesteps must have shape ({batch},), got {tuple(timesteps.shape)}")
    if bool(((timesteps < 0) | (timesteps >= n)).any()):
        raise ValueError(f"timesteps must be indices in [0, {n}), got values outside")
    return timesteps.to(device)


def _num_levels(name: str, value: int | None, default: int) -> int:
    return default if value is None else check_int(name, value, 2)


# ---- discrete losses ---------------------------------------------------------------------------------
def smld_loss(
    score_fn: ScoreFn,
    sde: VESDE,
    x0: torch.Tensor,
    *,
    num_scales: int | None = None,
    reduce_mean: bool = False,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_per_sample: bool = False,
) -> LossReturn:
    r"""NCSN / SMLD loss: DSM over ``N`` geometric noise levels, weighted by ``sigma_i^2``.

    A level ``i ~ U{0, ..., N-1}`` is drawn per sample, ``x = x_0 + sigma_i z`` with ``sigma_i`` the
    ``i``-th of ``sde.discrete_sigmas(N)`` (increasing), and the loss is
    ``sigma_i^2 reduce(|| score - (-z / sigma_i) ||^2) = reduce(|| sigma_i score + z ||^2)``. The score
    function is evaluated at ``t_i = i / (N - 1)``, where the continuous ``sigma(t_i) = sigma_i`` exactly,
    so the loss is the continuous DSM restricted to the grid (and tends to it, with ``eps -> 0``, as N grows).

    Args:
        score_fn (`Callable`): ``score_fn(x, t)`` (e.g. ``make_score_fn`` around a sigma-conditioned network).
        sde (`VESDE`): supplies the noise levels.
        x0 (`torch.Tensor`): clean data ``(batch, ...)``.
        num_scales (`int`, *optional*): number of levels ``N`` (defaults to ``sde.N``).
        reduce_mean (`bool`, defaults to `False`): mean over data dimensions (else half the sum, as NCSN).
        timesteps (`torch.Tensor`, *optional*): integer level indices ``(batch,)`` instead of sampling them.
        noise (`torch.Tensor`, *optional*): ``z`` with the shape of ``x0``.
        generator (`torch.Generator`, *optional*): for sampled indices and noise.
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.

    Returns:
        `torch.Tensor`: the batch-mean loss, or ``(loss, per_sample)``.
    """
    if not isinstance(sde, VESDE):
        raise TypeError(f"smld_loss needs a VESDE, got {type(sde).__name__}; use ddpm_loss for VP")
    x0 = check_batch(x0, "x0")
    n = _num_levels("num_scales", num_scales, sde.N)
    idx = _check_indices(timesteps, x0.shape[0], n, x0.device, generator)
    noise = check_noise(noise, x0, generator)
    t = idx.to(x0.dtype) / (n - 1)
    per_sample = _dsm_per_sample(score_fn, GaussianCorruption(sde), x0, t, noise, reduce_mean, False)
    return _finish(per_sample, return_per_sample)


def ddpm_loss(
    model_fn: Callable[..., torch.Tensor],
    sde: VPSDE,
    x0: torch.Tensor,
    *,
    num_steps: int | None = None,
    reduce_mean: bool = True,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_per_sample: bool = False,
    **model_kwargs,
) -> LossReturn:
    r"""DDPM loss: ``reduce(|| eps_theta(x_i, i) - z ||^2)`` on the discrete chain of ``sde``.

    ``i ~ U{0, ..., N-1}``, ``x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) z`` with
    ``alpha_bar_i = prod_{j <= i} (1 - beta_j)`` and ``beta_j = sde.discrete_betas(N)[j]``.
    ``model_fn(x_i, i, **model_kwargs)`` receives the integer indices (the ``UNet2DModel`` /
    ``DDPMPipeline`` convention) and returns ``epsilon`` (a tensor or an object with ``.sample``).

    Args:
        model_fn (`Callable`): the ``epsilon`` network, e.g. a ``DDPMppModel`` or ``UNet2DModel``.
        sde (`VPSDE`): supplies the betas.
        x0 (`torch.Tensor`): clean data ``(batch, ...)``.
        num_steps (`int`, *optional*): chain length ``N`` (defaults to ``sde.N``).
        reduce_mean (`bool`, defaults to `True`): mean over data dimensions (else half the sum).
        timesteps (`torch.Tensor`, *optional*): integer indices ``(batch,)`` instead of sampling them.
        noise (`torch.Tensor`, *optional*): ``z`` with the shape of ``x0``.
        generator (`torch.Generator`, *optional*): for sampled indices and noise.
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.
        **model_kwargs: passed to ``model_fn`` (e.g. ``class_labels``).

    Returns:
        `torch.Tensor`: the batch-mean loss, or ``(loss, per_sample)``.
    """
    if not isinstance(sde, VPSDE):
        raise TypeError(f"ddpm_loss needs a VPSDE (the DDPM chain), got {type(sde).__name__}")
    x0 = check_batch(x0, "x0")
    n = _num_levels("num_steps", num_steps, sde.N)
    idx = _check_indices(timesteps, x0.shape[0], n, x0.device, generator)
    noise = check_noise(noise, x0, generator)
    # Marginal of the SDE's own discrete chain x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z.
    # (float64 on the CPU for the long product, then the data's device and dtype: MPS has no float64.)
    alphas_cumprod = sde.discrete_alphas_cumprod(n)
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[idx]
    x_t = broadcast_to(abar.sqrt(), x0) * x0 + broadcast_to((1.0 - abar).sqrt(), x0) * noise
    eps_pred = _check_output("model_fn", model_fn(x_t, idx, **model_kwargs), x_t)
    return _finish(_reduce((eps_pred - noise) ** 2, reduce_mean), return_per_sample)


# ---- score matching with derivatives -----------------------------------------------------------------
def _input_grad(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``d output / d x`` keeping the graph (the loss must stay differentiable in the model's parameters)."""
    if not output.requires_grad:
        return torch.zeros_like(x)  # the score does not depend on x: zero Jacobian
    (grad,) = torch.autograd.grad(output, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _draw_projections(
    projection_type: str, num_projections: int, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    shape = (num_projections, *x.shape)
    if projection_type == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)


def sliced_score_matching_loss(
    score_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    *,
    num_projections: int = 1,
    projection_type: str = "rademacher",
    variance_reduction: bool = False,
    projections: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduce_mean: bool = False,
    return_per_sample: bool = False,
) -> LossReturn:
    r"""Sliced score matching: ``v^T (d s / d x) v + 1/2 (v^T s)^2``, averaged over projections ``v``.

    With ``E[v v^T] = I`` (Rademacher or standard Gaussian ``v``) its expectation is Hyvärinen's objective
    ``tr(d s / d x) + 1/2 ||s||^2`` (:func:`exact_score_matching_loss`). ``variance_reduction=True``
    (SSM-VR) replaces ``1/2 (v^T s)^2`` by its expectation ``1/2 ||s||^2``. One backward pass per projection.

    Args:
        score_fn (`Callable`): ``score_fn(x)`` when ``t`` is None, else ``score_fn(x, t)``.
        x (`torch.Tensor`): samples ``(batch, ...)`` of the distribution whose score is matched (for a
            diffusion, perturbed data ``x_t``).
        t (`torch.Tensor`, *optional*): times ``(batch,)`` passed to ``score_fn``.
        num_projections (`int`, defaults to 1): projections per sample.
        projection_type (`str`, defaults to ``"rademacher"``): ``"rademacher"`` or ``"gaussian"``.
        variance_reduction (`bool`, defaults to `False`): use the closed-form ``1/2 ||s||^2`` term.
        projections (`torch.Tensor`, *optional*): explicit ``v`` of shape ``(num_projections, *x.shape)``.
        generator (`torch.Generator`, *optional*): for drawing ``v``.
        reduce_mean (`bool`, defaults to `False`): divide the per-sample objective by the data dimension.
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.

    Returns:
        `torch.Tensor`: the batch-mean loss (differentiable w.r.t. ``score_fn``'s parameters), or
        ``(loss, per_sample)``.
    """
    x = check_batch(x, "x")
    projection_type = check_choice(
        "projection_type",
        projection_type.lower() if isinstance(projection_type, str) else projection_type,
        PROJECTION_TYPES,
    )
    check_int("num_projections", num_projections, 1)
    if projections is None:
        projections = _draw_projections(projection_type, num_projections, x, generator)
    elif not isinstance(projections, torch.Tensor) or projections.shape != (num_projections, *x.shape):
        shape = tuple(projections.shape) if isinstance(projections, torch.Tensor) else type(projections).__name__
        raise ValueError(f"projections must have shape {(num_projections, *x.shape)}, got {shape}")
    x_req = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = _check_output("score_fn", _call_score(score_fn, x_req, t), x_req)
        flat_score = score.reshape(score.shape[0], -1)
        per_sample = torch.zeros(x.shape[0], device=x.device, dtype=score.dtype)
        for v in projections.to(device=x.device, dtype=score.dtype):
            flat_v = v.reshape(v.shape[0], -1)
            sv = (flat_score * flat_v).sum(dim=1)
            grad = _input_grad(sv.sum(), x_req)
            jvp_term = (grad.reshape(grad.shape[0], -1) * flat_v).sum(dim=1)
            norm_term = 0.5 * flat_score.pow(2).sum(dim=1) if variance_reduction else 0.5 * sv**2
            per_sample = per_sample + jvp_term + norm_term
        per_sample = per_sample / projections.shape[0]
    if reduce_mean:
        per_sample = per_sample / flat_score.shape[1]
    return _finish(per_sample, return_per_sample)


def exact_score_matching_loss(
    score_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor | None = None,
    *,
    reduce_mean: bool = False,
    return_per_sample: bool = False,
) -> LossReturn:
    r"""Hyvärinen's (implicit) score matching: ``tr(d s / d x) + 1/2 ||s||^2`` with the exact trace.

    Equals ``1/2 E||s - grad log p||^2 - 1/2 E||grad log p||^2``: the explicit score-matching loss up to
    a constant that does not depend on ``s``. At the true score it equals ``-1/2 E||grad log p||^2``.
    The trace takes one backward pass per data dimension, so use it for low-dimensional data.

    Args:
        score_fn (`Callable`): ``score_fn(x)`` when ``t`` is None, else ``score_fn(x, t)``.
        x (`torch.Tensor`): samples ``(batch, ...)``.
        t (`torch.Tensor`, *optional*): times ``(batch,)`` passed to ``score_fn``.
        reduce_mean (`bool`, defaults to `False`): divide the per-sample objective by the data dimension.
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.

    Returns:
        `torch.Tensor`: the batch-mean loss (differentiable w.r.t. ``score_fn``'s parameters), or
        ``(loss, per_sample)``.
    """
    x = check_batch(x, "x")
    x_req = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = _check_output("score_fn", _call_score(score_fn, x_req, t), x_req)
        flat_score = score.reshape(score.shape[0], -1)
        dims = flat_score.shape[1]
        trace = torch.zeros(x.shape[0], device=x.device, dtype=score.dtype)
        for i in range(dims):
            grad = _input_grad(flat_score[:, i].sum(), x_req)
            trace = trace + grad.reshape(grad.shape[0], -1)[:, i]
        per_sample = trace + 0.5 * flat_score.pow(2).sum(dim=1)
    if reduce_mean:
        per_sample = per_sample / dims
    return _finish(per_sample, return_per_sample)


# ---- Soft Score Matching -----------------------------------------------------------------------------
def soft_score_matching_loss(
    model_fn: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    corruption: LinearCorruption | object,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: str | Callable[[torch.Tensor], torch.Tensor] = "score",
    time_scale: float | None = None,
    reduce_mean: bool = True,
    return_per_sample: bool = False,
    **model_kwargs,
) -> LossReturn:
    r"""Soft Score Matching: ``w(t) reduce(|| C_t (h(x_t, t) - x_0) ||^2)`` with ``x_t = C_t x_0 + s_t z``.

    The network ``h`` predicts the clean image ``x_0``; the loss only asks that its prediction, *after
    corruption*, matches the corrupted target, so errors in what ``C_t`` removes (frequencies a blur damps) cost
    nothing. Its minimiser satisfies ``C_t h = C_t E[x_0 | x_t]``, which is all the score
    ``grad log p_t(x_t) = (C_t h - x_t) / s_t^2`` and the samplers of :mod:`sde_diffusers.sampling.soft` use.
    The corruption is any :class:`~sde_diffusers.corruption.LinearCorruption`: Soft Diffusion's blur + noise, or
    a Gaussian SDE (:class:`~sde_diffusers.corruption.GaussianCorruption`, ``C_t = m(t) I``), for which the loss is
    denoising score matching of an ``x_0``-predicting network.

    Weightings ``w(t)``:

    * ``"score"`` (default): ``1 / s_t^2``. This is denoising score matching of the score above with
      ``lambda(t) = s_t^2`` (Song et al.'s choice), i.e. the MSE of the implied noise estimate
      ``(x_t - C_t h) / s_t`` against ``z``; every level contributes on the same scale.
    * ``"uniform"``: ``1``, the unweighted soft loss; relative to ``"score"`` it shifts weight from the
      least to the most corrupted levels (by the factor ``s_t^2``).
    * a callable ``w(t) -> (batch,)``.

    Args:
        model_fn (`Callable`): ``model_fn(x_t, t * time_scale, **model_kwargs)`` returning ``x_0``'s estimate
            (a tensor of ``x0``'s shape or an object with ``.sample``, e.g. a ``UNet2DModel``).
        x0 (`torch.Tensor` of shape `(batch, ...)`): clean data (images ``(batch, channels, H, W)`` for a blur).
        corruption (`LinearCorruption` or `SoftDiffusionScheduler`): the corruption; a scheduler contributes its
            ``corruption`` and, by default, its model time scale.
        t (`torch.Tensor` of shape `(batch,)`, *optional*): times; drawn ``U(t_min, T)`` of the corruption
            (``U(0, 1)`` for a blur schedule) otherwise.
        noise (`torch.Tensor`, *optional*): ``z``, shape of ``x0``; drawn otherwise.
        generator (`torch.Generator`, *optional*): for the drawn ``t`` and ``z`` (on ``x0``'s device).
        weighting (`str` or `Callable`, defaults to `"score"`): ``"score"``, ``"uniform"`` or ``w(t)``.
        time_scale (`float`, *optional*): the network sees ``t * time_scale``. Defaults to 1 for a corruption
            and to ``num_train_timesteps - 1`` for a ``SoftDiffusionScheduler`` (the scale of its ``timesteps``).
        reduce_mean (`bool`, defaults to `True`): mean over data dimensions (else half the sum).
        return_per_sample (`bool`, defaults to `False`): also return the per-sample losses.
        **model_kwargs: passed to ``model_fn`` (e.g. ``class_labels``).

    Returns:
        `torch.Tensor`: the batch-mean loss, or ``(loss, per_sample)`` with ``per_sample`` of shape ``(batch,)``.
    """
    strategy = as_corruption(corruption)
    if time_scale is None:
        time_scale = 1.0 if strategy is corruption else float(corruption.config.num_train_timesteps - 1)
    else:
        time_scale = check_positive("time_scale", time_scale)
    if not callable(weighting):
        check_choice("weighting", weighting, SOFT_WEIGHTINGS)
    x0 = strategy.check_images(x0, "x0")
    if t is None:
        t = strategy.sample_time(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = strategy.check_time(t, x0).to(device=x0.device, dtype=x0.dtype)
    noise = check_noise(noise, x0, generator)

    x_t = strategy._corrupt(x0, t, noise)
    x0_hat = _check_output("model_fn", model_fn(x_t, t * time_scale, **model_kwargs), x0)
    # C_t is linear: C_t h - C_t x0 = C_t (h - x0), one application instead of two.
    per_sample = _reduce(strategy._degrade(x0_hat - x0, t).pow(2), reduce_mean)
    if weighting == "score":
        w = strategy._noise_std(t).pow(-2)
    elif weighting == "uniform":
        w = torch.ones_like(per_sample)
    else:
        w = weighting(t)
        if not isinstance(w, torch.Tensor) or w.shape != per_sample.shape:
            raise ValueError(f"weighting(t) must return a tensor of shape ({x0.shape[0]},)")
    return _finish(per_sample * w.to(per_sample.dtype), return_per_sample)
