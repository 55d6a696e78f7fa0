"""sde-diffusers: score-based generative modeling through SDEs, and Soft Diffusion, for Hugging Face Diffusers."""

from .corruption import (
    CorruptionSchedule,
    DCTBlur,
    FrequencyStatistics,
    GaussianBlur,
    fit_wasserstein_schedule,
    gaussian_w2,
)
from .evaluation import (
    FeatureClassifier,
    FeatureStatistics,
    FIDInceptionV3,
    extract_features,
    frechet_distance,
    inception_score,
    kernel_distance,
    load_builtin,
    load_feature_extractor,
    precision_recall,
)
from .hub_utils import (
    MissingHubTokenError,
    check_push_arguments,
    push_pipeline_to_hub,
    render_model_card,
    save_model_card,
)
from .losses import (
    ddpm_loss,
    denoising_score_matching_loss,
    exact_score_matching_loss,
    sample_time,
    sliced_score_matching_loss,
    smld_loss,
    soft_score_matching_loss,
)
from .models import PRESETS as MODEL_PRESETS
from .models import (
    DDPMppModel,
    NCSNppModel,
    NoiseConditionalClassifier,
    NoiseConditionalClassifierOutput,
    model_from_preset,
)
from .parameterization import make_score_fn, model_output_to_score, score_to_model_output
from .pipelines.pipeline_utils import SDEDiffusionPipeline
from .schedulers import (
    SDESchedulerOutput,
    SoftDiffusionScheduler,
    SoftDiffusionSchedulerOutput,
    SubVPSDEScheduler,
    VESDEScheduler,
    VPSDEScheduler,
)
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
    "MissingHubTokenError",
    "check_push_arguments",
    "push_pipeline_to_hub",
    "render_model_card",
    "save_model_card",
    "SDEDiffusionPipeline",
    "CorruptionSchedule",
    "DCTBlur",
    "GaussianBlur",
    "FrequencyStatistics",
    "fit_wasserstein_schedule",
    "gaussian_w2",
    "soft_score_matching_loss",
    "SoftDiffusionScheduler",
    "SoftDiffusionSchedulerOutput",
    "FeatureClassifier",
    "FeatureStatistics",
    "FIDInceptionV3",
    "extract_features",
    "frechet_distance",
    "inception_score",
    "kernel_distance",
    "load_builtin",
    "load_feature_extractor",
    "precision_recall",
    "ddpm_loss",
    "denoising_score_matching_loss",
    "exact_score_matching_loss",
    "sample_time",
    "sliced_score_matching_loss",
    "smld_loss",
    "MODEL_PRESETS",
    "DDPMppModel",
    "NCSNppModel",
    "NoiseConditionalClassifier",
    "NoiseConditionalClassifierOutput",
    "model_from_preset",
]
