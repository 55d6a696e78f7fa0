"""Turning a network output into a score and back, and the network's time input.

A network may predict the score itself (NCSN-style, sigma-conditioned), the noise ``epsilon``, the
clean sample ``x_0`` or the velocity ``v``. With ``x_t = m(t) x_0 + s(t) eps``:

* score  = -eps / s
* x_0    = (x_t + s^2 score) / m                     (Tweedie)
* v      = m eps - s x_0,  so  eps = (s x_t + m v) / (m^2 + s^2)

The last line reduces to Diffusers' ``eps = s x_t + m v`` for VP, where ``m^2 + s^2 = 1``.

``(m, s)`` are the marginals the network was *trained* with (:func:`training_marginals`): the SDE's own
``marginal_coeffs(t)`` for continuous-time models, and the discrete chain's for models trained on it, selected by
the network's time input (:data:`TIME_INPUTS`):

* ``"sigma"`` (VE, continuous): the timestep is ``sigma(t)``, a float.
* ``"index"`` (VP / sub-VP, continuous): ``t (N - 1)``, the DDPM timestep scale.
* ``"t"``: ``t`` itself.
* ``"discrete_index"`` (VP trained on the discrete DDPM chain: every Diffusers DDPM-family scheduler, official
  ``continuous=False`` VP models): the timestep is ``t (N - 1)`` unrounded, and the marginal is the chain's at
  index ``floor(t (N - 1))``: ``(sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i))``.
* ``"reversed_index"`` (VE trained on the discrete SMLD chain, official ``continuous=False``): the timestep is
  ``round((T - t)(N - 1))`` (index 0 is ``sigma_max``), given as a float; the marginal std is that level's sigma.
* ``"auto"``: ``"sigma"`` for VE, ``"index"`` for VP and sub-VP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sde import SDE, VESDE, VPSDE, ScoreFn, broadcast_to
from .validation import check_choice

__all__ = [
    "PREDICTION_TYPES",
    "TIME_INPUTS",
    "check_prediction_type",
    "check_time_input",
    "training_marginals",
    "model_output_to_score",
    "score_to_model_output",
    "score_to_x0",
    "model_time",
    "continuous_time",
    "make_score_fn",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "score")
TIME_INPUTS = ("auto", "sigma", "index", "t", "discrete_index", "reversed_index")


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` or raise a ``ValueError`` naming the accepted values."""
    return check_choice("prediction_type", prediction_type, PREDICTION_TYPES)


def check_time_input(sde: SDE, time_input: str) -> str:
    """The concrete time input (``"auto"`` resolved) for ``sde``; raises ``ValueError`` if it does not fit the SDE."""
    check_choice("time_input", time_input, TIME_INPUTS)
    is_ve = isinstance(sde, VESDE)
    if time_input == "auto":
        return "sigma" if is_ve else "index"
    if time_input in ("sigma", "reversed_index") and not is_ve:
        raise ValueError(
            f"time_input={time_input!r} needs a VESDE; VP/sub-VP models take 'index', 't' or 'discrete_index'"
        )
    if time_input == "discrete_index" and type(sde) is not VPSDE:
        raise ValueError(
            f"time_input='discrete_index' (the discrete DDPM chain) needs a VPSDE, got {type(sde).__name__}"
            + ("; VE discrete models take 'reversed_index'" if is_ve else "; sub-VP models are continuous ('index')")
        )
    return time_input


def training_marginals(sde: SDE, t: torch.Tensor, time_input: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coefficient and std (each of shape ``(batch,)``) in which a network of ``time_input`` expresses its
    output at ``t``: the discrete chain's for ``"discrete_index"``/``"reversed_index"``, ``sde.marginal_coeffs(t)``
    otherwise."""
    if time_input in ("discrete_index", "reversed_index"):
        return sde.discrete_marginal_coeffs(t)
    return sde.marginal_coeffs(t)


def model_output_to_score(
    sde: SDE,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str,
    time_input: str = "auto",
) -> torch.Tensor:
    """Convert a network output at ``(x, t)`` into ``grad_x log p_t(x)``.

    Args:
        sde (`SDE`): the forward process that defines ``m(t)`` and ``s(t)``.
        model_output (`torch.Tensor`): the network output, same shape as ``x``.
        x (`torch.Tensor`): the noisy sample ``x_t``.
        t (`torch.Tensor`): continuous times, shape ``(batch,)``.
        prediction_type (`str`): one of ``"epsilon"``, ``"v_prediction"``, ``"sample"``, ``"score"``.
        time_input (`str`, defaults to `"auto"`): the network's time input; selects the marginals the output is
            expressed in (see :func:`training_marginals`).

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
    mean_coeff, std = (broadcast_to(c, x) for c in training_marginals(sde, t, time_input))
    if prediction_type == "epsilon":
        eps = model_output
    elif prediction_type == "sample":
        eps = (x - mean_coeff * model_output) / std
    else:
        eps = (std * x + mean_coeff * model_output) / (mean_coeff**2 + std**2)
    return -eps / std


def score_to_model_output(
    sde: SDE,
    score: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str,
    time_input: str = "auto",
) -> torch.Tensor:
    """Inverse of :func:`model_output_to_score`: what a network of ``prediction_type`` should output."""
    check_prediction_type(prediction_type)
    if prediction_type == "score":
        return score
    mean_coeff, std = (broadcast_to(c, x) for c in training_marginals(sde, t, time_input))
    eps = -std * score
    x0 = (x - std * eps) / mean_coeff
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return mean_coeff * eps - std * x0


def score_to_x0(
    sde: SDE, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, time_input: str = "auto"
) -> torch.Tensor:
    """Tweedie's denoiser ``E[x_0 | x_t] = (x_t + s^2 score) / m`` (marginals as in :func:`training_marginals`)."""
    mean_coeff, std = (broadcast_to(c, x) for c in training_marginals(sde, t, time_input))
    return (x + std**2 * score) / mean_coeff


def model_time(sde: SDE, t: torch.Tensor, time_input: str = "auto") -> torch.Tensor:
    """The timestep a network of ``time_input`` is conditioned on at continuous ``t`` (float, shape of ``t``).

    See the module docstring: ``sigma(t)`` (a float tensor: a float cast to long would break the Fourier
    embedding), ``t (N - 1)``, ``t``, or the reversed SMLD level ``round((T - t)(N - 1))``.
    """
    kind = check_time_input(sde, time_input)
    if kind == "sigma":
        return sde.sigma(t)
    if kind in ("index", "discrete_index"):
        return t * (sde.N - 1) / sde.T
    if kind == "reversed_index":
        return sde.reversed_index(t)
    return t


def continuous_time(sde: SDE, timestep: torch.Tensor, time_input: str = "auto") -> torch.Tensor:
    """Inverse of :func:`model_time` (for ``"reversed_index"``, the time of that level)."""
    kind = check_time_input(sde, time_input)
    timestep = timestep.to(torch.get_default_dtype()) if not timestep.is_floating_point() else timestep
    if kind == "sigma":
        return sde.sigma_to_t(timestep)
    if kind in ("index", "discrete_index"):
        return timestep * sde.T / (sde.N - 1)
    if kind == "reversed_index":
        return sde.T - timestep * sde.T / (sde.N - 1)
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
        time_input (`str`): how the network is conditioned on time, and so which marginals its output is expressed
            in (see :data:`TIME_INPUTS`).
        **model_kwargs: passed to every call (e.g. ``class_labels``).

    Returns:
        A function ``score_fn(x, t)``.
    """
    check_prediction_type(prediction_type)
    time_input = check_time_input(sde, time_input)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, model_time(sde, t, time_input), **model_kwargs)
        out = getattr(out, "sample", out)
        return model_output_to_score(sde, out, x, t, prediction_type, time_input)

    return score_fn
