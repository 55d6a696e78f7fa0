"""Named model configurations: the paper's CIFAR-10 networks and tiny ones for CPU tests and demos.

Every preset records which SDEs it is meant for and how its output and timestep are to be read, so a
trainer can go from a preset name to a score function::

    model = from_preset("ddpmpp-tiny", in_channels=1, sample_size=28)
    score_fn = make_score_fn(model, sde, model.prediction_type, model.time_input)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ModelPreset",
    "PRESETS",
    "list_presets",
    "get_preset",
    "model_from_preset",
    "from_preset",
    "preset_num_parameters",
]


@dataclass(frozen=True)
class ModelPreset:
    """A named model configuration.

    Args:
        name (`str`): the preset's name.
        model_class (`str`): ``"NCSNppModel"``, ``"DDPMppModel"`` or ``"NoiseConditionalClassifier"``.
        config (`dict`): constructor arguments.
        sde_types (`tuple[str]`): SDEs the model is meant for (``"ve"``, ``"vp"``, ``"subvp"``).
        prediction_type (`str`): what the output means (``"score"``, ``"epsilon"``; ``"logits"`` for classifiers).
        time_input (`str`): the timestep the model takes (``"sigma"`` or ``"index"`` = ``t * (N - 1)``).
        description (`str`): one line for tables.
    """

    name: str
    model_class: str
    config: dict[str, Any] = field(default_factory=dict)
    sde_types: tuple[str, ...] = ()
    prediction_type: str = "score"
    time_input: str = "sigma"
    description: str = ""


# score_sde's CIFAR-10 configs (configs/ve/cifar10_ncsnpp_continuous.py, configs/vp/cifar10_ddpmpp_continuous.py).
_CIFAR = dict(
    sample_size=32,
    in_channels=3,
    base_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attention_resolutions=(16,),
    dropout=0.1,
    resblock_type="biggan",
    skip_rescale=True,
    init_scale=0.0,
    progressive="none",
    progressive_combine="sum",
)
_NCSNPP_CIFAR = dict(_CIFAR, fir=True, fir_kernel=(1, 3, 3, 1), progressive_input="residual", fourier_scale=16.0)
_DDPMPP_CIFAR = dict(_CIFAR, fir=False, progressive_input="none")
# Tiny: grayscale 16x16 (also fine at 8, 28 or 32 px via overrides), ~80k parameters, for tests.
_TINY = dict(
    sample_size=16,
    in_channels=1,
    base_channels=8,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(),
    mid_attention=True,
    dropout=0.0,
    resblock_type="biggan",
    skip_rescale=True,
    init_scale=0.0,
    progressive="none",
    progressive_combine="sum",
)
# Small: grayscale 28x28 (MNIST; 32 px via sample_size=32), a couple of million parameters, for CPU demos.
_SMALL = dict(_TINY, sample_size=28, base_channels=32, num_res_blocks=2, dropout=0.1)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            "ncsnpp-cifar10",
            "NCSNppModel",
            _NCSNPP_CIFAR,
            ("ve",),
            "score",
            "sigma",
            "NCSN++ cont. (VE), CIFAR-10 32x32x3, 4 res blocks per resolution",
        ),
        ModelPreset(
            "ncsnpp-deep-cifar10",
            "NCSNppModel",
            dict(_NCSNPP_CIFAR, num_res_blocks=8),
            ("ve",),
            "score",
            "sigma",
            "NCSN++ cont. deep (VE), CIFAR-10, 8 res blocks (FID 2.20 in the paper)",
        ),
        ModelPreset(
            "ddpmpp-cifar10",
            "DDPMppModel",
            _DDPMPP_CIFAR,
            ("vp", "subvp"),
            "epsilon",
            "index",
            "DDPM++ cont. (VP / sub-VP), CIFAR-10 32x32x3, 4 res blocks per resolution",
        ),
        ModelPreset(
            "ddpmpp-deep-cifar10",
            "DDPMppModel",
            dict(_DDPMPP_CIFAR, num_res_blocks=8),
            ("vp", "subvp"),
            "epsilon",
            "index",
            "DDPM++ cont. deep (VP / sub-VP), CIFAR-10, 8 res blocks (2.99 bits/dim)",
        ),
        ModelPreset(
            "ncsnpp-tiny",
            "NCSNppModel",
            dict(_TINY, fir=True, progressive_input="residual", fourier_scale=16.0),
            ("ve",),
            "score",
            "sigma",
            "tiny NCSN++ (VE) for CPU tests and demos, 1x16x16",
        ),
        ModelPreset(
            "ddpmpp-tiny",
            "DDPMppModel",
            dict(_TINY, fir=False, progressive_input="none"),
            ("vp", "subvp"),
            "epsilon",
            "index",
            "tiny DDPM++ (VP / sub-VP) for CPU tests and demos, 1x16x16",
        ),
        ModelPreset(
            "ncsnpp-small",
            "NCSNppModel",
            dict(_SMALL, fir=True, progressive_input="residual", fourier_scale=16.0),
            ("ve",),
            "score",
            "sigma",
            "small NCSN++ (VE) for CPU demos, 1x28x28 (MNIST)",
        ),
        ModelPreset(
            "ddpmpp-small",
            "DDPMppModel",
            dict(_SMALL, fir=False, progressive_input="none"),
            ("vp", "subvp"),
            "epsilon",
            "index",
            "small DDPM++ (VP / sub-VP) for CPU demos, 1x28x28 (MNIST)",
        ),
        ModelPreset(
            "classifier-cifar10",
            "NoiseConditionalClassifier",
            dict(
                in_channels=3,
                num_classes=10,
                sample_size=32,
                base_channels=16,
                widen_factor=10,
                blocks_per_group=4,
                time_embedding_type="fourier",
                embedding_dim=128,
                fourier_scale=16.0,
            ),
            ("ve",),
            "logits",
            "sigma",
            "noise-conditional WRN-28-10 classifier (VE), CIFAR-10",
        ),
        ModelPreset(
            "classifier-tiny",
            "NoiseConditionalClassifier",
            dict(
                in_channels=1,
                num_classes=10,
                sample_size=16,
                base_channels=8,
                widen_factor=1,
                blocks_per_group=1,
                time_embedding_type="fourier",
                embedding_dim=16,
                fourier_scale=16.0,
            ),
            ("ve",),
            "logits",
            "sigma",
            "tiny noise-conditional classifier (VE; time_embedding_type='positional' for VP), 1x16x16",
        ),
    ]
}


def list_presets() -> list[str]:
    """Names of all presets."""
    return sorted(PRESETS)


def get_preset(name: str) -> ModelPreset:
    """The :class:`ModelPreset` called ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    return PRESETS[name]


def _model_class(class_name: str) -> type:
    from .classifier import NoiseConditionalClassifier
    from .ncsnpp import DDPMppModel, NCSNppModel

    return {
        "NCSNppModel": NCSNppModel,
        "DDPMppModel": DDPMppModel,
        "NoiseConditionalClassifier": NoiseConditionalClassifier,
    }[class_name]


def _preset_config(preset: ModelPreset, cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    import inspect

    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown config keys {unknown} for {cls.__name__} (preset {preset.name!r}); "
            f"valid keys: {', '.join(valid)}"
        )
    return {**preset.config, **overrides}


def model_from_preset(name: str, expected_class: type | None = None, **overrides):
    """Build a freshly initialised model from preset ``name``.

    Args:
        name (`str`): a key of :data:`PRESETS`.
        expected_class (`type`, *optional*): raise if the preset builds another class (used by the
            ``from_preset`` class methods).
        **overrides: config values replacing the preset's (``in_channels=1``, ``sample_size=28``,
            ``num_class_embeds=10`` ...).

    Returns:
        `NCSNppModel`, `DDPMppModel` or `NoiseConditionalClassifier`.
    """
    preset = get_preset(name)
    cls = _model_class(preset.model_class)
    if expected_class is not None and not issubclass(cls, expected_class):
        raise ValueError(
            f"preset {name!r} builds a {cls.__name__}, not a {expected_class.__name__}; use "
            f"{cls.__name__}.from_preset({name!r}) or sde_diffusers.models.from_preset({name!r})"
        )
    return cls(**_preset_config(preset, cls, overrides))


from_preset = model_from_preset


def preset_num_parameters(name: str, **overrides) -> int:
    """Parameter count of a preset, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = model_from_preset(name, **overrides)
    return sum(p.numel() for p in model.parameters())
