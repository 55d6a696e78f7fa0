"""Sample-quality evaluation: metrics in a feature space, feature extractors, built-in data sets.

Typical use (domain FID on MNIST, no download)::

    from sde_diffusers.evaluation import extract_features, frechet_distance, load_builtin, load_feature_extractor

    extractor = load_feature_extractor("mnist")
    real, _ = load_builtin("mnist", split="test")
    ref = extract_features(extractor, real).features
    fake = extract_features(extractor, samples, input_range=(-1, 1)).features
    fid = frechet_distance(fake, ref)
"""

from .classifier import FeatureClassifier
from .datasets import BUILTIN_DATASETS, CIFAR10_CLASSES, load_builtin
from .extractors import FEATURE_EXTRACTORS, classifier_info, extract_features, load_feature_extractor
from .image_preprocessing import ImagePreprocessing
from .inception import FID_WEIGHTS_FILENAME, FID_WEIGHTS_URL, FIDInceptionV3, find_fid_weights
from .metrics import (
    CLIPScoreOutput,
    FeatureStatistics,
    InceptionScoreOutput,
    KernelDistanceOutput,
    PrecisionRecallOutput,
    clip_score,
    frechet_distance,
    gaussian_frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)
from .outputs import FeatureExtractorOutput
from .quality import (
    BitsPerDimOutput,
    ReferenceSet,
    check_fid_sample_size,
    extractor_input,
    features_of,
    heldout_bits_per_dim,
    load_reference,
    per_image_bits_per_dim,
    quantize_8bit,
    sample_quality,
)
from .sampling import (
    SAMPLERS,
    SamplerInfo,
    SamplingOutput,
    SamplingPlan,
    available_samplers,
    draw_samples,
    plan_sampling,
)
from .transformers_features import CLIPExtractor, DINOv2Extractor, class_clip_score

__all__ = [
    "BitsPerDimOutput",
    "ReferenceSet",
    "check_fid_sample_size",
    "extractor_input",
    "features_of",
    "heldout_bits_per_dim",
    "load_reference",
    "per_image_bits_per_dim",
    "quantize_8bit",
    "sample_quality",
    "SAMPLERS",
    "SamplerInfo",
    "SamplingOutput",
    "SamplingPlan",
    "available_samplers",
    "draw_samples",
    "plan_sampling",
    "CLIPExtractor",
    "CLIPScoreOutput",
    "DINOv2Extractor",
    "ImagePreprocessing",
    "class_clip_score",
    "clip_score",
    "BUILTIN_DATASETS",
    "CIFAR10_CLASSES",
    "FEATURE_EXTRACTORS",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "FeatureClassifier",
    "FeatureExtractorOutput",
    "FeatureStatistics",
    "InceptionScoreOutput",
    "KernelDistanceOutput",
    "PrecisionRecallOutput",
    "classifier_info",
    "extract_features",
    "find_fid_weights",
    "frechet_distance",
    "gaussian_frechet_distance",
    "inception_score",
    "kernel_distance",
    "load_builtin",
    "load_feature_extractor",
    "precision_recall",
]
