"""Diffusers pipelines for score-based models: unconditional, class-conditional, inpainting, colorization."""

from .pipeline_score_sde import ScoreSdePipeline, ScoreSdePipelineBase, ScoreSdePipelineOutput

__all__ = ["ScoreSdePipeline", "ScoreSdePipelineBase", "ScoreSdePipelineOutput"]
