"""Score networks (NCSN++ for VE, DDPM++ for VP / sub-VP), a noise-conditional classifier and presets."""

from .classifier import NoiseConditionalClassifier, NoiseConditionalClassifierOutput
from .ncsnpp import DDPMppModel, NCSNppModel, UNet2DOutput
from .presets import (
    PRESETS,
    ModelPreset,
    from_preset,
    get_preset,
    list_presets,
    model_from_preset,
    preset_num_parameters,
)

__all__ = [
    "NCSNppModel",
    "DDPMppModel",
    "UNet2DOutput",
    "NoiseConditionalClassifier",
    "NoiseConditionalClassifierOutput",
    "ModelPreset",
    "PRESETS",
    "from_preset",
    "model_from_preset",
    "get_preset",
    "list_presets",
    "preset_num_parameters",
]
