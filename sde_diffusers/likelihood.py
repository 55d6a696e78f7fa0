"""Exact log-likelihoods, bits per dimension and latent encodings through the probability-flow ODE.

For the ODE ``dx/dt = f(x, t)`` of an SDE, the instantaneous change of variables gives

    log p_eps(x) = log p_T(z) + int_eps^T div_x f(x_t, t) dt,    z = x_T,

so one solve of the augmented ODE ``(x, delta)' = (f, div f)`` from ``eps`` to ``T`` yields the latent ``z`` and
the log-likelihood (Song et al., 2021, following FFJORD). The divergence is exact (autograd over every
dimension; small data only) or the Skilling–Hutchinson estimate ``E_v[v^T (df/dx) v]`` with Rademacher or
Gaussian probes ``v`` drawn once per solve. Each evaluation costs **one** network forward pass and one
vector–Jacobian product per probe: the drift and its divergence come from the same graph. (The reference
implementation runs the network twice per evaluation and round-trips through NumPy on the CPU.)

Bits per dimension::

    bits_per_dim = -log_likelihood / (D ln 2) + offset_bits

where ``D`` is the number of dimensions of one sample and ``offset_bits`` converts the density of data rescaled
from ``L = num_levels`` integer levels (256 for 8-bit images) to ``data_range = (lo, hi)`` back to the density
over the integer grid, one unit per level: ``offset_bits = log2(L / (hi - lo))``, i.e. 8 for 8-bit data in
``[0, 1]`` and 7 for 8-bit data in ``[-1, 1]``. Pass ``offset_bits=0`` for the continuous density itself. With
``dequantize=True``, data ``lo + (hi - lo) k / (L - 1)`` is replaced by ``lo + (hi - lo) (k + u) / L``,
``u ~ U[0, 1)^D``, and ``log_likelihood`` is averaged over ``num_dequant`` draws: an estimate of the variational lower
bound of the discrete log-likelihood, the number reported in the literature (e.g. 2.99 bits/dim for DDPM++ sub-VP
on CIFAR-10).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .parameterization import check_prediction_type, make_score_fn
from .sampling._common import SamplerOutput, check_time_span, checked_score
from .sampling.ode import solve_probability_flow
from .sampling.solver import check_method, check_sample, odeint
from .scheduler_sde import SchedulerSDE, check_data_range
from .sde import SDE, VESDE, ScoreFn
from .validation import check_choice, check_int, check_number, check_positive

__all__ = [
    "LikelihoodOutput",
    "TRACE_ESTIMATORS",
    "log_likelihood",
    "encode",
    "decode",
    "dequantization_offset_bits",
    "sde_from_scheduler_config",
    "resolve_score_fn",
    "default_prediction_type",
]

TRACE_ESTIMATORS = ("rademacher", "gaussian", "exact")


@dataclass
class LikelihoodOutput(BaseOutput):
    """Output of :func:`log_likelihood`.

    Args:
        log_likelihood (`torch.Tensor` of shape `(batch,)`): ``log p_eps(x)`` in nats (averaged over
            dequantization draws).
        bits_per_dim (`torch.Tensor` of shape `(batch,)`): ``-log_likelihood / (D ln 2) + offset_bits``.
        z (`torch.Tensor`): the latent ``x_T`` of the (first dequantized) input, shape of ``x``.
        nfe (`int`): network evaluations over all solves (each one forward and one VJP per probe).
        prior_logp (`torch.Tensor` of shape `(batch,)`): ``log p_T(z)`` (averaged over draws).
        delta_logp (`torch.Tensor` of shape `(batch,)`): the integrated divergence (averaged over draws).
        offset_bits (`float`): the offset that was added to the bits per dimension.
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    z: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    offset_bits: float


# ---------------------------------------------------------------------------------------------------------
# Models, configs and score functions
# ---------------------------------------------------------------------------------------------------------
def sde_from_scheduler_config(config: Mapping | object) -> SDE:
    """The SDE a model was trained for, from its scheduler or the scheduler's config: the SDE of
    :class:`~sde_diffusers.scheduler_sde.SchedulerSDE` (which documents the conventions of every family).

    Raises:
        ValueError: the scheduler has no continuous SDE (e.g. a non-linear beta schedule) or its config is invalid.
    """
    return SchedulerSDE(config).sde


def default_prediction_type(model: object, sde: SDE, scheduler_config: Mapping | object | None = None) -> str:
    """What a network outputs when the caller does not say: the model's own ``prediction_type`` attribute (our
    NCSN++/DDPM++ models declare it), else the scheduler's (:class:`~sde_diffusers.scheduler_sde.SchedulerSDE`),
    else ``"score"`` for VE, ``"epsilon"`` otherwise."""
    declared = getattr(model, "prediction_type", None)
    if isinstance(declared, str):
        return declared
    if scheduler_config is not None:
        return SchedulerSDE(scheduler_config).prediction_type
    return "score" if isinstance(sde, VESDE) else "epsilon"


def resolve_score_fn(
    model: torch.nn.Module | ScoreFn,
    sde: SDE | None = None,
    *,
    scheduler_config: Mapping | object | None = None,
    prediction_type: str | None = None,
    time_input: str = "auto",
    model_kwargs: dict | None = None,
) -> tuple[ScoreFn, SDE]:
    """Turn a network or a score function into ``(score_fn, sde)``.

    Args:
        model: a ``torch.nn.Module`` (our models, any Diffusers ``UNet2DModel``, ...) called as
            ``model(x, timestep, **model_kwargs)``, or a plain ``score_fn(x, t)`` callable.
        sde (`SDE`, optional): the forward process; built from ``scheduler_config`` when omitted.
        scheduler_config: the model's scheduler or its config (see :func:`sde_from_scheduler_config`); also
            supplies the default ``prediction_type``.
        prediction_type (`str`, optional): what the network predicts; defaults to the model's own
            ``prediction_type`` attribute (our NCSN++/DDPM++ models declare it), then the scheduler config's, else
            ``"score"`` for VE and ``"epsilon"`` for VP/sub-VP. Must be omitted (or ``"score"``) for a plain
            ``score_fn``.
        time_input (`str`, defaults to `"auto"`): the network's timestep scale and training marginals (see
            :data:`~sde_diffusers.parameterization.TIME_INPUTS`); ``"auto"`` takes the model's ``time_input``
            attribute if it has one, else the scheduler's (``"discrete_index"`` for DDPM-family configs), else sigma
            for VE and ``t (N - 1)`` for VP/sub-VP.
        model_kwargs (`dict`, optional): extra arguments of every network call (e.g. ``class_labels``).
    """
    view = None
    if sde is None:
        if scheduler_config is None:
            raise ValueError("pass the sde, or a scheduler_config to build it from")
        view = SchedulerSDE(scheduler_config, model)
        sde = view.sde
    elif not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE (VESDE, VPSDE or SubVPSDE), got {type(sde).__name__}")
    if isinstance(model, torch.nn.Module):
        if prediction_type is None:
            prediction_type = default_prediction_type(model, sde, scheduler_config)
        check_prediction_type(prediction_type)
        if time_input == "auto" and isinstance(getattr(model, "time_input", None), str):
            time_input = model.time_input
        if time_input == "auto" and view is not None:
            time_input = view.time_input
        return make_score_fn(model, sde, prediction_type, time_input, **(model_kwargs or {})), sde
    if callable(model):
        if prediction_type not in (None, "score"):
            raise ValueError(
                f"a plain callable is taken as score_fn(x, t); prediction_type={prediction_type!r} "
                "needs a torch.nn.Module"
            )
        if model_kwargs:
            raise ValueError("model_kwargs are only for torch.nn.Module models")
        return model, sde
    raise TypeError(f"model must be a torch.nn.Module or a score_fn(x, t) callable, got {type(model).__name__}")


@contextlib.contextmanager
def _evaluation_mode(model: object):
    """Run a module in eval mode (dropout off, the ODE must be deterministic), then restore its mode."""
    training = isinstance(model, torch.nn.Module) and model.training
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


# ---------------------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------------------
def _exact_divergence(out: torch.Tensor, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Trace of ``d out / d x`` per sample via one VJP per dimension (batched with ``is_grads_batched``).

    Samples are independent, so one basis vector applied to the whole batch gives every sample's row at once.
    """
    b = x.shape[0]
    d = x[0].numel()
    div = torch.zeros(b, dtype=out.dtype, device=out.device)
    for start in range(0, d, chunk_size):
        idx = torch.arange(start, min(d, start + chunk_size), device=x.device)
        basis = torch.zeros(len(idx), b, d, dtype=out.dtype, device=out.device)
        basis[torch.arange(len(idx), device=x.device), :, idx] = 1.0
        try:
            rows = torch.autograd.grad(
                out, x, basis.reshape(len(idx), *out.shape), retain_graph=True, is_grads_batched=True
            )[0].reshape(len(idx), b, d)
        except (RuntimeError, NotImplementedError):
            # An op without a batching rule: fall back to one VJP per dimension.
            rows = torch.stack(
                [torch.autograd.grad(out, x, v.reshape(out.shape), retain_graph=True)[0].reshape(b, d) for v in basis]
            )
        div += rows[torch.arange(len(idx), device=x.device), :, idx].sum(0)
    return div


def _augmented_fn(
    score_fn: ScoreFn, sde: SDE, shape: torch.Size, probes: torch.Tensor | None, exact_chunk_size: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``func(t, y)`` of the augmented ODE on ``y = [flat x, delta]`` of shape ``(batch, D + 1)``."""
    rsde = sde.reverse(lambda x_, t_: checked_score(score_fn, x_, t_), probability_flow=True)
    b, d = shape[0], math.prod(shape[1:])
    reduce_dims = tuple(range(1, len(shape)))

    def func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = y[:, :d].reshape(shape).detach().requires_grad_(True)
            drift = rsde.sde(x, t)[0]
            if probes is None:
                div = _exact_divergence(drift, x, exact_chunk_size)
            else:
                div = torch.zeros(b, dtype=y.dtype, device=y.device)
                k = probes.shape[0]
                for i in range(k):  # one forward pass, one VJP per probe
                    vjp = torch.autograd.grad(drift, x, probes[i], retain_graph=i < k - 1)[0]
                    div = div + (vjp * probes[i]).sum(dim=reduce_dims)
                div = div / k
        return torch.cat([drift.detach().reshape(b, d), div.detach().reshape(b, 1).to(y.dtype)], dim=1)

    return func


# ---------------------------------------------------------------------------------------------------------
# Data handling
# ---------------------------------------------------------------------------------------------------------
def dequantization_offset_bits(data_range: tuple[float, float] = (-1.0, 1.0), num_levels: int = 256) -> float:
    """``log2(num_levels / (hi - lo))``: bits per dimension to add to the continuous density of data rescaled
    from ``num_levels`` integer levels to ``[lo, hi]`` (8-bit data: 8 for ``[0, 1]``, 7 for ``[-1, 1]``)."""
    lo, hi = check_data_range(data_range)
    return math.log2(check_int("num_levels", num_levels, 2) / (hi - lo))


def _quantize(x: torch.Tensor, lo: float, hi: float, num_levels: int) -> torch.Tensor:
    """Integer levels ``k`` of data ``lo + (hi - lo) k / (L - 1)``; raise if ``x`` is not such data."""
    levels = num_levels - 1
    tol = 1e-6 * (hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise ValueError(
            f"dequantize=True needs data in data_range=({lo}, {hi}); got values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (set data_range to the data's range)"
        )
    k = (x - lo) / (hi - lo) * levels
    k_round = k.round()
    if (k - k_round).abs().max() > 1e-3:
        raise ValueError(
            f"dequantize=True needs data lo + (hi - lo) k / {levels} with integer k (num_levels={num_levels}); "
            "these values are off that grid (already dequantized or resampled? a different num_levels?)"
        )
    return k_round.clamp(0, levels)


def _draw(
    fn: Callable,
    shape: tuple[int, ...],
    generator: torch.Generator | list | None,
    x: torch.Tensor,
    dim: int = 0,
    **kwargs,
) -> torch.Tensor:
    """``fn(shape)`` on ``x``'s device; a list of generators draws each sample's slice (along ``dim``) with its own."""
    if not isinstance(generator, list):
        device = generator.device if generator is not None else x.device
        return fn(shape, generator=generator, device=device, **kwargs).to(x.device)
    one = (*shape[:dim], 1, *shape[dim + 1 :])
    return torch.cat([fn(one, generator=g, device=g.device, **kwargs).to(x.device) for g in generator], dim=dim)


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------
def log_likelihood(
    model: torch.nn.Module | ScoreFn,
    sde: SDE | None,
    x: torch.Tensor,
    *,
    trace: str = "rademacher",
    num_probes: int = 1,
    probes: torch.Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    method: str = "dopri5",
    step_control: str = "per_sample",
    num_steps: int | None = None,
    dequantize: bool = False,
    num_dequant: int = 1,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_levels: int = 256,
    offset_bits: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    scheduler_config: Mapping | object | None = None,
    prediction_type: str | None = None,
    time_input: str = "auto",
    model_kwargs: dict | None = None,
    exact_chunk_size: int = 64,
) -> LikelihoodOutput:
    """Log-likelihood and bits per dimension of a batch under the probability-flow ODE of a score model.

    Args:
        model: a score network (our models, a Diffusers ``UNet2DModel``, any ``torch.nn.Module`` called as
            ``model(x, timestep)``) or a plain ``score_fn(x, t)`` with continuous ``t`` of shape ``(batch,)``.
            Samples must not interact inside it (no batch-norm in training mode).
        sde (`SDE`, optional): the forward process; ``None`` builds it from ``scheduler_config``.
        x (`torch.Tensor` of shape `(batch, ...)`): the data, in ``data_range``.
        trace (`str`, defaults to `"rademacher"`): divergence estimator: `"rademacher"` or `"gaussian"`
            (Skilling–Hutchinson, unbiased) or `"exact"` (``D`` VJPs per evaluation: small data only).
        num_probes (`int`, defaults to 1): Hutchinson probes per evaluation (one VJP each, one forward pass).
        probes (`torch.Tensor` of shape `(num_probes, *x.shape)`, optional): explicit probe vectors (common
            random numbers for comparisons); overrides ``trace``'s draw. Not with ``num_dequant > 1``.
        rtol, atol (`float`, default 1e-5): solver tolerances (the reference values).
        eps (`float`, defaults to 1e-5): the ODE starts at ``t = eps``.
        method (`str`, defaults to `"dopri5"`): see :func:`~sde_diffusers.sampling.solver.odeint`.
        step_control (`str`, defaults to `"per_sample"`): per-sample or batch-coupled (scipy-like) step sizes.
        num_steps (`int`, optional): steps of a fixed-step ``method``.
        dequantize (`bool`, defaults to `False`): uniform dequantization of data on ``num_levels`` levels.
        num_dequant (`int`, defaults to 1): dequantization draws to average (needs ``dequantize=True`` if > 1).
        data_range (`tuple`, defaults to `(-1.0, 1.0)`): range ``(lo, hi)`` of the data (Diffusers models use
            ``[-1, 1]``; score_sde's VE models ``[0, 1]``).
        num_levels (`int`, defaults to 256): quantization levels of the raw data (256 for 8-bit images, 17 for
            scikit-learn's digits).
        offset_bits (`float`, optional): added to the bits per dimension; defaults to
            ``log2(num_levels / (hi - lo))`` (see :func:`dequantization_offset_bits`); ``0`` gives continuous bits.
        generator (`torch.Generator` or a list of them, optional): for probes and dequantization noise; a list
            (one per sample) makes each sample's result independent of its batch.
        scheduler_config, prediction_type, time_input, model_kwargs: how to call a network, see
            :func:`resolve_score_fn`.
        exact_chunk_size (`int`, defaults to 64): dimensions per batched VJP for ``trace="exact"``.

    Returns:
        :class:`LikelihoodOutput`.
    """
    # ---- validate everything before any work --------------------------------------------------------
    x = check_sample("x", x)
    check_choice("trace", trace, TRACE_ESTIMATORS)
    for name, value in (
        ("num_probes", num_probes),
        ("num_dequant", num_dequant),
        ("exact_chunk_size", exact_chunk_size),
    ):
        check_int(name, value)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    check_method(method)
    check_choice("step_control", step_control, ("per_sample", "batch"))
    lo, hi = check_data_range(data_range)
    offset_bits = (
        dequantization_offset_bits((lo, hi), num_levels)
        if offset_bits is None
        else check_number("offset_bits", offset_bits)
    )
    if num_dequant > 1 and not dequantize:
        raise ValueError("num_dequant > 1 averages dequantization draws: set dequantize=True")
    if probes is not None:
        if trace == "exact":
            raise ValueError("probes are for the Hutchinson estimators, not trace='exact'")
        if num_dequant > 1:
            raise ValueError("explicit probes cannot be reused across num_dequant > 1 draws")
        if not isinstance(probes, torch.Tensor) or probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape:
            got = tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__
            raise ValueError(f"probes must have shape (num_probes, {', '.join(map(str, x.shape))}), got {got}")
        probes = probes.to(device=x.device, dtype=x.dtype)
    score_fn, sde = resolve_score_fn(
        model,
        sde,
        scheduler_config=scheduler_config,
        prediction_type=prediction_type,
        time_input=time_input,
        model_kwargs=model_kwargs,
    )
    eps = check_time_span(sde, eps)
    levels = _quantize(x, lo, hi, check_int("num_levels", num_levels, 2)) if dequantize else None

    # ---- solve ------------------------------------------------------------------------------------------
    shape, b, d = x.shape, x.shape[0], x[0].numel()
    if isinstance(generator, list) and len(generator) != x.shape[0]:
        raise ValueError(f"a list of generators needs one per sample ({x.shape[0]}), got {len(generator)}")
    nfe = 0
    prior_sum = torch.zeros(b, dtype=x.dtype, device=x.device)
    delta_sum = torch.zeros_like(prior_sum)
    z_first = None
    with contextlib.ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
            x = x.clone()
        stack.enter_context(torch.no_grad())
        stack.enter_context(_evaluation_mode(model))
        for _ in range(num_dequant):
            data = x
            if levels is not None:
                u = _draw(torch.rand, shape, generator, x, dtype=x.dtype)
                data = lo + (hi - lo) * (levels + u) / num_levels
            draw = probes
            if draw is None and trace != "exact":
                pshape = (num_probes, *shape)
                if trace == "rademacher":
                    draw = _draw(lambda *a, **k: torch.randint(0, 2, *a, **k), pshape, generator, x, 1)
                    draw = draw.to(x.dtype) * 2 - 1
                else:
                    draw = _draw(torch.randn, pshape, generator, x, 1, dtype=x.dtype)
            func = _augmented_fn(score_fn, sde, shape, draw, exact_chunk_size)
            y0 = torch.cat([data.reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], dim=1)
            sol = odeint(
                func,
                y0,
                eps,
                sde.T,
                method=method,
                rtol=rtol,
                atol=atol,
                step_control=step_control,
                num_steps=num_steps,
            )
            nfe += sol.nfe
            z = sol.y[:, :d].reshape(shape)
            prior_sum += sde.prior_logp(z)
            delta_sum += sol.y[:, d]
            if z_first is None:
                z_first = z
    prior_logp, delta_logp = prior_sum / num_dequant, delta_sum / num_dequant
    ll = prior_logp + delta_logp
    bpd = -ll / (d * math.log(2.0)) + offset_bits
    return LikelihoodOutput(
        log_likelihood=ll,
        bits_per_dim=bpd,
        z=z_first,
        nfe=nfe,
        prior_logp=prior_logp,
        delta_logp=delta_logp,
        offset_bits=float(offset_bits),
    )


def _transport(
    model, sde, x, t_start_is_eps: bool, eps, method, rtol, atol, step_control, num_steps, return_dict, **kw
):
    score_fn, sde = resolve_score_fn(model, sde, **kw)
    eps = check_time_span(sde, eps)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_evaluation_mode(model))
        t0, t1 = (eps, sde.T) if t_start_is_eps else (sde.T, eps)
        out = solve_probability_flow(
            score_fn,
            sde,
            x,
            t0,
            t1,
            method=method,
            rtol=rtol,
            atol=atol,
            step_control=step_control,
            num_steps=num_steps,
        )
    return out if return_dict else (out.sample, out.nfe)


def encode(
    model: torch.nn.Module | ScoreFn,
    sde: SDE | None,
    x: torch.Tensor,
    *,
    eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_control: str = "per_sample",
    num_steps: int | None = None,
    return_dict: bool = True,
    scheduler_config: Mapping | object | None = None,
    prediction_type: str | None = None,
    time_input: str = "auto",
    model_kwargs: dict | None = None,
) -> SamplerOutput | tuple:
    """Map data ``x`` (at ``t = eps``) to its latent ``z = x_T`` along the probability-flow ODE.

    The map is deterministic and invertible (:func:`decode` undoes it up to the solver tolerance), so latents
    can be interpolated (e.g. spherically) and decoded. Arguments as in :func:`log_likelihood`.

    Returns:
        :class:`~sde_diffusers.sampling._common.SamplerOutput` (``sample`` is ``z``), or ``(z, nfe)``.
    """
    return _transport(
        model,
        sde,
        x,
        True,
        eps,
        method,
        rtol,
        atol,
        step_control,
        num_steps,
        return_dict,
        scheduler_config=scheduler_config,
        prediction_type=prediction_type,
        time_input=time_input,
        model_kwargs=model_kwargs,
    )


def decode(
    model: torch.nn.Module | ScoreFn,
    sde: SDE | None,
    z: torch.Tensor,
    *,
    eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_control: str = "per_sample",
    num_steps: int | None = None,
    return_dict: bool = True,
    scheduler_config: Mapping | object | None = None,
    prediction_type: str | None = None,
    time_input: str = "auto",
    model_kwargs: dict | None = None,
) -> SamplerOutput | tuple:
    """Map latents ``z`` (at ``t = T``) back to data at ``t = eps``; the inverse of :func:`encode`.

    Returns:
        :class:`~sde_diffusers.sampling._common.SamplerOutput` (``sample`` is ``x``), or ``(x, nfe)``.
    """
    return _transport(
        model,
        sde,
        z,
        False,
        eps,
        method,
        rtol,
        atol,
        step_control,
        num_steps,
        return_dict,
        scheduler_config=scheduler_config,
        prediction_type=prediction_type,
        time_input=time_input,
        model_kwargs=model_kwargs,
    )
