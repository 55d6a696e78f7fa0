"""From a score_sde_pytorch config to what it becomes here: checks, model config, scheduler config.

:func:`plan_score_sde_conversion` refuses, with the reason, every setting that has no exact counterpart here, before
any checkpoint is read; :func:`~sde_diffusers.convert.convert_score_sde_checkpoint` then maps the weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import DDPMppModel, NCSNppModel
from .score_sde_configs import CONFIG_ALIASES, SCORE_SDE_CONFIGS, UNSUPPORTED_CONFIGS, list_score_sde_configs

__all__ = ["ScoreSdeConversion", "load_score_sde_config", "plan_score_sde_conversion"]

_SDES = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
_PREDICTORS = {
    "reverse_diffusion": "reverse_diffusion",
    "euler_maruyama": "euler_maruyama",
    "ancestral_sampling": "ancestral",
    "none": "none",
}
_CORRECTORS = {"langevin": "langevin", "ald": "annealed_langevin", "none": "none"}
# run_lib.py: the last time of the sampling grid.
_SAMPLING_EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}
# get_score_fn of continuous VP / sub-VP models feeds `t * 999` whatever N is.
_CONTINUOUS_VP_SCALES = 1000


# ---------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------
def load_score_sde_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The official config sections (``model``, ``data``, ``training``, ``sampling``) of ``config``.

    Args:
        config: the name of a released configuration (``"ve/cifar10_ncsnpp_continuous"``; see
            :func:`list_score_sde_configs`), a JSON file with those sections (tuples as lists), or a dict of them.

    Returns:
        `dict`: a deep copy (with ``name`` set).

    Raises:
        ValueError: unknown name, a released config this package cannot represent (the reason is given), a JSON
            file that does not parse or lacks a section.
    """
    if isinstance(config, Mapping):
        loaded = copy.deepcopy(dict(config))
        loaded.setdefault("name", "custom")
    elif isinstance(config, (str, os.PathLike)):
        text = os.fspath(config)
        key = text[:-3] if text.endswith(".py") else text
        key = key.removeprefix("configs/")
        key = CONFIG_ALIASES.get(key, key)
        if key in SCORE_SDE_CONFIGS:
            loaded = copy.deepcopy(SCORE_SDE_CONFIGS[key])
        elif key in UNSUPPORTED_CONFIGS:
            raise ValueError(f"score_sde config {key!r} cannot be converted: {UNSUPPORTED_CONFIGS[key]}")
        elif text.endswith(".json") or os.path.isfile(text):
            try:
                with open(text, encoding="utf-8") as fh:
                    loaded = json.load(fh)
            except FileNotFoundError:
                raise ValueError(f"config file {text!r} does not exist") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"config file {text!r} is not valid JSON: {err}") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"config file {text!r} must hold a JSON object with the official sections")
            loaded.setdefault("name", os.path.splitext(os.path.basename(text))[0])
        else:
            raise ValueError(
                f"unknown score_sde config {text!r}: give a released config name "
                f"({', '.join(list_score_sde_configs())}; aliases: {', '.join(sorted(CONFIG_ALIASES))}) or a JSON "
                "file with the sections model, data, training, sampling"
            )
    else:
        raise TypeError(f"`config` must be a config name, a JSON file path or a dict, got {type(config).__name__}")
    sections = ("model", "data", "training", "sampling")
    missing = [section for section in sections if not isinstance(loaded.get(section), dict)]
    if missing:
        raise ValueError(f"score_sde config {loaded.get('name')!r} lacks the section(s) {missing}")
    return loaded


def _get(config: Mapping, section: str, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    value = config[section].get(key, default)
    if value is ...:
        raise ValueError(f"score_sde config {config.get('name')!r} has no {section}.{key}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{section}.{key} must be a {names}, got {value!r}")
    return value


def _int_list(config: Mapping, section: str, key: str) -> list[int]:
    value = _get(config, section, key, (list, tuple))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{section}.{key} must be a list of integers, got {value!r}")
    return [int(v) for v in value]


@dataclass
class ScoreSdeConversion:
    """What a score_sde config becomes here (see :func:`plan_score_sde_conversion`).

    Args:
        name (`str`): the config's name.
        sde_type (`str`): ``"ve"``, ``"vp"`` or ``"subvp"``.
        continuous (`bool`): ``training.continuous``.
        centered (`bool`): ``data.centered`` (``False``: the official model took ``[0, 1]`` images).
        network (`str`): ``"ncsnpp"`` or ``"ddpm"``.
        fourier (`bool`): the official network has a Gaussian Fourier embedding (its ``all_modules.0.W``).
        model_class (`type`): :class:`NCSNppModel` or :class:`DDPMppModel`.
        model_config (`dict`): its constructor arguments.
        scheduler_class_name (`str`): the scheduler of the converted pipeline.
        scheduler_config (`dict`): its constructor arguments.
        official_sigmas (`torch.Tensor`): the noise-level table the official model stores (``module.sigmas``).
        notes (`list[str]`): what the conversion changed (for the model card).
    """

    name: str
    sde_type: str
    continuous: bool
    centered: bool
    network: str
    fourier: bool
    model_class: type
    model_config: dict[str, Any]
    scheduler_class_name: str
    scheduler_config: dict[str, Any]
    official_sigmas: torch.Tensor
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """A freshly initialised model of the converted architecture."""
        return self.model_class(**self.model_config)

    def build_scheduler(self):
        """The converted pipeline's scheduler."""
        from .. import schedulers

        return getattr(schedulers, self.scheduler_class_name)(**self.scheduler_config)


def plan_score_sde_conversion(config: str | os.PathLike | Mapping[str, Any]) -> ScoreSdeConversion:
    """Check that ``config`` can be represented here and work out the model and scheduler it becomes.

    Args:
        config: as for :func:`load_score_sde_config`.

    Returns:
        :class:`ScoreSdeConversion`.

    Raises:
        ValueError: naming the setting that has no counterpart here (e.g. ``model.name = 'ncsnv2'``,
            ``model.conditional = False``, a VP model on ``[0, 1]`` data).
    """
    cfg = load_score_sde_config(config)
    name = str(cfg.get("name"))

    def refuse(reason: str) -> ValueError:
        return ValueError(f"score_sde config {name!r} cannot be converted: {reason}")

    network = _get(cfg, "model", "name", str).lower()
    if network in ("ncsn", "ncsnv2", "ncsnv2_hq"):
        raise refuse(f"model.name = {network!r} (a RefineNet score network) is not implemented here")
    if network not in ("ncsnpp", "ddpm"):
        raise refuse(f"model.name = {network!r} is unknown; only 'ncsnpp' (NCSN++ / DDPM++) and 'ddpm' convert")
    sde_name = _get(cfg, "training", "sde", str).lower()
    if sde_name not in _SDES:
        raise refuse(f"training.sde = {sde_name!r}; expected one of {sorted(_SDES)}")
    sde_type = _SDES[sde_name]
    continuous = _get(cfg, "training", "continuous", bool)
    centered = _get(cfg, "data", "centered", bool)
    if not _get(cfg, "model", "conditional", bool, True):
        raise refuse("model.conditional = False (no time conditioning) is not supported")
    for key, expected in (("nonlinearity", "swish"), ("normalization", "GroupNorm")):
        value = cfg["model"].get(key, expected)
        if str(value).lower() != expected.lower():
            raise refuse(f"model.{key} = {value!r}; only {expected!r} is implemented")
    if int(cfg["model"].get("conv_size", 3)) != 3:
        raise refuse(f"model.conv_size = {cfg['model']['conv_size']!r}; only 3 is implemented")
    scale_by_sigma = _get(cfg, "model", "scale_by_sigma", bool)
    n = _get(cfg, "model", "num_scales", int)
    if n < 2:
        raise refuse(f"model.num_scales must be at least 2, got {n}")
    sigma_min = _get(cfg, "model", "sigma_min", float)
    sigma_max = _get(cfg, "model", "sigma_max", float)

    arch: dict[str, Any] = dict(
        sample_size=_get(cfg, "data", "image_size", int),
        in_channels=_get(cfg, "data", "num_channels", int),
        base_channels=_get(cfg, "model", "nf", int),
        channel_mult=tuple(_int_list(cfg, "model", "ch_mult")),
        num_res_blocks=_get(cfg, "model", "num_res_blocks", int),
        attention_resolutions=tuple(_int_list(cfg, "model", "attn_resolutions")),
        mid_attention=True,
        dropout=_get(cfg, "model", "dropout", float),
        resamp_with_conv=_get(cfg, "model", "resamp_with_conv", bool),
        norm_num_groups=32,
    )
    if network == "ddpm":
        # models/ddpm.py: DDPM residual blocks, nearest / strided-conv resampling, GroupNorm with 32 groups, no
        # skip rescaling, no pyramids, and always the sinusoidal embedding (it ignores model.embedding_type).
        arch.update(
            resblock_type="ddpm",
            fir=False,
            skip_rescale=False,
            progressive="none",
            progressive_input="none",
            progressive_combine="sum",
            init_scale=0.0,
            norm_channels_per_group=1,
        )
        embedding = "positional"
    else:
        arch.update(
            resblock_type=_get(cfg, "model", "resblock_type", str).lower(),
            fir=_get(cfg, "model", "fir", bool),
            fir_kernel=tuple(float(k) for k in _get(cfg, "model", "fir_kernel", (list, tuple))),
            skip_rescale=_get(cfg, "model", "skip_rescale", bool),
            progressive=_get(cfg, "model", "progressive", str).lower(),
            progressive_input=_get(cfg, "model", "progressive_input", str).lower(),
            progressive_combine=_get(cfg, "model", "progressive_combine", str).lower(),
            init_scale=_get(cfg, "model", "init_scale", float),
            norm_channels_per_group=4,
        )
        embedding = _get(cfg, "model", "embedding_type", str).lower()
        if embedding not in ("fourier", "positional"):
            raise refuse(f"model.embedding_type = {embedding!r}; expected 'fourier' or 'positional'")
    fourier = embedding == "fourier"
    notes: list[str] = []

    sampling = cfg["sampling"]
    method = str(sampling.get("method", "pc")).lower()
    probability_flow = bool(sampling.get("probability_flow", False))
    predictor = str(sampling.get("predictor", "none")).lower()
    corrector = str(sampling.get("corrector", "none")).lower()
    if method not in ("pc", "ode"):
        raise refuse(f"sampling.method = {method!r}; expected 'pc' or 'ode'")
    if method == "pc" and not probability_flow:
        if predictor not in _PREDICTORS or corrector not in _CORRECTORS:
            raise refuse(
                f"sampling.predictor = {predictor!r} / sampling.corrector = {corrector!r}; expected predictors "
                f"{sorted(_PREDICTORS)} and correctors {sorted(_CORRECTORS)}"
            )
        if _PREDICTORS[predictor] == "none" and _CORRECTORS[corrector] == "none":
            raise refuse("sampling.predictor and sampling.corrector are both 'none'")
        pc = dict(
            sampling_eps=_SAMPLING_EPS[sde_type],
            predictor=_PREDICTORS[predictor],
            corrector=_CORRECTORS[corrector],
            snr=_get(cfg, "sampling", "snr", float),
            n_corrector_steps=_get(cfg, "sampling", "n_steps_each", int),
            denoise_final=_get(cfg, "sampling", "noise_removal", bool),
        )
    else:
        pc = None
        notes.append("sampled with the probability-flow ODE (sampling.method = 'ode' or probability_flow = True)")

    if sde_type == "ve":
        if not scale_by_sigma:
            raise refuse("a VE model with model.scale_by_sigma = False (its output is not divided by sigma)")
        if fourier and not continuous:
            raise refuse("the Fourier embedding with training.continuous = False (the official code refuses it too)")
        if not fourier and continuous:
            raise refuse("continuous VE training with the positional embedding (it would embed sigma as an index)")
        # [0, 1] data centred inside the network: on y = 2 x - 1 the noise levels double (see the module docstring).
        factor = 1.0 if centered else 2.0
        if not centered:
            notes.append(
                "the official model took images in [0, 1] and centred them itself; the converted one takes [-1, 1] "
                f"images, so its VE noise levels are doubled (sigma in [{2 * sigma_min:g}, {2 * sigma_max:g}])"
            )
        model_class = NCSNppModel
        model_config = dict(
            arch,
            embedding_type=embedding,
            num_train_timesteps=n,
            sigma_min=factor * sigma_min,
            sigma_max=factor * sigma_max,
        )
        if fourier:
            model_config.update(
                fourier_scale=_get(cfg, "model", "fourier_scale", float), sigma_embedding_scale=1.0 / factor
            )
        scheduler_name = "VESDEScheduler"
        # The scheduler hands the network its own time input (sigma, or the reversed level of discrete SMLD).
        scheduler_config = dict(
            num_train_timesteps=n,
            sigma_min=factor * sigma_min,
            sigma_max=factor * sigma_max,
            time_input="sigma" if fourier else "reversed_index",
        )
        if pc is None:
            scheduler_name = "ProbabilityFlowScheduler"
            scheduler_config.update(sde_type="ve", sampling_eps=_SAMPLING_EPS[sde_type])
        else:
            scheduler_config.update(pc)
    else:
        if scale_by_sigma:
            raise refuse(f"a {sde_type.upper()} model with model.scale_by_sigma = True")
        if fourier:
            raise refuse(f"the Fourier embedding on the {sde_type.upper()} SDE (it is for sigma-conditioned models)")
        if not centered:
            raise refuse(
                f"a {sde_type.upper()} model on [0, 1] data (data.centered = False): centring cannot be folded into "
                "a VP-type SDE"
            )
        time_input = "index" if continuous or sde_type == "subvp" else "discrete_index"
        if time_input == "index" and n != _CONTINUOUS_VP_SCALES:
            raise refuse(
                f"model.num_scales = {n} with a continuous {sde_type.upper()} model: the official score function "
                "feeds t * 999, which is the t (N - 1) timestep only for N = 1000"
            )
        beta_min = _get(cfg, "model", "beta_min", float)
        beta_max = _get(cfg, "model", "beta_max", float)
        model_class = DDPMppModel
        model_config = dict(arch, time_input=time_input)
        scheduler_name = {"vp": "VPSDEScheduler", "subvp": "SubVPSDEScheduler"}[sde_type]
        scheduler_config = dict(
            num_train_timesteps=n, beta_start=beta_min / n, beta_end=beta_max / n, time_input=time_input
        )
        if pc is None:
            scheduler_name = "ProbabilityFlowScheduler"
            scheduler_config.update(sde_type=sde_type, sampling_eps=_SAMPLING_EPS[sde_type])
        else:
            scheduler_config.update(pc)

    official_sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    try:
        with torch.device("meta"):
            model_class(**model_config)
    except (ValueError, TypeError) as err:
        raise refuse(f"its network has no counterpart here: {err}") from None
    return ScoreSdeConversion(
        name=name,
        sde_type=sde_type,
        continuous=continuous,
        centered=centered,
        network=network,
        fourier=fourier,
        model_class=model_class,
        model_config=model_config,
        scheduler_class_name=scheduler_name,
        scheduler_config=scheduler_config,
        official_sigmas=official_sigmas,
        notes=notes,
        config=cfg,
    )
