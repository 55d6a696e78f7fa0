"""Turning a network output into a score and back.

A network may predict the score itself (NCSN-style, sigma-conditioned), the noise ``epsilon``, the
clean sample ``x_0`` or the velocity ``v``. With ``x_t = m(t) x_0 + s(t) eps`` (from ``SDE.marginal_coeffs``):

* score  = -eps / s
* x_0    = (x_t + s^2 score) / m                     (Tweedie)
* v      = m eps - s x_0,  so  eps = (s x_t + m v) / (m^2 + s^2)

The last line reduces to Diffusers' ``eps = s x_t + m v`` for VP, where ``m^2 + s^2 = 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sde import SDE, VESDE, ScoreFn, broadcast_to

__all__ = [
    "PREDICTION_TYPES",
    "TIME_INPUTS",
    "check_prediction_type",
    "model_output_to_score",
    "score_to_model_output",
    "score_to_x0",
    "model_time",
    "continuous_time",
    "make_score_fn",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "score")
TIME_INPUTS = ("auto", "sigma", "index", "t")


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` or raise a ``ValueError`` naming the accepted values."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def model_output_to_score(
    sde: SDE, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Convert a network output at ``(x, t)`` into ``grad_x log p_t(x)``.

    Args:
        sde (`SDE`): the forward process that defines ``m(t)`` and ``s(t)``.
        model_output (`torch.Tensor`): the network output, same shape as ``x``.
        x (`torch.Tensor`): the noisy sample ``x_t``.
        t (`torch.Tensor`): continuous times, shape ``(batch,)``.
        prediction_type (`str`): one of ``"epsilon"``, ``"v_prediction"``, ``"sample"``, ``"score"``.

    Returns:
        `torch.Tensor`: the score, same shape as ``x``.
    """
    check_prediction_type(prediction_type)
    if model_output.shape != x.shape:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but the sample has shape {tuple(x.shape)}"
        )
    if prediction_type == "score":
        return model_output
    mean_coeff, std = (broadcast_to(c, x) for c in sde.marginal_coeffs(t))
    if prediction_type == "epsilon":
        eps = model_output
    elif prediction_type == "sample":
        eps = (x - mean_coeff * model_output) / std
    else:
        eps = (std * x + mean_coeff * model_output) / (mean_coeff**2 + std**2)
    return -eps / std


def score_to_model_output(
    sde: SDE, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Inverse of :func:`model_output_to_score`: what a network of ``prediction_type`` should output."""
    check_prediction_type(prediction_type)
    if prediction_type == "score":
        return score
    mean_coeff, std = (broadcast_to(c, x) for c in sde.marginal_coeffs(t))
    eps = -std * score
    x0 = (x - std * eps) / mean_coeff
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return mean_coeff * eps - std * x0


def score_to_x0(sde: SDE, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie's denoiser ``E[x_0 | x_t] = (x_t + s^2 score) / m``."""
    mean_coeff, std = (broadcast_to(c, x) for c in sde.marginal_coeffs(t))
    return (x + std**2 * score) / mean_coeff


def _resolve_time_input(sde: SDE, time_input: str) -> str:
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
    if time_input == "auto":
        return "sigma" if isinstance(sde, VESDE) else "index"
    if time_input == "sigma" and not isinstance(sde, VESDE):
        raise ValueError("time_input='sigma' needs a VESDE; VP/sub-VP models take 'index' or 't'")
    return time_input


def model_time(sde: SDE, t: torch.Tensor, time_input: str = "auto") -> torch.Tensor:
    """The timestep a network is conditioned on, from continuous ``t``.

    ``"sigma"`` (VE default): the noise level ``sigma(t)`` as a float tensor (a float cast to long would
    break the Fourier embedding). ``"index"`` (VP/sub-VP default): ``t * (N - 1)``, the DDPM timestep
    scale. ``"t"``: ``t`` itself.
    """
    kind = _resolve_time_input(sde, time_input)
    if kind == "sigma":
        return sde.sigma(t)
    if kind == "index":
        return t * (sde.N - 1)
    return t


def continuous_time(sde: SDE, timestep: torch.Tensor, time_input: str = "auto") -> torch.Tensor:
    """Inverse of :func:`model_time`."""
    kind = _resolve_time_input(sde, time_input)
    timestep = timestep.to(torch.get_default_dtype()) if not timestep.is_floating_point() else timestep
    if kind == "sigma":
        return sde.sigma_to_t(timestep)
    if kind == "index":
        return timestep / (sde.N - 1)
    return timestep


def make_score_fn(
    model: Callable[..., object],
    sde: SDE,
    prediction_type: str = "epsilon",
    time_input: str = "auto",
    **model_kwargs,
) -> ScoreFn:
    """Wrap a network as ``score_fn(x, t)`` with continuous ``t`` of shape ``(batch,)``.

    Args:
        model: a callable ``model(x, timestep, **model_kwargs)`` returning a tensor or an object with a
            ``.sample`` attribute (e.g. ``UNet2DModel``).
        sde (`SDE`): the forward process the network was trained for.
        prediction_type (`str`): what the network predicts (see :data:`PREDICTION_TYPES`).
        time_input (`str`): how the network is conditioned on time (see :func:`model_time`).
        **model_kwargs: passed to every call (e.g. ``class_labels``).

    Returns:
        A function ``score_fn(x, t)``.
    """
    check_prediction_type(prediction_type)
    _resolve_time_input(sde, time_input)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, model_time(sde, t, time_input), **model_kwargs)
        out = getattr(out, "sample", out)
        return model_output_to_score(sde, out, x, t, prediction_type)

    return score_fn
