"""NCSN++ and DDPM++ score networks (Song et al., 2021, "Score-Based Generative Modeling through SDEs").

Both are the same U-Net backbone (score_sde calls both ``ncsnpp``); they differ in how time enters and
what comes out:

=================  ==========================================  ===========================================
                   :class:`NCSNppModel` (VE SDE)               :class:`DDPMppModel` (VP / sub-VP SDE)
=================  ==========================================  ===========================================
``timestep``       the noise level ``sigma`` (float)           the DDPM-scale time ``t * (N - 1)`` (float)
time embedding     Gaussian Fourier features of ``log sigma``  sinusoidal embedding of the timestep
output             the score ``network(x) / sigma``            the noise ``epsilon``
paper defaults     FIR ``[1, 3, 3, 1]`` resampling, residual   nearest/avg-pool resampling, no pyramids
                   input pyramid
=================  ==========================================  ===========================================

Each class exposes ``prediction_type`` and ``time_input`` class attributes that plug straight into
:func:`sde_diffusers.parameterization.make_score_fn`::

    score_fn = make_score_fn(model, sde, model.prediction_type, model.time_input)

Both follow ``UNet2DModel``'s calling convention, ``model(sample, timestep, class_labels=None)`` returning
a ``UNet2DOutput`` with ``.sample``, so pipelines can treat them alike. Unlike ``UNet2DModel`` they accept
any number of image channels in the progressive skip paths and any channel count in attention (groups of
GroupNorm shrink for small widths).

The network sees the data as given (score_sde's VE models rescaled ``[0, 1]`` data to ``[-1, 1]`` inside
the network; here that choice belongs to the data pipeline, and :mod:`sde_diffusers.convert` folds it into the
SDE and ``sigma_embedding_scale`` when it converts such a checkpoint).

Besides the paper's defaults, the options below express every released score_sde network exactly (see
:func:`sde_diffusers.convert_score_sde_checkpoint`): NCSN++ trained on the discrete SMLD chain
(``embedding_type="positional"``: the timestep is the noise-level index counted from ``sigma_max``, the output
is divided by the model's own table of noise levels), DDPM++ trained on the discrete DDPM chain
(``time_input="discrete_index"``) and the original DDPM network (``resblock_type="ddpm"``, ``skip_rescale=False``,
``norm_channels_per_group=1`` for its fixed 32 GroupNorm groups).

Every computation runs in the dtype of the model and its input (a float64 model is float64 end to end); only
half-precision inputs get their time embedding computed in float32 first, as Diffusers does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from ..sde import VESDE
from ..validation import check_bool, check_choice, check_int, check_number, check_positive
from .layers import (
    AttentionBlock,
    Combine,
    Downsample,
    GaussianFourierProjection,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    Upsample,
    conv3x3,
    group_norm,
    linear,
    num_groups_for,
    sinusoidal_embedding,
)

__all__ = ["NCSNppModel", "DDPMppModel", "UNet2DOutput"]

_RESBLOCK_TYPES = ("biggan", "ddpm")
_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
_COMBINE = ("sum", "cat")
_EMBEDDINGS = ("fourier", "positional")
_DDPMPP_TIME_INPUTS = ("index", "discrete_index")


def _positive_int(name: str, value: object) -> int:
    return check_int(name, value, minimum=1)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return check_choice(name, value.lower(), choices)


def embedding_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype time embeddings are computed in for inputs of ``dtype``: float64 stays float64, float32 stays
    float32, half precision gets float32 (Fourier features of ``16 * 2 pi log sigma`` need more than 11 bits)."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


def prepare_timestep(
    timestep: torch.Tensor | float, batch: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A ``dtype`` tensor of shape ``(batch,)`` from a scalar, a 0-d/1-element tensor or a ``(batch,)`` tensor.

    Integer tensors (as ``DDPMPipeline`` passes) are cast to ``dtype``. Raises ``TypeError``/``ValueError``
    for anything else.
    """
    if isinstance(timestep, bool) or not isinstance(timestep, (torch.Tensor, Number)):
        raise TypeError(f"timestep must be a torch.Tensor or a number, got {type(timestep).__name__}")
    t = torch.as_tensor(timestep, device=device)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        return t.reshape(1).expand(batch).to(dtype)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"timestep must be a scalar or have shape ({batch},), got shape {tuple(t.shape)}")
    return t.to(dtype)


class _DownLevel(nn.Module):
    """One resolution of the encoder: residual blocks (+ attention), then optional downsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsample: nn.Module | None = None
        self.pyramid_down: nn.Module | None = None
        self.combine: nn.Module | None = None


class _UpLevel(nn.Module):
    """One resolution of the decoder: residual blocks, optional attention, pyramid head, upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attention: nn.Module | None = None
        self.pyramid_norm: nn.Module | None = None
        self.pyramid_conv: nn.Module | None = None
        self.pyramid_up: nn.Module | None = None
        self.upsample: nn.Module | None = None


class _ScoreUNet(ModelMixin, ConfigMixin):
    """Shared NCSN++/DDPM++ backbone. Subclasses fix the time embedding and output scaling."""

    #: What the network output means, for :func:`~sde_diffusers.parameterization.make_score_fn`.
    prediction_type: str = "score"
    #: The timestep the network expects (see :func:`~sde_diffusers.parameterization.model_time`); the class
    #: default, which an instance overrides when its config says otherwise.
    time_input: str = "sigma"
    _scale_by_sigma: bool = True
    main_input_name = "sample"

    def _build(
        self,
        *,
        sample_size: int,
        in_channels: int,
        out_channels: int | None,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        mid_attention: bool,
        dropout: float,
        resblock_type: str,
        resamp_with_conv: bool,
        fir: bool,
        fir_kernel: Sequence[float],
        skip_rescale: bool,
        progressive: str,
        progressive_input: str,
        progressive_combine: str,
        init_scale: float,
        fourier_scale: float,
        norm_num_groups: int,
        num_class_embeds: int | None,
        embedding_type: str,
        sigma_embedding_scale: float = 1.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_train_timesteps: int = 1000,
        norm_channels_per_group: int = 4,
    ) -> None:
        # ---- validation: every error names the argument, before any module is built ----
        sample_size = _positive_int("sample_size", sample_size)
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else _positive_int("out_channels", out_channels)
        nf = _positive_int("base_channels", base_channels)
        if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, Sequence) or not channel_mult:
            raise ValueError(f"channel_mult must be a non-empty sequence of positive integers, got {channel_mult!r}")
        ch_mult = [_positive_int("channel_mult entries", m) for m in channel_mult]
        num_res_blocks = _positive_int("num_res_blocks", num_res_blocks)
        norm_num_groups = _positive_int("norm_num_groups", norm_num_groups)
        group_channels = _positive_int("norm_channels_per_group", norm_channels_per_group)
        if not isinstance(dropout, Number) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        embedding = _choice("embedding_type", embedding_type, _EMBEDDINGS)
        sigma_embedding_scale = check_positive("sigma_embedding_scale", sigma_embedding_scale)
        check_bool("skip_rescale", skip_rescale)
        check_bool("resamp_with_conv", resamp_with_conv)
        check_bool("fir", fir)
        check_number("init_scale", init_scale, 0.0)
        resblock_type = _choice("resblock_type", resblock_type, _RESBLOCK_TYPES)
        progressive = _choice("progressive", progressive, _PROGRESSIVE)
        progressive_input = _choice("progressive_input", progressive_input, _PROGRESSIVE_INPUT)
        combine_method = _choice("progressive_combine", progressive_combine, _COMBINE)
        if num_class_embeds is not None:
            _positive_int("num_class_embeds", num_class_embeds)
        if progressive == "output_skip" and out_channels != in_channels:
            raise ValueError(
                "progressive='output_skip' sums image-space outputs; it needs out_channels == in_channels"
            )
        num_levels = len(ch_mult)
        factor = 2 ** (num_levels - 1)
        if sample_size % factor != 0:
            raise ValueError(
                f"sample_size={sample_size} must be divisible by 2**(len(channel_mult) - 1) = {factor} "
                f"(the model halves the resolution {num_levels - 1} times); use a power of two such as "
                f"{2 ** max(num_levels - 1, math.ceil(math.log2(sample_size)))}"
            )
        resolutions = [sample_size // 2**i for i in range(num_levels)]
        attn_res = {int(r) for r in attention_resolutions}
        unknown = sorted(attn_res - set(resolutions))
        if unknown:
            raise ValueError(
                f"attention_resolutions {unknown} are not resolutions of this model ({resolutions} for "
                f"sample_size={sample_size}, channel_mult={tuple(ch_mult)})"
            )
        # GroupNorm must divide every width used, checked once with a message naming the culprit.
        for width in {nf * m for m in ch_mult} | ({2 * nf * m for m in ch_mult} if combine_method == "cat" else set()):
            num_groups_for(width, norm_num_groups, group_channels)
        if embedding == "positional" and self._scale_by_sigma:
            # Discrete SMLD: the timestep indexes noise levels counted from sigma_max; the output is divided by
            # that level (score_sde's `sigmas[labels]`). The table comes from the one VE formula in sde.py.
            sde = VESDE(
                sigma_min=check_positive("sigma_min", sigma_min),
                sigma_max=check_positive("sigma_max", sigma_max),
                N=_positive_int("num_train_timesteps", num_train_timesteps),
            )
            table = sde.discrete_sigmas(dtype=torch.float64).flip(0).to(torch.get_default_dtype())
            self.register_buffer("sigmas", table, persistent=False)
            self.time_input = "reversed_index"
        else:
            self.sigmas = None

        self._resolutions = resolutions
        self._attn_res = attn_res
        self._factor = factor
        self._progressive = progressive
        self._progressive_input = progressive_input
        self._skip_rescale = skip_rescale
        self._biggan = resblock_type == "biggan"
        self._nf = nf
        self._embedding = embedding
        self._sigma_embedding_scale = sigma_embedding_scale
        temb_dim = 4 * nf

        # ---- time (and class) embedding ----
        if embedding == "fourier":
            self.fourier_proj = GaussianFourierProjection(embedding_size=nf, scale=float(fourier_scale))
            embed_in = 2 * nf
        else:
            self.fourier_proj = None
            embed_in = nf
        self.time_mlp = nn.Sequential(linear(embed_in, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim))
        self.class_embedding = nn.Embedding(num_class_embeds, temb_dim) if num_class_embeds is not None else None

        fir_kernel = tuple(float(k) for k in fir_kernel)

        def resnet(in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
            common = dict(
                temb_dim=temb_dim,
                dropout=float(dropout),
                skip_rescale=skip_rescale,
                init_scale=init_scale,
                max_groups=norm_num_groups,
                min_group_channels=group_channels,
            )
            if resblock_type == "biggan":
                return ResnetBlockBigGAN(in_ch, out_ch, up=up, down=down, fir=fir, fir_kernel=fir_kernel, **common)
            return ResnetBlockDDPM(in_ch, out_ch, **common)

        def attention(ch: int) -> nn.Module:
            return AttentionBlock(
                ch,
                skip_rescale=skip_rescale,
                init_scale=init_scale,
                max_groups=norm_num_groups,
                min_group_channels=group_channels,
            )

        # ---- encoder ----
        self.conv_in = conv3x3(in_channels, nf)
        skip_channels = [nf]
        in_ch, pyramid_ch = nf, in_channels
        self.down_levels = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            block = _DownLevel()
            for _ in range(num_res_blocks):
                out_ch = nf * mult
                block.resnets.append(resnet(in_ch, out_ch))
                in_ch = out_ch
                block.attentions.append(attention(in_ch) if resolutions[level] in attn_res else nn.Identity())
                skip_channels.append(in_ch)
            if level != num_levels - 1:
                if resblock_type == "biggan":
                    block.downsample = resnet(in_ch, down=True)
                else:
                    block.downsample = Downsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                if progressive_input == "input_skip":
                    block.pyramid_down = Downsample(pyramid_ch, with_conv=False, fir=fir, fir_kernel=fir_kernel)
                    block.combine = Combine(pyramid_ch, in_ch, method=combine_method)
                    if combine_method == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    block.pyramid_down = Downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)
            self.down_levels.append(block)

        # ---- bottleneck ----
        in_ch = skip_channels[-1]
        self.mid_resnet_0 = resnet(in_ch)
        self.mid_attn = attention(in_ch) if mid_attention else None
        self.mid_resnet_1 = resnet(in_ch)

        # ---- decoder ----
        self.up_levels = nn.ModuleList()
        pyramid_ch = 0
        for level in reversed(range(num_levels)):
            block = _UpLevel()
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[level]
                block.resnets.append(resnet(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if resolutions[level] in attn_res:
                block.attention = attention(in_ch)
            if progressive != "none":
                if level == num_levels - 1:
                    block.pyramid_norm = group_norm(in_ch, norm_num_groups, group_channels)
                    if progressive == "output_skip":
                        block.pyramid_conv = conv3x3(in_ch, out_channels, init_scale=init_scale)
                        pyramid_ch = out_channels
                    else:
                        block.pyramid_conv = conv3x3(in_ch, in_ch)
                        pyramid_ch = in_ch
                elif progressive == "output_skip":
                    block.pyramid_up = Upsample(pyramid_ch, with_conv=False, fir=fir, fir_kernel=fir_kernel)
                    block.pyramid_norm = group_norm(in_ch, norm_num_groups, group_channels)
                    block.pyramid_conv = conv3x3(in_ch, out_channels, init_scale=init_scale)
                else:
                    block.pyramid_up = Upsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                    pyramid_ch = in_ch
            if level != 0:
                if resblock_type == "biggan":
                    block.upsample = resnet(in_ch, up=True)
                else:
                    block.upsample = Upsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
            self.up_levels.append(block)
        if skip_channels:
            raise RuntimeError("internal error: unused skip connections")  # pragma: no cover

        if progressive == "output_skip":
            self.norm_out, self.conv_out = None, None
        else:
            self.norm_out = group_norm(in_ch, norm_num_groups, group_channels)
            self.conv_out = conv3x3(in_ch, out_channels, init_scale=init_scale)

    # ---- forward -------------------------------------------------------------------------------------
    def _check_sample(self, sample: torch.Tensor) -> None:
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if sample.dim() != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample must have shape (batch, {self.config.in_channels}, height, width), got {tuple(sample.shape)}"
            )
        if sample.shape[-1] % self._factor or sample.shape[-2] % self._factor:
            raise ValueError(
                f"sample height and width must be divisible by {self._factor} for this model, "
                f"got {tuple(sample.shape[-2:])}"
            )

    def _embed(self, t: torch.Tensor, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if self.fourier_proj is not None:
            # A scale of 1 is skipped so that the embedding is bit-for-bit score_sde's.
            sigma = t if self._sigma_embedding_scale == 1.0 else t * self._sigma_embedding_scale
            emb = self.fourier_proj(torch.log(sigma))
        else:
            emb = sinusoidal_embedding(t, self._nf)
        first = self.time_mlp[0]
        temb = self.time_mlp(emb.to(first.weight.dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given but the model has no class embedding (num_class_embeds=None)"
                )
            return temb
        if class_labels is None:
            raise ValueError(
                f"this model is class-conditional (num_class_embeds={self.config.num_class_embeds}); pass class_labels"
            )
        labels = torch.as_tensor(class_labels, device=temb.device)
        if labels.is_floating_point():
            raise TypeError("class_labels must be an integer tensor")
        if labels.dim() == 0:
            labels = labels.reshape(1).expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"class_labels must have shape ({batch},), got {tuple(labels.shape)}")
        return temb + self.class_embedding(labels.long()).to(temb.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Run the network.

        Args:
            sample (`torch.Tensor`): noisy images ``(batch, in_channels, height, width)``; height and width
                divisible by ``2 ** (len(channel_mult) - 1)``.
            timestep (`torch.Tensor` or `float`): see the class docstring (``sigma`` for NCSN++,
                ``t * (N - 1)`` for DDPM++); a scalar or shape ``(batch,)``; integer tensors are cast to float.
            class_labels (`torch.Tensor`, *optional*): integer labels ``(batch,)``, required exactly when the
                model was built with ``num_class_embeds``.
            return_dict (`bool`, defaults to `True`): return a ``UNet2DOutput`` instead of a tuple.

        Returns:
            `UNet2DOutput` (``.sample`` of shape ``(batch, out_channels, height, width)``) or ``(sample,)``.
        """
        self._check_sample(sample)
        batch = sample.shape[0]
        t = prepare_timestep(timestep, batch, sample.device, embedding_dtype(sample.dtype))
        temb = self._embed(t, class_labels, batch).to(sample.dtype)

        # encoder
        pyramid = sample if self._progressive_input != "none" else None
        hs = [self.conv_in(sample)]
        for block in self.down_levels:
            for resnet, attn in zip(block.resnets, block.attentions, strict=True):
                hs.append(attn(resnet(hs[-1], temb)))
            if block.downsample is not None:
                h = block.downsample(hs[-1], temb) if self._biggan else block.downsample(hs[-1])
                if self._progressive_input == "input_skip":
                    pyramid = block.pyramid_down(pyramid)
                    h = block.combine(pyramid, h)
                elif self._progressive_input == "residual":
                    pyramid = block.pyramid_down(pyramid) + h
                    pyramid = pyramid / math.sqrt(2.0) if self._skip_rescale else pyramid
                    h = pyramid
                hs.append(h)

        # bottleneck
        h = self.mid_resnet_0(hs[-1], temb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid_resnet_1(h, temb)

        # decoder
        out_pyramid = None
        for block in self.up_levels:
            for resnet in block.resnets:
                h = resnet(torch.cat([h, hs.pop()], dim=1), temb)
            if block.attention is not None:
                h = block.attention(h)
            if self._progressive != "none":
                if block.pyramid_up is None:  # lowest resolution: start the pyramid
                    out_pyramid = block.pyramid_conv(F.silu(block.pyramid_norm(h)))
                elif self._progressive == "output_skip":
                    out_pyramid = block.pyramid_up(out_pyramid) + block.pyramid_conv(F.silu(block.pyramid_norm(h)))
                else:
                    out_pyramid = block.pyramid_up(out_pyramid) + h
                    out_pyramid = out_pyramid / math.sqrt(2.0) if self._skip_rescale else out_pyramid
                    h = out_pyramid
            if block.upsample is not None:
                h = block.upsample(h, temb) if self._biggan else block.upsample(h)

        if self._progressive == "output_skip":
            h = out_pyramid
        else:
            h = self.conv_out(F.silu(self.norm_out(h)))
        if self._scale_by_sigma:
            # NCSN++ learns sigma * score (unit scale at every noise level); dividing gives the score.
            sigma = t if self.sigmas is None else self.sigmas[t.long()]
            h = h / sigma.to(h.dtype).view(-1, 1, 1, 1)
        if not return_dict:
            return (h,)
        return UNet2DOutput(sample=h)

    # ---- presets ---------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> _ScoreUNet:
        """Build a freshly initialised model from a named preset (see :mod:`sde_diffusers.models.presets`).

        Args:
            name (`str`): preset name, e.g. ``"ncsnpp-cifar10"`` or ``"ddpmpp-tiny"``.
            **overrides: config values that replace the preset's (e.g. ``in_channels=1, sample_size=28``).
        """
        from .presets import model_from_preset

        return model_from_preset(name, expected_class=cls, **overrides)


class NCSNppModel(_ScoreUNet):
    r"""NCSN++: the VE-SDE score network of Song et al. (2021).

    Conditioned on the noise level ``sigma`` through Gaussian Fourier features of ``log sigma``; BigGAN
    residual blocks with FIR ``[1, 3, 3, 1]`` resampling; optional progressive input pyramid
    (``"input_skip"`` / ``"residual"``) and output pyramid (``"output_skip"`` / ``"residual"``); the output is
    divided by ``sigma`` so the model returns the score ``grad_x log p_sigma(x)``.

    ``prediction_type = "score"``, ``time_input = "sigma"``.

    Args:
        sample_size (`int`, defaults to 32): image size; divisible by ``2 ** (len(channel_mult) - 1)``.
        in_channels (`int`, defaults to 3): image channels (1 for grayscale).
        out_channels (`int`, *optional*): output channels (defaults to ``in_channels``).
        base_channels (`int`, defaults to 128): width ``nf`` of the first level.
        channel_mult (`tuple[int]`, defaults to ``(1, 2, 2, 2)``): width multiplier per resolution.
        num_res_blocks (`int`, defaults to 4): residual blocks per resolution (8 for the "deep" models).
        attention_resolutions (`tuple[int]`, defaults to ``(16,)``): resolutions with self-attention.
        mid_attention (`bool`, defaults to `True`): self-attention in the bottleneck.
        dropout (`float`, defaults to 0.1): dropout inside residual blocks.
        resblock_type (`str`, defaults to ``"biggan"``): ``"biggan"`` (resampling inside residual blocks) or
            ``"ddpm"`` (separate up/down layers).
        resamp_with_conv (`bool`, defaults to `True`): convolution in separate up/down layers (``"ddpm"``).
        fir (`bool`, defaults to `True`): FIR resampling instead of nearest/average pooling.
        fir_kernel (`tuple[float]`, defaults to ``(1, 3, 3, 1)``): FIR taps.
        skip_rescale (`bool`, defaults to `True`): divide residual sums by ``sqrt(2)``.
        progressive (`str`, defaults to ``"none"``): output pyramid, ``"none"``, ``"output_skip"``, ``"residual"``.
        progressive_input (`str`, defaults to ``"residual"``): input pyramid, ``"none"``, ``"input_skip"``,
            ``"residual"``.
        progressive_combine (`str`, defaults to ``"sum"``): how ``"input_skip"`` merges, ``"sum"`` or ``"cat"``.
        init_scale (`float`, defaults to 0.0): init scale of the last layer of each branch (0 means ``1e-10``).
        fourier_scale (`float`, defaults to 16.0): std of the Fourier frequencies.
        norm_num_groups (`int`, defaults to 32): most GroupNorm groups (groups = ``min(ch // 4, this)``).
        num_class_embeds (`int`, *optional*): number of classes for a label embedding added to the time
            embedding (class-conditional model); ``None`` for unconditional.
        embedding_type (`str`, defaults to ``"fourier"``): ``"fourier"`` (the timestep is ``sigma``, continuous
            training) or ``"positional"`` (score_sde's discrete SMLD models: the timestep is the index of the noise
            level counted from ``sigma_max``, ``time_input = "reversed_index"``, and the output is divided by
            that level of the model's table ``sigmas``).
        sigma_embedding_scale (`float`, defaults to 1.0): the Fourier embedding sees ``log(sigma * this)``. A
            converted score_sde model that centred its ``[0, 1]`` input itself works on ``[-1, 1]`` data with
            doubled noise levels, and gets 0.5 here so that its embedding sees the levels it was trained on.
        sigma_min (`float`, defaults to 0.01), sigma_max (`float`, defaults to 50.0), num_train_timesteps (`int`,
            defaults to 1000): the noise-level table of ``embedding_type="positional"`` (unused otherwise).
        norm_channels_per_group (`int`, defaults to 4): GroupNorm uses ``min(ch // this, norm_num_groups)``
            groups; 1 gives the original DDPM network's fixed 32 groups.
    """

    prediction_type = "score"
    time_input = "sigma"
    _scale_by_sigma = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attention_resolutions: tuple[int, ...] = (16,),
        mid_attention: bool = True,
        dropout: float = 0.1,
        resblock_type: str = "biggan",
        resamp_with_conv: bool = True,
        fir: bool = True,
        fir_kernel: tuple[float, ...] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        init_scale: float = 0.0,
        fourier_scale: float = 16.0,
        norm_num_groups: int = 32,
        num_class_embeds: int | None = None,
        embedding_type: str = "fourier",
        sigma_embedding_scale: float = 1.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_train_timesteps: int = 1000,
        norm_channels_per_group: int = 4,
    ) -> None:
        super().__init__()
        self._build(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})


class DDPMppModel(_ScoreUNet):
    r"""DDPM++: the VP / sub-VP network of Song et al. (2021); predicts the noise ``epsilon``.

    Conditioned on the DDPM-scale timestep ``t * (N - 1)`` (``t * 999`` for ``N = 1000``, the scale of
    ``DDPMScheduler``'s timesteps) through a sinusoidal embedding; BigGAN residual blocks with skip rescaling
    by ``1 / sqrt(2)``; no pyramids and no FIR by default (set ``fir``/``progressive*`` to get the NCSN++
    layout with VP conditioning, as score_sde's "NCSN++ (VP)" models).

    ``prediction_type = "epsilon"`` (score ``= -epsilon / std(t)``), ``time_input = "index"``.

    Args:
        sample_size (`int`, defaults to 32): image size; divisible by ``2 ** (len(channel_mult) - 1)``.
        in_channels (`int`, defaults to 3): image channels (1 for grayscale).
        out_channels (`int`, *optional*): output channels (defaults to ``in_channels``).
        base_channels (`int`, defaults to 128): width ``nf`` of the first level.
        channel_mult (`tuple[int]`, defaults to ``(1, 2, 2, 2)``): width multiplier per resolution.
        num_res_blocks (`int`, defaults to 4): residual blocks per resolution (8 for the "deep" models).
        attention_resolutions (`tuple[int]`, defaults to ``(16,)``): resolutions with self-attention.
        mid_attention (`bool`, defaults to `True`): self-attention in the bottleneck.
        dropout (`float`, defaults to 0.1): dropout inside residual blocks.
        resblock_type (`str`, defaults to ``"biggan"``): ``"biggan"`` or ``"ddpm"``.
        resamp_with_conv (`bool`, defaults to `True`): convolution in separate up/down layers (``"ddpm"``).
        fir (`bool`, defaults to `False`): FIR resampling instead of nearest/average pooling.
        fir_kernel (`tuple[float]`, defaults to ``(1, 3, 3, 1)``): FIR taps.
        skip_rescale (`bool`, defaults to `True`): divide residual sums by ``sqrt(2)``.
        progressive (`str`, defaults to ``"none"``): output pyramid, ``"none"``, ``"output_skip"``, ``"residual"``.
        progressive_input (`str`, defaults to ``"none"``): input pyramid, ``"none"``, ``"input_skip"``,
            ``"residual"``.
        progressive_combine (`str`, defaults to ``"sum"``): how ``"input_skip"`` merges, ``"sum"`` or ``"cat"``.
        init_scale (`float`, defaults to 0.0): init scale of the last layer of each branch (0 means ``1e-10``).
        norm_num_groups (`int`, defaults to 32): most GroupNorm groups (groups = ``min(ch // 4, this)``).
        num_class_embeds (`int`, *optional*): number of classes for a label embedding added to the time
            embedding (class-conditional model); ``None`` for unconditional.
        time_input (`str`, defaults to ``"index"``): ``"index"`` (trained on the continuous SDE: score
            ``= -epsilon / std(t)``) or ``"discrete_index"`` (trained on the discrete DDPM chain: the std is
            ``sqrt(1 - alphas_cumprod[floor(t (N - 1))])``). The timestep is ``t (N - 1)`` either way.
        norm_channels_per_group (`int`, defaults to 4): GroupNorm uses ``min(ch // this, norm_num_groups)``
            groups; 1 gives the original DDPM network's fixed 32 groups.
    """

    prediction_type = "epsilon"
    time_input = "index"
    _scale_by_sigma = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attention_resolutions: tuple[int, ...] = (16,),
        mid_attention: bool = True,
        dropout: float = 0.1,
        resblock_type: str = "biggan",
        resamp_with_conv: bool = True,
        fir: bool = False,
        fir_kernel: tuple[float, ...] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        progressive: str = "none",
        progressive_input: str = "none",
        progressive_combine: str = "sum",
        init_scale: float = 0.0,
        norm_num_groups: int = 32,
        num_class_embeds: int | None = None,
        time_input: str = "index",
        norm_channels_per_group: int = 4,
    ) -> None:
        super().__init__()
        # The network is the same for both time inputs; they differ in the marginal that turns epsilon into a
        # score (continuous SDE, or the discrete chain's alphas_cumprod), which make_score_fn reads from here.
        self.time_input = check_choice("time_input", time_input, _DDPMPP_TIME_INPUTS)
        kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__", "time_input")}
        self._build(fourier_scale=0.0, embedding_type="positional", **kwargs)
