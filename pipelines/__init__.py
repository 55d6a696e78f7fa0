"""Diffusers pipelines for score-based models: unconditional, class-conditional, inpainting, colorization."""

from .pipeline_score_sde import ScoreSdePipeline, ScoreSdePipelineBase, ScoreSdePipelineOutput
from .pipeline_score_sde_colorization import ScoreSdeColorizationPipeline, decoupled_colour_basis
from .pipeline_score_sde_inpaint import ScoreSdeInpaintPipeline
from .pipeline_score_sde_inverse import INVERSE_METHODS, LinearObservation, ScoreSdeInverseProblemPipeline

__all__ = [
    "ScoreSdePipeline",
    "ScoreSdeInpaintPipeline",
    "ScoreSdeColorizationPipeline",
    "ScoreSdePipelineBase",
    "ScoreSdeInverseProblemPipeline",
    "ScoreSdePipelineOutput",
    "LinearObservation",
    "INVERSE_METHODS",
    "decoupled_colour_basis",
]
