"""The one mapping from a scheduler (ours or Diffusers') to the forward SDE and its conventions.

Every layer that needs to know what a scheduler's model was trained on (pipelines, likelihood, evaluation, our
schedulers' ``from_config``) asks :class:`SchedulerSDE`; nothing else re-derives it. For a scheduler or its config it
gives the forward :class:`~sde_diffusers.sde.SDE`, the network's timestep <-> continuous ``t`` convention, the
marginals the network was trained with, the data range and the prediction type.

One convention, for four families of schedulers:

* **ours** (``VESDEScheduler``, ``VPSDEScheduler``, ``SubVPSDEScheduler``, ``ProbabilityFlowScheduler``): the
  scheduler's ``sde``; its config's ``prediction_type``, ``time_input`` and ``data_range`` (default ``[-1, 1]``).
  ``timesteps`` are in the model's input scale: ``sigma(t)`` for VE, ``t (N - 1)`` for VP / sub-VP.
* **DDPM family** (``DDPMScheduler``, ``DDIMScheduler``, DPM-Solver, ... with a linear beta schedule): the VP SDE
  with ``beta_min = N beta_start`` and ``beta_max = N beta_end``. Timestep ``k`` is ``t = k / (N - 1)``, and the
  model was trained on the discrete chain, so its output is expressed in that chain's marginal
  ``(sqrt(alphas_cumprod[k]), sqrt(1 - alphas_cumprod[k]))`` (time input ``"discrete_index"``; the betas are
  ``linspace(beta_min / N, beta_max / N, N)``, exactly Diffusers'). Data in ``[-1, 1]``.
* **Diffusers' score-SDE VE** (``ScoreSdeVeScheduler``, the google/ncsnpp-* repos): ``VESDE(sigma_min, sigma_max,
  N)`` (defaults 0.01, 1348, 2000); the UNet takes ``sigma`` and outputs the score; the scheduler's own
  ``timesteps`` are ``t`` itself; images in ``[0, 1]``; prior ``sigma_max * N(0, I)``.
* **Diffusers' score-SDE VP** (``ScoreSdeVpScheduler``): ``VPSDE(beta_min, beta_max, N)`` (defaults 0.1, 20, 2000);
  its ``timesteps`` are ``t``; the model follows the official continuous VP convention (``t (N - 1)``, epsilon).

The family is read from the scheduler's class or config keys, never guessed from data. Our schedulers'
``from_config`` translate the other families' configs with :func:`translate_config`, so a swapped-in
``VESDEScheduler.from_config(ve_pipe.scheduler.config)`` keeps ``sigma_max = 1348`` and the ``[0, 1]`` data range,
and ``VPSDEScheduler.from_config(ddpm.config)`` keeps the discrete marginals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .parameterization import (
    check_prediction_type,
    check_time_input,
    continuous_time,
    make_score_fn,
    model_output_to_score,
    model_time,
    score_to_model_output,
    score_to_x0,
    training_marginals,
)
from .sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE
from .validation import check_choice, check_int

__all__ = [
    "DDPM_COMPATIBLES",
    "SCHEDULER_FAMILIES",
    "DATA_RANGES",
    "SchedulerSDE",
    "scheduler_family",
    "beta_sde",
    "check_data_range",
    "translate_config",
]

# Diffusers schedulers whose configs (DDPM-style betas, 1000 steps, epsilon by default) describe a VP model
# trained on the discrete DDPM chain.
DDPM_COMPATIBLES = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
]
SCHEDULER_FAMILIES = ("ours", "ddpm", "score_sde_ve", "score_sde_vp")
#: Data range of each foreign family (ours read it from their config).
DATA_RANGES = {"ddpm": (-1.0, 1.0), "score_sde_ve": (0.0, 1.0), "score_sde_vp": (-1.0, 1.0)}

_OUR_SDE_OF_CLASS = {
    "VESDEScheduler": "ve",
    "VPSDEScheduler": "vp",
    "SubVPSDEScheduler": "subvp",
}
_OUR_KEYS = ("predictor", "corrector", "solver", "sde_type", "n_corrector_steps")
# Diffusers' defaults of the score-SDE schedulers: read explicitly because ``from_config`` drops every key listed
# in ``_use_default_values`` and would put our defaults (e.g. sigma_max = 50) in their place.
_SCORE_SDE_VE_DEFAULTS = {
    "num_train_timesteps": 2000,
    "snr": 0.15,
    "sigma_min": 0.01,
    "sigma_max": 1348.0,
    "sampling_eps": 1e-5,
    "correct_steps": 1,
}
_SCORE_SDE_VP_DEFAULTS = {"num_train_timesteps": 2000, "beta_min": 0.1, "beta_max": 20.0, "sampling_eps": 1e-3}
_DDPM_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
_OURS_VE_DEFAULTS = {"num_train_timesteps": 1000, "sigma_min": 0.01, "sigma_max": 50.0}


def _config_of(scheduler_or_config: Any) -> Mapping:
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a scheduler or its config mapping, got {type(scheduler_or_config).__name__}")
    return config


def _own_sde(scheduler_or_config: Any) -> SDE | None:
    sde = getattr(scheduler_or_config, "sde", None)
    return sde if isinstance(sde, SDE) else None


def scheduler_family(scheduler_or_config: Any) -> str:
    """Which of :data:`SCHEDULER_FAMILIES` a scheduler (or config) belongs to, from its class name or its keys.

    An in-memory ``scheduler.config`` has no ``_class_name``: ``correct_steps`` without our keys marks
    ``ScoreSdeVeScheduler``, ``beta_min`` without them ``ScoreSdeVpScheduler``, ``beta_start`` without them the DDPM
    family; anything else is ours.
    """
    if _own_sde(scheduler_or_config) is not None:
        return "ours"
    config = _config_of(scheduler_or_config)
    name = type(scheduler_or_config).__name__ if not isinstance(scheduler_or_config, Mapping) else None
    name = config.get("_class_name", name)
    if name == "ScoreSdeVeScheduler":
        return "score_sde_ve"
    if name == "ScoreSdeVpScheduler":
        return "score_sde_vp"
    if name in DDPM_COMPATIBLES:
        return "ddpm"
    if name in _OUR_SDE_OF_CLASS or name == "ProbabilityFlowScheduler":
        return "ours"
    if any(key in config for key in _OUR_KEYS):
        return "ours"
    if "correct_steps" in config:
        return "score_sde_ve"
    if "beta_min" in config:
        return "score_sde_vp"
    if "beta_start" in config or "trained_betas" in config:
        return "ddpm"
    return "ours"


def beta_sde(
    sde_cls: type[SDE], num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str = "linear"
) -> SDE:
    """Continuous VP / sub-VP SDE of a DDPM beta schedule: ``beta_min = N beta_start``, ``beta_max = N beta_end``.

    Raises:
        ValueError: the schedule is not linear (only a linear ``beta(t)`` has a continuous counterpart here).
    """
    if beta_schedule != "linear":
        raise ValueError(
            f"beta_schedule must be 'linear' (the continuous VP SDE has a linear beta(t)), got {beta_schedule!r}"
        )
    n = check_int("num_train_timesteps", num_train_timesteps, 2)
    return sde_cls(beta_min=n * float(beta_start), beta_max=n * float(beta_end), N=n)


def check_data_range(data_range: object) -> tuple[float, float]:
    """``data_range`` as a pair of floats ``(lo, hi)`` with ``lo < hi``, else ``ValueError``."""
    if (
        not isinstance(data_range, (tuple, list))
        or len(data_range) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in data_range)
        or not float(data_range[0]) < float(data_range[1])
    ):
        raise ValueError(f"`data_range` must be a pair (lo, hi) of finite numbers with lo < hi, got {data_range!r}")
    return float(data_range[0]), float(data_range[1])


def _our_sde_type(config: Mapping) -> str:
    if config.get("sde_type") is not None:
        key = str(config["sde_type"]).lower().replace("-", "").replace("_", "")
        return check_choice("sde_type", key, ("ve", "vp", "subvp"))
    name = config.get("_class_name")
    if name in _OUR_SDE_OF_CLASS:
        return _OUR_SDE_OF_CLASS[name]
    if "sigma_max" in config and not {"beta_start", "beta_min"} & set(config):
        return "ve"
    return "vp"


def _description(config: Mapping, family: str) -> dict:
    """What a config says, in our scheduler's keys (every value explicit): ``sde_type``, ``num_train_timesteps``,
    the schedule, ``prediction_type``, ``time_input``, ``data_range`` and, where the family has them, sampler
    settings."""
    if family == "score_sde_ve":
        c = {**_SCORE_SDE_VE_DEFAULTS, **{k: v for k, v in config.items() if k in _SCORE_SDE_VE_DEFAULTS}}
        return {
            "sde_type": "ve",
            "num_train_timesteps": c["num_train_timesteps"],
            "sigma_min": c["sigma_min"],
            "sigma_max": c["sigma_max"],
            "sampling_eps": c["sampling_eps"],
            "snr": c["snr"],
            "n_corrector_steps": c["correct_steps"],
            "prediction_type": "score",
            "time_input": "sigma",
            "data_range": list(DATA_RANGES[family]),
        }
    if family == "score_sde_vp":
        c = {**_SCORE_SDE_VP_DEFAULTS, **{k: v for k, v in config.items() if k in _SCORE_SDE_VP_DEFAULTS}}
        n = c["num_train_timesteps"]
        return {
            "sde_type": "vp",
            "num_train_timesteps": n,
            "beta_start": c["beta_min"] / n,
            "beta_end": c["beta_max"] / n,
            "beta_schedule": "linear",
            "sampling_eps": c["sampling_eps"],
            "prediction_type": "epsilon",
            "time_input": "index",
            "data_range": list(DATA_RANGES[family]),
        }
    if family == "ddpm":
        if config.get("trained_betas") is not None:
            raise ValueError("a scheduler config with trained_betas has no continuous-time SDE")
        c = {**_DDPM_DEFAULTS, **{k: v for k, v in config.items() if k in _DDPM_DEFAULTS}}
        return {
            "sde_type": "vp",
            **c,
            "prediction_type": config.get("prediction_type", "epsilon"),
            "time_input": "discrete_index",
            "data_range": list(DATA_RANGES[family]),
        }
    return {"sde_type": _our_sde_type(config)}


# The time inputs each SDE type can take (see sde_diffusers.parameterization.check_time_input).
_TIME_INPUTS_OF = {
    "ve": ("auto", "sigma", "t", "reversed_index"),
    "vp": ("auto", "index", "t", "discrete_index"),
    "subvp": ("auto", "index", "t"),
}


def translate_config(config: Mapping, init_keys: set[str], kwargs: dict, target_sde: str | None = None) -> dict:
    """Keyword arguments that make one of our schedulers' ``from_config`` keep another family's conventions.

    Args:
        config (`Mapping`): the source config (any family).
        init_keys (`set[str]`): the target class's constructor arguments.
        kwargs (`dict`): the caller's explicit keyword arguments (they win).
        target_sde (`str`, *optional*): the target's SDE type (``"ve"``, ``"vp"``, ``"subvp"``) when the class fixes
            it; otherwise it is ``kwargs["sde_type"]`` or the one the config implies.

    Returns:
        `dict`: ``kwargs`` completed with the values the config implies (only keys the target accepts). A time input
        the target's SDE cannot take (e.g. a DDPM config's ``"discrete_index"`` for a sub-VP scheduler: sub-VP models
        are continuous) is reset to ``"auto"``.
    """
    family = scheduler_family(config)
    described = _description(config, family)
    if family == "ours":
        # Same keys carry over by name; only a ProbabilityFlowScheduler target needs the SDE type spelled out.
        explicit = set(config) - set(config.get("_use_default_values", []))
        described = {} if "sde_type" in explicit else described
    out = dict(kwargs)
    for key, value in described.items():
        if key == "data_range" and tuple(value) == (-1.0, 1.0):
            continue  # our default: left implicit
        if key in init_keys and key not in out:
            out[key] = value
    target = target_sde or out.get("sde_type") or described.get("sde_type") or _our_sde_type(config)
    target = str(target).lower().replace("-", "").replace("_", "")
    time_input = out.get("time_input", config.get("time_input", "auto"))
    if "time_input" in init_keys and target in _TIME_INPUTS_OF and time_input not in _TIME_INPUTS_OF[target]:
        if "time_input" in kwargs:
            raise ValueError(f"time_input={time_input!r} does not fit a {target} SDE")
        out["time_input"] = "auto"
    return out


class SchedulerSDE:
    """The forward SDE, time scale, training marginals, data range and parameterisation behind a scheduler.

    Args:
        scheduler: a scheduler (ours or Diffusers') or its config mapping.
        model (optional): the network; a ``time_input`` attribute it declares (our NCSN++ / DDPM++ and converted
            models) overrides the scheduler's, and a ``prediction_type`` attribute is used when the scheduler's
            config has none.

    Attributes:
        family (`str`): one of :data:`SCHEDULER_FAMILIES`.
        prediction_type (`str`): what the network outputs (the scheduler's ``step`` reads it the same way).
        time_input (`str`): the network's time input (:data:`~sde_diffusers.parameterization.TIME_INPUTS`,
            resolved): which timestep it takes and which marginals its output is expressed in.
        data_range (`tuple[float, float]`): the range of the data the network works on.

    Raises:
        TypeError: ``scheduler`` is neither a scheduler nor a config mapping.
        ValueError: the config is invalid (e.g. an unknown ``sde_type``). A DDPM-family scheduler without a linear
            beta schedule has no SDE: :attr:`available` is ``False`` and :attr:`sde` raises.
    """

    def __init__(self, scheduler: Any, model: Any = None) -> None:
        self.scheduler = scheduler
        config = _config_of(scheduler)
        self.family = scheduler_family(scheduler)
        self._error: str | None = None
        self._sde = _own_sde(scheduler)
        described = _description(config, self.family) if self._sde is None or self.family != "ours" else {}
        if self._sde is None:
            try:
                self._sde = self._build_sde(config, described)
            except (ValueError, TypeError) as err:
                self._error = (
                    f"{type(scheduler).__name__} has no SDE this package can use ({err}); use one of our schedulers "
                    "or a DDPM-family scheduler with a linear beta schedule"
                )
        # A foreign family's conventions are its own: keys of ours it may carry (Diffusers keeps a config's unknown
        # keys when a scheduler is swapped with from_config) do not apply to it.
        own = config if self.family == "ours" else {}
        declared = getattr(model, "prediction_type", None)
        prediction_type = described.get("prediction_type", own.get("prediction_type"))
        if prediction_type is None:
            prediction_type = declared if isinstance(declared, str) else self._default_prediction_type()
        self.prediction_type = check_prediction_type(prediction_type)
        time_input = getattr(model, "time_input", None)
        if not isinstance(time_input, str) or time_input == "auto":
            time_input = described.get("time_input", own.get("time_input", "auto"))
        self._time_input = time_input
        self.data_range = check_data_range(described.get("data_range", own.get("data_range", (-1.0, 1.0))))
        if self._sde is not None:
            self._time_input = check_time_input(self._sde, time_input)

    # ---- what the scheduler implies ----------------------------------------------------------------------
    @staticmethod
    def _build_sde(config: Mapping, described: dict) -> SDE:
        if not described:
            described = {"sde_type": _our_sde_type(config)}
        sde_type = described["sde_type"]
        if sde_type == "ve":
            c = {**_OURS_VE_DEFAULTS, **{k: v for k, v in config.items() if k in _OURS_VE_DEFAULTS}, **described}
            n = check_int("num_train_timesteps", c["num_train_timesteps"], 1)
            return VESDE(sigma_min=float(c["sigma_min"]), sigma_max=float(c["sigma_max"]), N=n)
        c = {**_DDPM_DEFAULTS, **{k: v for k, v in config.items() if k in _DDPM_DEFAULTS}, **described}
        cls = SubVPSDE if sde_type == "subvp" else VPSDE
        return beta_sde(cls, c["num_train_timesteps"], c["beta_start"], c["beta_end"], c["beta_schedule"])

    def _default_prediction_type(self) -> str:
        return "score" if isinstance(self._sde, VESDE) else "epsilon"

    @property
    def available(self) -> bool:
        """Whether the scheduler has a forward SDE."""
        return self._sde is not None

    @property
    def sde(self) -> SDE:
        """The forward SDE (raises ``ValueError`` if the scheduler has none)."""
        if self._sde is None:
            raise ValueError(self._error)
        return self._sde

    @property
    def time_input(self) -> str:
        """The network's time input, resolved for the SDE (``"sigma"``, ``"index"``, ``"discrete_index"``, ...)."""
        self.sde  # noqa: B018 - raises the explanatory ValueError when there is no SDE
        return self._time_input

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior the sampling starts from (``sigma_max`` for VE, 1 for VP / sub-VP)."""
        return self.sde.prior_std

    # ---- time ---------------------------------------------------------------------------------------------
    def continuous(self, timestep: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Continuous time ``t`` of shape ``(batch,)`` (dtype and device of ``like``) for an entry of the
        scheduler's ``timesteps``."""
        to_t = getattr(self.scheduler, "continuous_timesteps", None)
        if callable(to_t):
            t = to_t(timestep)
        else:
            timestep = torch.as_tensor(timestep).to(torch.float64)
            if self.family in ("score_sde_ve", "score_sde_vp"):
                t = timestep  # their scheduler's timesteps are t itself
            elif self.family == "ddpm":
                t = continuous_time(self.sde, timestep, "discrete_index")
            else:
                t = continuous_time(self.sde, timestep, self.time_input)
        return t.to(device=like.device, dtype=like.dtype).reshape(-1).expand(batch)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The network's timestep for continuous ``t`` (shape and dtype of ``t``)."""
        return model_time(self.sde, t, self.time_input).to(t.dtype)

    # ---- marginals and parameterisation -------------------------------------------------------------------
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient and std, each ``(batch,)``, of the marginal the network was trained with at ``t``."""
        return training_marginals(self.sde, t, self.time_input)

    def to_score(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output at ``(x, t)`` to ``grad_x log p_t(x)``."""
        return model_output_to_score(self.sde, model_output, x, t, self.prediction_type, self.time_input)

    def from_score(self, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A score at ``(x, t)`` in the network's (and the scheduler's) parameterisation."""
        return score_to_model_output(self.sde, score, x, t, self.prediction_type, self.time_input)

    def to_x0(self, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie's denoised estimate ``E[x_0 | x_t]`` from a score."""
        return score_to_x0(self.sde, score, x, t, self.time_input)

    def score_fn(self, model: Callable[..., object], **model_kwargs) -> ScoreFn:
        """``score_fn(x, t)`` of a network under these conventions (see
        :func:`~sde_diffusers.parameterization.make_score_fn`)."""
        return make_score_fn(model, self.sde, self.prediction_type, self.time_input, **model_kwargs)

    def __repr__(self) -> str:
        sde = repr(self._sde) if self._sde is not None else "unavailable"
        return (
            f"SchedulerSDE(family={self.family!r}, sde={sde}, prediction_type={self.prediction_type!r}, "
            f"time_input={self._time_input!r}, data_range={self.data_range})"
        )
