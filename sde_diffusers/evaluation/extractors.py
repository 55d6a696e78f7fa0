"""Loading feature extractors by name and running them over image sets in batches."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .classifier import FeatureClassifier
from .inception import FIDInceptionV3
from .outputs import FeatureExtractorOutput

__all__ = ["FEATURE_EXTRACTORS", "classifier_info", "extract_features", "load_feature_extractor"]

#: The project's classifiers (domain FID), the FID Inception-v3, and the transformers networks (FD_DINOv2, CLIP).
FEATURE_EXTRACTORS = ("digits", "mnist", "cifar10", "inception", "dinov2", "clip")
_INFO_FILE = "training_info.json"


def _shipped_classifier_dir(name: str) -> Path:
    return Path(str(resources.files("sde_diffusers") / "assets" / "classifiers" / name))


def classifier_info(name: str) -> dict[str, Any]:
    """Training record of a shipped classifier: config, data, held-out accuracy, date, wall time."""
    if name not in FEATURE_EXTRACTORS[:3]:
        raise ValueError(f"name must be one of {FEATURE_EXTRACTORS[:3]}, got {name!r}")
    path = _shipped_classifier_dir(name) / _INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the {name!r} classifier is not in this installation ({str(path)!r} is missing); train it with "
            "benchmarks/train_feature_classifiers.py"
        )
    return json.loads(path.read_text())


def load_feature_extractor(
    name: str,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> nn.Module:
    """Load a feature extractor in eval mode with gradients disabled.

    Args:
        name (`str`): ``"digits"``, ``"mnist"`` or ``"cifar10"`` (the project's classifiers, shipped with the
            package, for a "domain FID"), ``"inception"`` (the standard FID Inception-v3; needs its weights
            file, which cannot be shipped: see :meth:`FIDInceptionV3.from_weights`), ``"dinov2"`` (FD_DINOv2, see
            :class:`~sde_diffusers.evaluation.transformers_features.DINOv2Extractor`) or ``"clip"`` (CLIP image
            embeddings, see :class:`~sde_diffusers.evaluation.transformers_features.CLIPExtractor`).
        weights_path (`str` or `os.PathLike`, *optional*): for ``"inception"``, the weights file; for a
            classifier, a folder saved with ``FeatureClassifier.save_pretrained`` to use instead of the shipped one;
            for ``"dinov2"`` / ``"clip"``, a folder or Hub repo id (default ``facebook/dinov2-large`` /
            ``openai/clip-vit-large-patch14``, loaded from the Hugging Face cache or the Hub).
        device (`str` or `torch.device`, *optional*): where to put the model (default CPU).
        options: for ``"dinov2"`` / ``"clip"`` only, passed to their ``from_pretrained`` (``protocol``,
            ``arithmetic``, ``with_text``, ``revision``, ``local_files_only``, ...).

    Returns:
        The extractor: calling it on images returns a :class:`FeatureExtractorOutput`.
    """
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"name must be one of {FEATURE_EXTRACTORS}, got {name!r}")
    if options and name not in ("dinov2", "clip"):
        raise TypeError(f"options {sorted(options)} apply only to the 'dinov2' and 'clip' extractors, not {name!r}")
    if name in ("dinov2", "clip"):
        from .transformers_features import load_transformers_extractor  # imports transformers: only when used

        model: nn.Module = load_transformers_extractor(name, weights_path, **options)
    elif name == "inception":
        model = FIDInceptionV3.from_weights(weights_path)
    else:
        folder = _shipped_classifier_dir(name) if weights_path is None else Path(weights_path)
        if not (folder / "config.json").is_file():
            hint = (
                "train it with benchmarks/train_feature_classifiers.py"
                if weights_path is None
                else "pass a folder written by FeatureClassifier.save_pretrained"
            )
            raise FileNotFoundError(f"no classifier at {str(folder)!r} (config.json missing); {hint}")
        model = FeatureClassifier.from_pretrained(str(folder), local_files_only=True)
    model.requires_grad_(False)
    model.eval()
    if device is not None:
        model.to(device)
    return model


@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    batch_size: int = 256,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> FeatureExtractorOutput:
    """Run ``extractor`` over an image set in batches.

    Args:
        extractor: a model from :func:`load_feature_extractor` (or any module returning
            :class:`FeatureExtractorOutput` and accepting ``input_range``).
        images: a tensor/array `(N, C, H, W)`, or an iterable of such batches (e.g. a ``DataLoader`` or a
            generator of samples; ``(images, labels)`` pairs use the first element).
        batch_size (`int`, defaults to 256): batch size when ``images`` is a single tensor.
        input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float pixels.

    Returns:
        :class:`FeatureExtractorOutput` with float32 CPU tensors `(N, feature_dim)` and `(N, num_classes)`.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        batches: Iterable[Any] = images.split(batch_size)
    elif isinstance(images, Iterable):
        batches = images
    else:
        raise TypeError(f"images must be a tensor, an array or an iterable of batches, got {type(images).__name__}")
    was_training = extractor.training
    extractor.eval()
    features, logits = [], []
    try:
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            out = extractor(batch, input_range=input_range)
            features.append(out.features.float().cpu())
            logits.append(out.logits.float().cpu())
    finally:
        extractor.train(was_training)
    if not features:
        raise ValueError("images is empty")
    return FeatureExtractorOutput(features=torch.cat(features), logits=torch.cat(logits))
