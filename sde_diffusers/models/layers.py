"""Building blocks of NCSN++ / DDPM++ (Song et al., 2021) and the noise-conditional classifier.

Everything here is plain PyTorch (no custom CUDA ops). FIR resampling follows StyleGAN2's
``upfirdn2d`` semantics: zero-insert (upsampling), pad, convolve with a separable, normalised FIR
filter such as ``[1, 3, 3, 1]``, then keep every ``down``-th sample. It is written as a depthwise
``conv2d``, so it runs on any device and supports gradients of any order.

Initialisation follows DDPM: variance scaling with ``fan_avg`` and a uniform distribution, zero biases,
and ``init_scale=0`` meaning "almost zero" (``1e-10``) for the last layer of each residual branch so that
every block starts close to the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "default_init_",
    "conv1x1",
    "conv3x3",
    "linear",
    "num_groups_for",
    "group_norm",
    "fir_kernel_2d",
    "upfirdn2d",
    "fir_upsample_2d",
    "fir_downsample_2d",
    "GaussianFourierProjection",
    "sinusoidal_embedding",
    "FIRConv2d",
    "Upsample",
    "Downsample",
    "ResnetBlockBigGAN",
    "ResnetBlockDDPM",
    "AttentionBlock",
    "Combine",
]

_SQRT2 = math.sqrt(2.0)


# ---- initialisation ----------------------------------------------------------------------------------
def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM initialisation in place: ``U(-a, a)`` with ``a = sqrt(3 scale / fan_avg)``.

    ``scale == 0`` is replaced by ``1e-10`` (a zero weight would also zero the gradient of the layer
    below through this one's input; a tiny one does not).
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _init_layer(layer: nn.Conv2d | nn.Linear, init_scale: float = 1.0) -> nn.Module:
    default_init_(layer.weight, init_scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv1x1(in_ch: int, out_ch: int, bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution (a per-pixel linear map, "NIN") with DDPM initialisation."""
    return _init_layer(nn.Conv2d(in_ch, out_ch, 1, bias=bias), init_scale)


def conv3x3(
    in_ch: int, out_ch: int, bias: bool = True, init_scale: float = 1.0, stride: int = 1, padding: int = 1
) -> nn.Conv2d:
    """3x3 convolution with DDPM initialisation."""
    return _init_layer(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding, bias=bias), init_scale)


def linear(in_features: int, out_features: int) -> nn.Linear:
    """Dense layer with DDPM initialisation."""
    return _init_layer(nn.Linear(in_features, out_features))


# ---- group normalisation -----------------------------------------------------------------------------
def num_groups_for(channels: int, max_groups: int = 32, min_group_channels: int = 4) -> int:
    """Number of GroupNorm groups for ``channels``: ``min(channels // min_group_channels, max_groups)``, at least 1.

    With the defaults this is score_sde's NCSN++ rule (groups of at least four channels, at most 32 groups),
    extended so that fewer than eight channels still normalise (one or two groups); ``min_group_channels=1``
    gives the original DDPM network's fixed 32 groups (for 32 channels or more).

    Raises:
        ValueError: if ``channels`` is not divisible by the resulting number of groups.
    """
    groups = max(1, min(channels // min_group_channels, max_groups))
    if channels % groups != 0:
        raise ValueError(
            f"GroupNorm: {channels} channels are not divisible by {groups} groups "
            f"(groups = min(channels // {min_group_channels}, norm_num_groups={max_groups})); choose channel "
            f"counts that are multiples of {groups} or change norm_num_groups"
        )
    return groups


def group_norm(channels: int, max_groups: int = 32, min_group_channels: int = 4) -> nn.GroupNorm:
    """``nn.GroupNorm`` with :func:`num_groups_for` groups and ``eps=1e-6``."""
    return nn.GroupNorm(num_groups_for(channels, max_groups, min_group_channels), channels, eps=1e-6)


# ---- FIR resampling ----------------------------------------------------------------------------------
def fir_kernel_2d(kernel: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Separable 2-D FIR filter ``outer(k, k) / sum`` times ``gain`` (float32, shape ``(n, n)``)."""
    try:
        taps = [float(v) for v in kernel]
    except (TypeError, ValueError):
        raise ValueError(f"fir_kernel must be a non-empty 1-D sequence of numbers, got {kernel!r}") from None
    if not taps or sum(taps) == 0:
        raise ValueError(f"fir_kernel must be a non-empty sequence of numbers with a non-zero sum, got {kernel!r}")
    # Validated in Python so that building a model on the meta device (for parameter counts) works.
    k = torch.tensor(taps, dtype=torch.float32)
    return torch.outer(k, k) * (gain / sum(taps) ** 2)


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, apply a 2-D FIR filter and downsample, channel by channel.

    Args:
        x (`torch.Tensor`): images of shape ``(batch, channels, height, width)``.
        kernel (`torch.Tensor`): FIR filter of shape ``(n, n)`` (true convolution: it is flipped).
        up (`int`): upsampling factor (zeros inserted after each sample).
        down (`int`): downsampling factor (every ``down``-th output is kept).
        pad (`tuple[int, int]`): zeros added before and after, in both spatial dimensions.

    Returns:
        `torch.Tensor`: ``(batch, channels, (H * up + pad0 + pad1 - n) // down + 1, ...)``.
    """
    c = x.shape[1]
    n = kernel.shape[0]
    weight = _depthwise(kernel, c, x)
    if up > 1:
        # Zero insertion followed by a true convolution is a strided transposed convolution (no zeros are
        # materialised); its full output starts n - 1 samples before the padded signal's first output.
        h, w = x.shape[-2:]
        out_h, out_w = h * up + pad[0] + pad[1] - n + 1, w * up + pad[0] + pad[1] - n + 1
        start = n - 1 - pad[0]
        if start >= 0 and pad[1] <= n - up:  # the requested window lies inside the full output
            y = F.conv_transpose2d(x, weight.flip(-1, -2), stride=up, groups=c)
            return y[..., start : start + out_h, start : start + out_w][..., ::down, ::down]
        x = x.reshape(*x.shape[:2], h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1)).reshape(*x.shape[:2], h * up, w * up)
    if pad[0] == pad[1]:
        return F.conv2d(x, weight, stride=down, padding=pad[0], groups=c)
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), weight, stride=down, groups=c)


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The flipped ``kernel`` as a contiguous depthwise weight ``(channels, 1, n, n)`` (contiguous weights take
    the fast convolution path on CPU)."""
    weight = kernel.flip(0, 1).to(dtype=like.dtype, device=like.device)
    return weight[None, None].expand(channels, 1, *kernel.shape).contiguous()


def fir_upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample by ``factor`` with a normalised FIR ``kernel`` (``(n, n)``, summing to 1)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Downsample by ``factor`` with a normalised FIR ``kernel`` (``(n, n)``, summing to 1)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling by 2 (StyleGAN2's ``upsample_conv_2d`` /
    ``conv_downsample_2d``): padding happens once, so borders match the reference exactly.

    Args:
        in_ch (`int`), out_ch (`int`): channels.
        up (`bool`), down (`bool`): resampling direction (exactly one must be set).
        fir_kernel (`Sequence[float]`): the 1-D FIR taps.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        up: bool = False,
        down: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d needs exactly one of up=True or down=True")
        self.up, self.down = up, down
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, factor, ksize = self.fir.shape[0], 2, self.weight.shape[-1]
        if self.up:
            # Zero insertion + 3x3 correlation == stride-2 transposed conv with the flipped, transposed weight.
            w = self.weight.flip(-1, -2).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=factor)
            p = (n - factor) - (ksize - 1)
            x = upfirdn2d(x, self.fir * factor**2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        else:
            p = (n - factor) + (ksize - 1)
            x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=factor)
        return x + self.bias.view(1, -1, 1, 1)


class _Resample(nn.Module):
    """Shared construction of :class:`Upsample` / :class:`Downsample`: an optional convolution (fused with the FIR
    filter when ``fir``) and the FIR filter buffer."""

    _fir_direction: str  # "up" or "down": the FIRConv2d flag
    _plain_conv_args: dict[str, int]  # conv3x3 stride / padding of the convolution without FIR

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError(f"{type(self).__name__} without a convolution cannot change the number of channels")
        self.fir, self.with_conv = fir, with_conv
        self.conv: nn.Module | None = None
        if with_conv:
            if fir:
                self.conv = FIRConv2d(in_ch, out_ch, fir_kernel=fir_kernel, **{self._fir_direction: True})
            else:
                self.conv = conv3x3(in_ch, out_ch, **self._plain_conv_args)
        if fir:
            self.register_buffer("fir_filter", fir_kernel_2d(fir_kernel), persistent=False)


class Upsample(_Resample):
    """Upsample by 2: FIR (optionally fused with a 3x3 conv) or nearest neighbour (optionally + conv).

    Args:
        in_ch (`int`), out_ch (`int`, *optional*): channels (``out_ch`` may differ only ``with_conv``).
        with_conv (`bool`): a 3x3 convolution after (or, with ``fir``, fused with) the resampling.
        fir (`bool`): FIR resampling with ``fir_kernel`` instead of nearest neighbour.
        fir_kernel (`Sequence[float]`): the 1-D FIR taps.
    """

    _fir_direction = "up"
    _plain_conv_args = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else fir_upsample_2d(x, self.fir_filter)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(_Resample):
    """Downsample by 2: FIR (optionally fused with a 3x3 conv) or average pooling / strided 3x3 conv.

    Args:
        in_ch (`int`), out_ch (`int`, *optional*): channels (``out_ch`` may differ only ``with_conv``).
        with_conv (`bool`): a strided 3x3 convolution (with ``fir``: fused with the FIR filter) instead of pooling.
        fir (`bool`): FIR resampling with ``fir_kernel`` instead of average pooling.
        fir_kernel (`Sequence[float]`): the 1-D FIR taps.
    """

    _fir_direction = "down"
    _plain_conv_args = {"stride": 2, "padding": 0}  # padded on the right in forward, as DDPM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else fir_downsample_2d(x, self.fir_filter)
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


# ---- time embeddings ---------------------------------------------------------------------------------
class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin(2 pi W x), cos(2 pi W x)]`` with fixed ``W ~ N(0, scale^2)``.

    ``W`` is a persistent buffer: saved with the weights, never trained.

    Args:
        embedding_size (`int`): number of frequencies (the output has twice as many features).
        scale (`float`): standard deviation of the frequencies (16 in NCSN++).
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the dtype of ``x`` (float64 stays float64); the product order is score_sde's, ``x W 2 pi``.
        proj = x[:, None] * self.W.to(x.dtype)[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's sinusoidal embedding of (possibly fractional) timesteps, shape ``(batch, dim)``.

    Frequencies ``exp(-log(max_period) * k / (dim / 2 - 1))``; sines first, then cosines; an odd ``dim``
    gets a zero last column. Computed in the dtype of ``timesteps`` when it is floating point (float32 otherwise).
    """
    half = dim // 2
    denom = max(half - 1, 1)
    dtype = timesteps.dtype if timesteps.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=timesteps.device) / denom)
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# ---- residual and attention blocks -------------------------------------------------------------------
class _ResidualBlock(nn.Module):
    """The residual block both networks share; subclasses choose the shortcut and may resample inside."""

    def _build(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int | None,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        max_groups: int,
        min_group_channels: int,
        shortcut: bool,
    ) -> None:
        self.skip_rescale = skip_rescale
        self.norm_0 = group_norm(in_ch, max_groups, min_group_channels)
        self.conv_0 = conv3x3(in_ch, out_ch)
        self.temb_proj = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm_1 = group_norm(out_ch, max_groups, min_group_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.shortcut = conv1x1(in_ch, out_ch) if shortcut else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv_0(h)
        if temb is not None and self.temb_proj is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGAN(_ResidualBlock):
    """BigGAN-style residual block with optional up/downsampling inside the block (NCSN++ / DDPM++).

    ``GN -> act -> [resample] -> conv3x3 -> + Dense(act(temb)) -> GN -> act -> dropout -> conv3x3``,
    with a 1x1-conv shortcut when channels change or the block resamples; the sum is divided by
    ``sqrt(2)`` when ``skip_rescale`` is set.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        max_groups: int = 32,
        min_group_channels: int = 4,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.up, self.down, self.fir = up, down, fir
        shortcut = in_ch != out_ch or up or down
        self._build(
            in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, max_groups, min_group_channels, shortcut
        )
        if fir:
            self.register_buffer("fir_filter", fir_kernel_2d(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return fir_upsample_2d(x, self.fir_filter) if self.fir else F.interpolate(x, scale_factor=2.0)
        if self.down:
            return fir_downsample_2d(x, self.fir_filter) if self.fir else F.avg_pool2d(x, 2, stride=2)
        return x


class ResnetBlockDDPM(_ResidualBlock):
    """DDPM residual block (no resampling); 1x1 shortcut when channels change; optional ``1/sqrt(2)``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        dropout: float = 0.1,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        max_groups: int = 32,
        min_group_channels: int = 4,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self._build(
            in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, max_groups, min_group_channels, in_ch != out_ch
        )


class AttentionBlock(nn.Module):
    """Single-head self-attention over pixels (DDPM), residual, optional ``1/sqrt(2)`` rescaling.

    Works for any channel count that GroupNorm accepts (no multiple-of-32 requirement).
    """

    def __init__(
        self,
        channels: int,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        max_groups: int = 32,
        min_group_channels: int = 4,
    ) -> None:
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = group_norm(channels, max_groups, min_group_channels)
        self.to_q = conv1x1(channels, channels)
        self.to_k = conv1x1(channels, channels)
        self.to_v = conv1x1(channels, channels)
        self.to_out = conv1x1(channels, channels, init_scale=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).reshape(b, c, hgt * wid).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        h = self.to_out(out.transpose(1, 2).reshape(b, c, hgt, wid))
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merge a skip (pyramid) tensor into the main path: ``conv1x1(x)`` concatenated with or added to ``y``."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.method = method
        self.conv = conv1x1(dim1, dim2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y
