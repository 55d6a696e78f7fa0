"""Output type shared by the feature extractors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput


@dataclass
class FeatureExtractorOutput(BaseOutput):
    """Output of a feature extractor's forward pass.

    Args:
        features (`torch.Tensor` of shape `(batch, feature_dim)`): the embedding used by FID, KID and
            precision/recall (Inception's 2048-d pool features, or a classifier's penultimate activations).
        logits (`torch.Tensor` of shape `(batch, num_classes)`): class scores (Inception Score, accuracy).
    """

    features: torch.Tensor
    logits: torch.Tensor
