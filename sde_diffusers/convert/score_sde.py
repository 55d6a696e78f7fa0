"""Official score_sde_pytorch checkpoints (``checkpoint_N.pth`` of ``run_lib``) as pipelines of this package.

The official networks (``models/ncsnpp.py``, ``models/ddpm.py``) keep their layers in one flat ``all_modules`` list;
this module walks our :class:`~sde_diffusers.NCSNppModel` / :class:`~sde_diffusers.DDPMppModel` in the official
registration order to pair every official tensor with ours, so the mapping holds for any depth, resolution, FIR
or pyramid setting, not only for the shapes it was tested on. Checks run before anything is built or written:
key sets, every shape, the EMA tensor count and the noise-level table the checkpoint stores (which tells apart
configs that share an architecture, e.g. CelebA-HQ and church at 256 px).

Conventions of the result:

* images in ``[-1, 1]``, as every pipeline here. A VE model that took ``[0, 1]`` images and centred them itself
  (``data.centered = False``) is converted exactly: its input layer already sees ``2 x - 1``, so the weights are
  unchanged, the SDE's noise levels double (``y = 2 x - 1`` has noise ``2 sigma``) and the Fourier embedding gets
  ``sigma_embedding_scale = 0.5`` so that it sees the levels it was trained on. Then
  ``score_ours(2 x - 1, t) = score_official(x, t) / 2``.
* the score is ``make_score_fn(pipe.unet, pipe.scheduler.sde, pipe.unet.prediction_type, pipe.unet.time_input)``:
  ``"sigma"`` (continuous VE), ``"index"`` (continuous VP / sub-VP, ``t * 999``), ``"reversed_index"`` (discrete
  VE, index 0 = ``sigma_max``) or ``"discrete_index"`` (discrete VP, std from the DDPM chain's ``alphas_cumprod``),
  exactly the official ``get_score_fn(sde, model, continuous=training.continuous)``.
* the scheduler carries the config's sampler: predictor, corrector, ``snr``, corrector steps, ``N`` and the
  sampling ``eps`` of ``run_lib`` (1e-5 for VE, 1e-3 for VP / sub-VP).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.layers import AttentionBlock, FIRConv2d, ResnetBlockBigGAN, ResnetBlockDDPM
from ..validation import check_bool
from .score_sde_configs import REPORTED_RESULTS
from .score_sde_plan import ScoreSdeConversion, plan_score_sde_conversion

__all__ = [
    "load_score_sde_checkpoint",
    "convert_score_sde_checkpoint",
    "official_parameter_names",
    "converted_model_card",
]


# ---------------------------------------------------------------------------------------------------------
# The official parameter layout
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    official: str  # key in the official state dict, without DataParallel's "module." prefix
    ours: str  # key in our state dict
    nin: bool = False  # an official NIN tensor: W is (in, out), ours is a 1x1 conv weight (out, in, 1, 1)
    trainable: bool = True  # in the EMA's shadow_params (the Fourier W is not)


def _official_layout(model: nn.Module, fourier: bool) -> list[_Entry]:
    """Pair every official tensor with ours, in the official model's parameter registration order."""
    entries: list[_Entry] = []
    index = 0

    def tensors(official: str, ours: str, nin: bool = False) -> None:
        for off, our in (("W", "weight"), ("b", "bias")) if nin else (("weight", "weight"), ("bias", "bias")):
            entries.append(_Entry(f"all_modules.{index}.{official}{off}", f"{ours}{our}", nin))

    def plain(ours: str) -> None:  # a Linear / Conv2d / GroupNorm that is itself an entry of all_modules
        nonlocal index
        tensors("", f"{ours}.")
        index += 1

    def resnet(ours: str, block: nn.Module) -> None:
        nonlocal index
        for official, name in (("GroupNorm_0", "norm_0"), ("Conv_0", "conv_0"), ("Dense_0", "temb_proj")):
            tensors(f"{official}.", f"{ours}.{name}.")
        for official, name in (("GroupNorm_1", "norm_1"), ("Conv_1", "conv_1")):
            tensors(f"{official}.", f"{ours}.{name}.")
        if block.shortcut is not None:
            if isinstance(block, ResnetBlockBigGAN):
                tensors("Conv_2.", f"{ours}.shortcut.")
            else:
                tensors("NIN_0.", f"{ours}.shortcut.", nin=True)
        index += 1

    def attention(ours: str) -> None:
        nonlocal index
        tensors("GroupNorm_0.", f"{ours}.norm.")
        for i, name in enumerate(("to_q", "to_k", "to_v", "to_out")):
            tensors(f"NIN_{i}.", f"{ours}.{name}.", nin=True)
        index += 1

    def resample(ours: str, module: nn.Module) -> None:  # layerspp / layers Upsample and Downsample
        nonlocal index
        if module.conv is not None:
            tensors("Conv2d_0." if isinstance(module.conv, FIRConv2d) else "Conv_0.", f"{ours}.conv.")
        index += 1

    def level_resample(ours: str, module: nn.Module) -> None:
        if isinstance(module, (ResnetBlockBigGAN, ResnetBlockDDPM)):
            resnet(ours, module)
        else:
            resample(ours, module)

    if fourier:
        entries.append(_Entry(f"all_modules.{index}.W", "fourier_proj.W", trainable=False))
        index += 1
    plain("time_mlp.0")
    plain("time_mlp.2")
    plain("conv_in")
    for i, level in enumerate(model.down_levels):
        for j, (block, attn) in enumerate(zip(level.resnets, level.attentions, strict=True)):
            resnet(f"down_levels.{i}.resnets.{j}", block)
            if isinstance(attn, AttentionBlock):
                attention(f"down_levels.{i}.attentions.{j}")
        if level.downsample is not None:
            level_resample(f"down_levels.{i}.downsample", level.downsample)
            if level.combine is not None:
                tensors("Conv.", f"down_levels.{i}.combine.conv.")
                index += 1
            elif level.pyramid_down is not None:  # "residual": a Downsample with a convolution
                resample(f"down_levels.{i}.pyramid_down", level.pyramid_down)
    resnet("mid_resnet_0", model.mid_resnet_0)
    attention("mid_attn")
    resnet("mid_resnet_1", model.mid_resnet_1)
    for i, level in enumerate(model.up_levels):
        for j, block in enumerate(level.resnets):
            resnet(f"up_levels.{i}.resnets.{j}", block)
        if level.attention is not None:
            attention(f"up_levels.{i}.attention")
        if level.pyramid_norm is not None:  # top of the output pyramid, or an "output_skip" head
            plain(f"up_levels.{i}.pyramid_norm")
            plain(f"up_levels.{i}.pyramid_conv")
        elif level.pyramid_up is not None:  # "residual": an Upsample with a convolution
            resample(f"up_levels.{i}.pyramid_up", level.pyramid_up)
        if level.upsample is not None:
            level_resample(f"up_levels.{i}.upsample", level.upsample)
    if model.norm_out is not None:
        plain("norm_out")
        plain("conv_out")
    return entries


def official_parameter_names(model: nn.Module, fourier: bool) -> dict[str, str]:
    """Official state-dict key (without ``module.``) -> our key, for a converted-architecture ``model``.

    Args:
        model (`NCSNppModel` or `DDPMppModel`): a model of the converted architecture.
        fourier (`bool`): whether the official network has a Fourier embedding (``all_modules.0.W``).

    Returns:
        `dict`: in the official parameter registration order (the order of the EMA's ``shadow_params``).
    """
    return {entry.official: entry.ours for entry in _official_layout(model, fourier)}


# ---------------------------------------------------------------------------------------------------------
# Loading and mapping weights
# ---------------------------------------------------------------------------------------------------------
def load_score_sde_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an official ``checkpoint_N.pth`` with ``torch.load(..., weights_only=True)``: tensors and plain
    containers only, never code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint, or unpickling it would need code.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`checkpoint` must be a file path or a loaded dict, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if needs is None:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+(?:\n\n[^\n]+)?)", str(err))
            reason = " ".join(detail.group(1).split()) if detail else type(err).__name__
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
        raise ValueError(
            f"{path} cannot be loaded with torch.load(weights_only=True): it holds objects that need code to "
            f"unpickle ({needs.group(1)}). sde-diffusers never runs code from a checkpoint; re-save it with tensors "
            "and plain containers only (as score_sde's run_lib.save_checkpoint does)."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a score_sde checkpoint dict")
    return dict(checkpoint)


def _raw_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The official network's state dict (keys without ``module.``) of a run_lib checkpoint or a bare state dict."""
    state = checkpoint["model"] if "model" in checkpoint else checkpoint
    if not isinstance(state, Mapping) or not any(
        isinstance(key, str) and key.removeprefix("module.").startswith("all_modules.") for key in state
    ):
        raise ValueError(
            "this is not a score_sde checkpoint: expected a dict with 'model' (the network's state dict, keys "
            f"'module.all_modules.*') and 'ema'; found keys {sorted(map(str, checkpoint))[:8]}"
        )
    raw = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"the checkpoint's network state has a non-tensor entry {key!r}")
        raw[key.removeprefix("module.")] = value
    return raw


def _fmt(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_shape(what: str, tensor: torch.Tensor, expected: torch.Size, name: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"shape mismatch for {what} {name}: the checkpoint has {tuple(tensor.shape)}, the config expects "
            f"{tuple(expected)}; the checkpoint does not belong to this config"
        )


def _official_shape(entry: _Entry, ours: torch.Size) -> torch.Size:
    if entry.nin and len(ours) == 4:  # (out, in, 1, 1) -> (in, out)
        return torch.Size((ours[1], ours[0]))
    return ours


def _map_weights(
    plan: ScoreSdeConversion, checkpoint: Mapping[str, Any], use_ema: bool, skeleton: nn.Module
) -> dict[str, torch.Tensor]:
    """Our state dict from the checkpoint, after every check; ``skeleton`` is the model on the meta device."""
    raw = _raw_state(checkpoint)
    layout = _official_layout(skeleton, plan.fourier)
    shapes = {key: value.shape for key, value in skeleton.state_dict().items()}
    expected = {entry.official for entry in layout} | {"sigmas"}
    missing, unexpected = sorted(expected - set(raw)), sorted(set(raw) - expected)
    if missing or unexpected:
        problems = ([f"missing {_fmt(missing)}"] if missing else []) + (
            [f"unexpected {_fmt(unexpected)}"] if unexpected else []
        )
        raise ValueError(
            f"the checkpoint's network does not match config {plan.name!r} ({'; '.join(problems)}): check that the "
            "config is the one the checkpoint was trained with"
        )
    for entry in layout:
        _check_shape("parameter", raw[entry.official], _official_shape(entry, shapes[entry.ours]), entry.official)

    sigmas = raw["sigmas"].to(torch.float64).reshape(-1)
    reference = plan.official_sigmas
    if sigmas.shape != reference.shape or not torch.allclose(sigmas, reference, rtol=1e-5, atol=0.0):
        found = f"{len(sigmas)} levels from {float(sigmas[0]):g} to {float(sigmas[-1]):g}" if len(sigmas) else "none"
        raise ValueError(
            f"the checkpoint's noise levels ({found}) differ from config {plan.name!r} ({len(reference)} levels "
            f"from {float(reference[0]):g} to {float(reference[-1]):g}): the checkpoint was trained with another "
            "config (model.sigma_max / sigma_min / num_scales)"
        )

    source = {entry.official: raw[entry.official] for entry in layout}
    if use_ema:
        ema = checkpoint.get("ema")
        if not isinstance(ema, Mapping) or not isinstance(ema.get("shadow_params"), (list, tuple)):
            raise ValueError(
                "the checkpoint has no EMA weights ('ema' with 'shadow_params'); convert its raw weights with "
                "use_ema=False (--raw-weights)"
            )
        shadow = list(ema["shadow_params"])
        trainable = [entry for entry in layout if entry.trainable]
        if len(shadow) != len(trainable):
            raise ValueError(
                f"the checkpoint's EMA holds {len(shadow)} tensors but config {plan.name!r} has {len(trainable)} "
                "trainable parameters: the checkpoint does not belong to this config"
            )
        for entry, tensor in zip(trainable, shadow, strict=True):
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"the EMA entry for {entry.official} is a {type(tensor).__name__}, not a tensor")
            _check_shape("EMA tensor", tensor, _official_shape(entry, shapes[entry.ours]), entry.official)
            source[entry.official] = tensor
    state = {}
    for entry in layout:
        tensor = source[entry.official]
        if entry.nin:
            tensor = tensor.t().reshape(shapes[entry.ours])
        state[entry.ours] = tensor.detach().clone().contiguous()
    return state


def convert_score_sde_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    config: str | os.PathLike | Mapping[str, Any],
    *,
    use_ema: bool = True,
):
    r"""Convert an official score_sde_pytorch checkpoint into a :class:`~sde_diffusers.ScoreSdePipeline`.

    ```python
    from sde_diffusers import convert_score_sde_checkpoint

    pipe = convert_score_sde_checkpoint("checkpoint_24.pth", "ve/cifar10_ncsnpp_continuous")
    images = pipe(batch_size=4, num_inference_steps=1000).images
    pipe.save_pretrained("ncsnpp-cifar10")
    ```

    Args:
        checkpoint (`str`, `os.PathLike` or `dict`): a ``checkpoint_N.pth`` written by score_sde's ``run_lib``
            (loaded with ``torch.load(..., weights_only=True)``), or such a dict already loaded. A bare state dict
            of the network converts with ``use_ema=False``.
        config (`str`, `os.PathLike` or `dict`): a released config name (``"ve/cifar10_ncsnpp_continuous"``; see
            :func:`~sde_diffusers.convert.list_score_sde_configs`), a JSON file or a dict with the official
            sections ``model``, ``data``, ``training``, ``sampling``.
        use_ema (`bool`, defaults to `True`): use the exponential moving average of the weights (what the paper
            evaluates); `False` takes the raw ``model`` weights.

    Returns:
        `ScoreSdePipeline`: on images in ``[-1, 1]``, with our model, our scheduler with the right SDE and the
        config's sampler defaults. ``pipe.conversion`` is the :class:`ScoreSdeConversion` it was built from.

    Raises:
        ValueError: a config that cannot be represented, or a checkpoint that does not match it (missing or
            unexpected keys, a shape, the EMA size, the stored noise levels), or that needs code to unpickle;
            raised before the pipeline is built.
    """
    from ..pipelines import ScoreSdePipeline

    check_bool("use_ema", use_ema)
    plan = plan_score_sde_conversion(config)
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_score_sde_checkpoint(checkpoint)
    with torch.device("meta"):
        skeleton = plan.build_model()
    state = _map_weights(plan, checkpoint, use_ema, skeleton)

    model = plan.build_model()
    model.load_state_dict(state, strict=True)
    model.eval()
    scheduler = plan.build_scheduler()
    pipe = ScoreSdePipeline(unet=model, scheduler=scheduler)
    pipe.conversion = plan
    return pipe


# ---------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------
_RESULT_NAMES = {
    "fid": "FID {:.2f}",
    "inception_score": "Inception score {:.2f}",
    "fid_ode": "FID {:.2f} with the black-box ODE sampler",
    "bits_per_dim": "{:.2f} bits/dim",
}


def converted_model_card(
    conversion: ScoreSdeConversion,
    checkpoint_name: str,
    *,
    use_ema: bool = True,
    repo_id: str | None = None,
    license: str = "apache-2.0",
) -> str:
    """The model card (``README.md``) of a converted pipeline: where the weights came from and what changed.

    Args:
        conversion (:class:`ScoreSdeConversion`): ``pipe.conversion`` of a converted pipeline.
        checkpoint_name (`str`): the official file it was converted from (e.g. ``"checkpoint_24.pth"``).
        use_ema (`bool`, defaults to `True`): whether the EMA weights were used.
        repo_id (`str`, *optional*): the Hub repo id the card will live in (a placeholder otherwise).
        license (`str`, defaults to ``"apache-2.0"``): the licence declared in the metadata.

    Returns:
        `str`: Markdown with YAML metadata.
    """
    from .. import __version__
    from ..hub_utils import render_model_card

    cfg, model = conversion.config, conversion.model_config
    architecture = "DDPM" if conversion.network == "ddpm" else ("NCSN++" if conversion.sde_type == "ve" else "DDPM++")
    if model["num_res_blocks"] >= 8:
        architecture += " (deep)"
    sde = {"ve": "VE", "vp": "VP", "subvp": "sub-VP"}[conversion.sde_type]
    sched = conversion.scheduler_config
    if conversion.sde_type == "ve":
        sde += f", sigma in [{sched['sigma_min']:g}, {sched['sigma_max']:g}]"
    else:
        sde += f", beta in [{sched['beta_start'] * sched['num_train_timesteps']:g}, "
        sde += f"{sched['beta_end'] * sched['num_train_timesteps']:g}]"
    training = "continuous" if conversion.continuous else "discrete"
    sde += f", N = {sched['num_train_timesteps']}, {training} training"
    if "predictor" in sched:
        sampler = (
            f"predictor-corrector: {sched['predictor']} predictor, {sched['corrector']} corrector "
            f"(snr {sched['snr']:g}, {sched['n_corrector_steps']} step), eps {sched['sampling_eps']:g}"
        )
    else:
        sampler = f"probability-flow ODE ({conversion.scheduler_class_name})"
    reported = REPORTED_RESULTS.get(conversion.name, {})
    results = ", ".join(_RESULT_NAMES[k].format(v) for k, v in reported.items()) or "none listed"
    data = cfg["data"]
    dataset = str(data.get("dataset", "unknown")) + (f" ({data['category']})" if data.get("category") else "")
    return render_model_card(
        "converted",
        model_name=f"{architecture} {conversion.name} (official weights)",
        repo_id=repo_id or "<user>/<repo>",
        license=license,
        architecture=architecture,
        model_class=conversion.model_class.__name__,
        checkpoint=checkpoint_name,
        config_name=conversion.name,
        weights="exponential moving average (EMA) of the training weights" if use_ema else "raw training weights",
        version=__version__,
        paper_results=results,
        sde=sde,
        time_input=model.get("time_input", "sigma" if model.get("embedding_type") == "fourier" else "reversed_index"),
        dataset=dataset,
        resolution=f"{model['sample_size']}x{model['sample_size']}x{model['in_channels']}",
        sampler=sampler,
        conversion_notes=" ".join(n[0].upper() + n[1:] + "." for n in conversion.notes) or "nothing but the layout.",
        official_config={k: cfg[k] for k in ("model", "data", "training", "sampling") if k in cfg},
    )
