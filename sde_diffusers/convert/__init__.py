"""Reading other people's checkpoints into this package's classes, exactly.

* :func:`convert_score_sde_checkpoint`: an official score_sde_pytorch ``checkpoint_N.pth`` (Song et al., 2021)
  and its config (a released config name, a JSON file or a dict) -> a :class:`~sde_diffusers.ScoreSdePipeline`.
* :data:`SCORE_SDE_CONFIGS`: every released NCSN++ / DDPM++ / DDPM configuration, as data.
"""

from .score_sde import (
    convert_score_sde_checkpoint,
    converted_model_card,
    load_score_sde_checkpoint,
    official_parameter_names,
)
from .score_sde_configs import (
    CONFIG_ALIASES,
    REPORTED_RESULTS,
    SCORE_SDE_CONFIGS,
    UNSUPPORTED_CONFIGS,
    list_score_sde_configs,
)
from .score_sde_plan import ScoreSdeConversion, load_score_sde_config, plan_score_sde_conversion

__all__ = [
    "convert_score_sde_checkpoint",
    "converted_model_card",
    "plan_score_sde_conversion",
    "load_score_sde_config",
    "load_score_sde_checkpoint",
    "official_parameter_names",
    "ScoreSdeConversion",
    "SCORE_SDE_CONFIGS",
    "CONFIG_ALIASES",
    "UNSUPPORTED_CONFIGS",
    "REPORTED_RESULTS",
    "list_score_sde_configs",
]
