"""sde-diffusers: score-based generative modeling through SDEs, and Soft Diffusion, for Hugging Face Diffusers."""

from .parameterization import make_score_fn, model_output_to_score, score_to_model_output
from .schedulers import SDESchedulerOutput, SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler
from .sde import SDE, VESDE, VPSDE, ReverseSDE, SubVPSDE, get_sde
from .toy import ExactScoreModel, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ReverseSDE",
    "get_sde",
    "make_score_fn",
    "model_output_to_score",
    "score_to_model_output",
    "SDESchedulerOutput",
    "VESDEScheduler",
    "VPSDEScheduler",
    "SubVPSDEScheduler",
    "GaussianMixture",
    "ExactScoreModel",
]
