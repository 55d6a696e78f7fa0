"""Inception-v3 as used for FID, in plain torch (no torchvision).

The network is the TensorFlow ``inception-2015-12-05`` graph that defines FID (Heusel et al. 2017), as
ported to PyTorch by pytorch-fid. It differs from torchvision's ImageNet Inception-v3 in three places: the
average pools inside the A, C and first E blocks do not count padded zeros, the last E block pools with a max
instead of an average, and the classifier has 1008 outputs. Module and parameter names follow torchvision's
``Inception3`` (without the auxiliary head), so the state dict of pytorch-fid's weights file
(``pt_inception-2015-12-05-6726825d.pth``) loads directly.

Preprocessing follows pytorch-fid: bilinear resize to 299x299 (``align_corners=False``), grayscale repeated
to three channels, pixels mapped from ``[0, 1]`` to ``[-1, 1]``. (torch-fidelity resizes with a TF-exact
interpolation instead, so its FIDs differ from pytorch-fid's in the second decimal.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._images import to_unit_range
from .outputs import FeatureExtractorOutput

__all__ = ["FID_WEIGHTS_FILENAME", "FID_WEIGHTS_URL", "FIDInceptionV3", "find_fid_weights"]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"

_HOW_TO_GET = (
    f"Download the FID Inception weights (pytorch-fid's release, ~91 MB) from {FID_WEIGHTS_URL} and pass "
    "their path as weights_path=... (a .pth file, or the same state dict converted to .safetensors). A copy "
    "that pytorch-fid already downloaded into the torch hub cache (torch.hub.get_dir()/checkpoints/) is "
    "found automatically."
)


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TF graph), ReLU: children ``conv`` and ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pool divides by the number of real pixels in the window, not by 9
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (torchvision's InceptionA layout): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_no_pad(x)),
            ],
            dim=1,
        )


class _BlockB(nn.Module):
    """Grid reduction 35 -> 17 (torchvision's InceptionB layout)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (torchvision's InceptionC layout)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c = channels_7x7
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, c, 1)
        self.branch7x7_2 = _ConvBN(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, c, 1)
        self.branch7x7dbl_2 = _ConvBN(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool_no_pad(x)),
            ],
            dim=1,
        )


class _BlockD(nn.Module):
    """Grid reduction 17 -> 8 (torchvision's InceptionD layout)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _BlockE(nn.Module):
    """8x8 block with expanded filter banks (torchvision's InceptionE layout).

    ``max_pool`` selects the pool branch: the FID graph's last block (Mixed_7c) uses a max pool, the one
    before it (Mixed_7b) an average pool that ignores padding.
    """

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


def find_fid_weights() -> Path | None:
    """Path of pytorch-fid's weights file in the torch hub cache, if a previous download left one there."""
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME
    return candidate if candidate.is_file() else None


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a weights file must never execute code when loaded
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return state


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 network: 2048-d pool features and 1008-way logits.

    Build it with random weights (``FIDInceptionV3()``, for tests) or load the standard weights with
    :meth:`from_weights`. The forward pass accepts any image size (resized to 299x299), one or three channels,
    ``uint8`` pixels or floats in ``input_range``.

    Args:
        resize_input (`bool`, defaults to `True`): bilinearly resize inputs to 299x299 first (the standard
            FID protocol; the network is convolutional and works on other sizes >= 75 too).
    """

    feature_dim = 2048
    num_classes = 1008
    image_size = 299

    def __init__(self, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, channels_7x7=128)
        self.Mixed_6c = _BlockC(768, channels_7x7=160)
        self.Mixed_6d = _BlockC(768, channels_7x7=160)
        self.Mixed_6e = _BlockC(768, channels_7x7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    @classmethod
    def from_weights(cls, weights_path: str | os.PathLike | None = None, resize_input: bool = True) -> FIDInceptionV3:
        """Load the standard FID weights (pytorch-fid's state dict, as ``.pth`` or ``.safetensors``).

        Args:
            weights_path (`str` or `os.PathLike`, *optional*): the weights file. If omitted, the copy that
                pytorch-fid downloads into the torch hub cache is used when present. Nothing is downloaded.
            resize_input (`bool`, defaults to `True`): see the class docstring.

        Returns:
            `FIDInceptionV3` in eval mode with gradients disabled.
        """
        if weights_path is None:
            found = find_fid_weights()
            if found is None:
                raise FileNotFoundError("no FID Inception weights given (weights_path=None). " + _HOW_TO_GET)
            path = found
        else:
            if not isinstance(weights_path, (str, os.PathLike)):
                raise TypeError(f"weights_path must be a path, got {type(weights_path).__name__}")
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"FID Inception weights file {str(path)!r} does not exist. " + _HOW_TO_GET)
        state = dict(_read_state_dict(path))
        model = cls(resize_input=resize_input)
        expected = model.state_dict()
        # files saved before BatchNorm tracked its step count lack num_batches_tracked; it is unused in eval
        for key, value in expected.items():
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = value.clone()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"{str(path)!r} is not the FID Inception state dict: {len(missing)} missing keys "
                f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong_shape)} with "
                f"wrong shapes {wrong_shape[:3]}. Expected pytorch-fid's {FID_WEIGHTS_FILENAME} ({FID_WEIGHTS_URL})."
            )
        model.load_state_dict(state)
        model.requires_grad_(False)
        return model.eval()

    def preprocess(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> torch.Tensor:
        """Map images to the network's input: 3 channels, 299x299 (if ``resize_input``), values in ``[-1, 1]``."""
        x = to_unit_range(images, input_range)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels, got {x.shape[1]}")
        x = x.to(self.fc.weight.device)
        if self.resize_input and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        elif min(x.shape[-2:]) < 75:
            raise ValueError(f"images must be at least 75x75 without resize_input, got {tuple(x.shape[-2:])}")
        return 2.0 * x - 1.0

    def forward(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> FeatureExtractorOutput:
        """Features and logits of a batch of images.

        Args:
            images: `(batch, 1 or 3, height, width)`; ``uint8`` pixels, or floats in ``input_range``.
            input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float inputs (``(-1, 1)`` for
                raw diffusion samples).

        Returns:
            :class:`FeatureExtractorOutput` with ``features`` `(batch, 2048)` and ``logits`` `(batch, 1008)`.
        """
        x = self.preprocess(images, input_range)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        features = x.mean(dim=(2, 3))
        return FeatureExtractorOutput(features=features, logits=self.fc(features))
