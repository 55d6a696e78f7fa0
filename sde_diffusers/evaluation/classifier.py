"""A small CNN classifier whose penultimate activations define a "domain FID" feature space.

Inception features are a poor fit for 8x8 or 28x28 grayscale digits; the common practice at MNIST scale is a
classifier trained on the data set itself. The project ships one per built-in data set (``digits``,
``mnist``, ``cifar10``) under ``sde_diffusers/assets/classifiers/`` — see :func:`load_feature_extractor` and
``benchmarks/train_feature_classifiers.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ._images import to_unit_range
from .outputs import FeatureExtractorOutput

__all__ = ["FeatureClassifier"]


class FeatureClassifier(ModelMixin, ConfigMixin):
    """Convolutional classifier: stages of (3x3 conv, batch norm, ReLU) x ``layers_per_block`` with 2x max
    pooling between stages, global average pooling, a ``feature_dim`` embedding with SiLU (the features), and
    a linear classification head.

    SiLU rather than ReLU on the embedding keeps every feature dimension alive, so the feature covariance is
    full rank and the Fréchet distance well conditioned.

    Args:
        in_channels (`int`, defaults to 1): image channels.
        sample_size (`int`, defaults to 28): image height and width.
        num_classes (`int`, defaults to 10): number of classes.
        block_out_channels (`tuple[int, ...]`, defaults to `(32, 64, 128)`): channels of each stage.
        layers_per_block (`int`, defaults to 2): convolutions per stage.
        feature_dim (`int`, defaults to 128): dimension of the feature embedding.
        dropout (`float`, defaults to 0.0): dropout on the features before the head (training only).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 28,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 2,
        feature_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("sample_size", sample_size),
            ("num_classes", num_classes),
            ("layers_per_block", layers_per_block),
            ("feature_dim", feature_dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        channels = tuple(block_out_channels)
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(
                f"block_out_channels must be a non-empty tuple of positive ints, got {block_out_channels!r}"
            )
        if sample_size % (2 ** (len(channels) - 1)) != 0:
            raise ValueError(
                f"sample_size={sample_size} must be divisible by 2**(len(block_out_channels) - 1) = "
                f"{2 ** (len(channels) - 1)} (one 2x pooling between stages)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(layers_per_block):
                layers += [
                    nn.Conv2d(prev, ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(ch),
                    nn.ReLU(inplace=True),
                ]
                prev = ch
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(prev, feature_dim)
        self.feature_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        """Dimension of the features."""
        return self.config.feature_dim

    def preprocess(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> torch.Tensor:
        """Check shape and map pixels to ``[-1, 1]`` (the range the network was trained on)."""
        x = to_unit_range(images, input_range)
        c, s = self.config.in_channels, self.config.sample_size
        if tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(
                f"images must have shape (batch, {c}, {s}, {s}) for this classifier, got {tuple(x.shape)}; "
                "use the extractor trained on the same data set as the samples"
            )
        return (2.0 * x - 1.0).to(self.device)

    def forward(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> FeatureExtractorOutput:
        """Features and logits of a batch.

        Args:
            images: `(batch, in_channels, sample_size, sample_size)`; ``uint8`` pixels, or floats in
                ``input_range``.
            input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float inputs.

        Returns:
            :class:`FeatureExtractorOutput` with ``features`` `(batch, feature_dim)` and ``logits``
            `(batch, num_classes)`.
        """
        h = self.trunk(self.preprocess(images, input_range)).mean(dim=(2, 3))
        features = F.silu(self.embed(h))
        return FeatureExtractorOutput(features=features, logits=self.head(self.feature_dropout(features)))
