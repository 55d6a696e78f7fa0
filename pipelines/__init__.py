"""Diffusers pipelines for score-based models.

Unconditional, class-conditional, inpainting, colorization and Soft Diffusion.
"""

from .conditioning import ClassifierGuidance, Conditioning, ScoreTerm
from .pipeline_score_sde import (
    SAMPLERS,
    SamplingPipelineBase,
    ScoreSdePipeline,
    ScoreSdePipelineBase,
    ScoreSdePipelineOutput,
)
from .pipeline_score_sde_colorization import ScoreSdeColorizationPipeline, decoupled_colour_basis
from .pipeline_score_sde_inpaint import ScoreSdeInpaintPipeline
from .pipeline_score_sde_inverse import INVERSE_METHODS, LinearObservation, ScoreSdeInverseProblemPipeline
from .pipeline_soft_diffusion import (
    SoftDiffusionInpaintPipeline,
    SoftDiffusionPipeline,
    SoftDiffusionPipelineBase,
)
from .pipeline_utils import SDEDiffusionPipeline

__all__ = [
    "SDEDiffusionPipeline",
    "SamplingPipelineBase",
    "Conditioning",
    "ScoreTerm",
    "ClassifierGuidance",
    "ScoreSdePipeline",
    "ScoreSdeInpaintPipeline",
    "ScoreSdeColorizationPipeline",
    "ScoreSdePipelineBase",
    "ScoreSdeInverseProblemPipeline",
    "ScoreSdePipelineOutput",
    "LinearObservation",
    "INVERSE_METHODS",
    "SAMPLERS",
    "decoupled_colour_basis",
    "SoftDiffusionPipeline",
    "SoftDiffusionInpaintPipeline",
    "SoftDiffusionPipelineBase",
]
