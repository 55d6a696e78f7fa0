"""Noise-conditional classifier for classifier-guided class-conditional sampling (Song et al., 2021, §5).

A time-dependent classifier ``p_t(y | x_t)`` trained on perturbed data turns an unconditional score model
into a conditional one: ``grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)``. This is a
Wide-ResNet (as in score_sde's CIFAR-10 experiment: WRN-28-10) with GroupNorm, whose residual blocks
receive the same time embedding as the score networks: Gaussian Fourier features of ``log sigma`` for VE,
or the sinusoidal embedding of the DDPM-scale timestep for VP / sub-VP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .layers import GaussianFourierProjection, group_norm, linear, num_groups_for, sinusoidal_embedding
from .ncsnpp import _choice, _positive_int, embedding_dtype, prepare_timestep

__all__ = ["NoiseConditionalClassifier", "NoiseConditionalClassifierOutput"]


@dataclass
class NoiseConditionalClassifierOutput(BaseOutput):
    """Output of :class:`NoiseConditionalClassifier`.

    Args:
        logits (`torch.Tensor`): unnormalised class scores of shape ``(batch, num_classes)``.
    """

    logits: torch.Tensor


class _WideResBlock(nn.Module):
    """Pre-activation wide residual block with a time-embedding bias after the first convolution.

    The shortcut is parameter-free (average pooling and zero channel padding), as in the reference WRN.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        temb_dim: int,
        activate_before_residual: bool,
        dropout: float,
        max_groups: int,
    ) -> None:
        super().__init__()
        self.stride, self.out_ch, self.activate_before_residual = stride, out_ch, activate_before_residual
        self.norm_0 = group_norm(in_ch, max_groups)
        self.conv_0 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm_1 = group_norm(out_ch, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        for conv in (self.conv_0, self.conv_1):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.activate_before_residual:
            x = F.relu(self.norm_0(x))
            h = x
        else:
            h = F.relu(self.norm_0(x))
        h = self.conv_0(h) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv_1(self.dropout(F.relu(self.norm_1(h))))
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        if x.shape[1] != self.out_ch:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_ch - x.shape[1]))
        return h + x


class NoiseConditionalClassifier(ModelMixin, ConfigMixin):
    r"""Time-dependent Wide-ResNet classifier ``p_t(y | x_t)`` for classifier guidance.

    Three groups of ``blocks_per_group`` wide residual blocks with widths ``(16, 32, 64) * widen_factor`` and
    strides ``(1, 2, 2)`` (depth ``6 * blocks_per_group + 4``: WRN-28-10 is ``blocks_per_group=4``,
    ``widen_factor=10``), GroupNorm, global average pooling and a linear head. Inputs are standardised per
    image, so the classifier sees the same scale at every noise level.

    ``timestep`` follows the score network of the same SDE: ``sigma`` when
    ``time_embedding_type="fourier"`` (VE, ``time_input = "sigma"``), ``t * (N - 1)`` when
    ``"positional"`` (VP / sub-VP, ``time_input = "index"``).

    Args:
        in_channels (`int`, defaults to 3): image channels.
        num_classes (`int`, defaults to 10): number of classes.
        sample_size (`int`, defaults to 32): nominal image size (recorded for pipelines; the network is
            fully convolutional).
        base_channels (`int`, defaults to 16): width of the stem convolution and of the first group before
            widening.
        widen_factor (`int`, defaults to 10): WRN width multiplier.
        blocks_per_group (`int`, defaults to 4): residual blocks per group.
        time_embedding_type (`str`, defaults to ``"fourier"``): ``"fourier"`` (VE) or ``"positional"`` (VP).
        embedding_dim (`int`, defaults to 128): size of the Fourier/sinusoidal features; the time MLP has
            ``4 * embedding_dim`` units.
        fourier_scale (`float`, defaults to 16.0): std of the Fourier frequencies.
        dropout (`float`, defaults to 0.0): dropout between the two convolutions of a block.
        norm_num_groups (`int`, defaults to 32): most GroupNorm groups (groups = ``min(ch // 4, this)``).
    """

    main_input_name = "sample"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        sample_size: int = 32,
        base_channels: int = 16,
        widen_factor: int = 10,
        blocks_per_group: int = 4,
        time_embedding_type: str = "fourier",
        embedding_dim: int = 128,
        fourier_scale: float = 16.0,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        num_classes = _positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        _positive_int("sample_size", sample_size)
        base = _positive_int("base_channels", base_channels)
        widen = _positive_int("widen_factor", widen_factor)
        blocks = _positive_int("blocks_per_group", blocks_per_group)
        emb_dim = _positive_int("embedding_dim", embedding_dim)
        norm_num_groups = _positive_int("norm_num_groups", norm_num_groups)
        self._embedding = _choice("time_embedding_type", time_embedding_type, ("fourier", "positional"))
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        widths = [base * widen, 2 * base * widen, 4 * base * widen]
        for width in [base, *widths]:
            num_groups_for(width, norm_num_groups)

        self._emb_dim = emb_dim
        if self._embedding == "fourier":
            self.fourier_proj = GaussianFourierProjection(embedding_size=emb_dim, scale=float(fourier_scale))
            embed_in = 2 * emb_dim
        else:
            self.fourier_proj = None
            embed_in = emb_dim
        temb_dim = 4 * emb_dim
        self.time_mlp = nn.Sequential(linear(embed_in, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim))

        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv_in.weight, mode="fan_out", nonlinearity="relu")
        self.blocks = nn.ModuleList()
        in_ch = base
        for group, (width, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
            for i in range(blocks):
                self.blocks.append(
                    _WideResBlock(
                        in_ch,
                        width,
                        stride if i == 0 else 1,
                        temb_dim,
                        activate_before_residual=(group == 0 and i == 0),
                        dropout=float(dropout),
                        max_groups=norm_num_groups,
                    )
                )
                in_ch = width
        self.norm_out = group_norm(in_ch, norm_num_groups)
        self.head = nn.Linear(in_ch, num_classes)
        bound = 1.0 / num_classes**0.5
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    @property
    def time_input(self) -> str:
        """``"sigma"`` for the Fourier (VE) embedding, ``"index"`` for the positional (VP) one."""
        return "sigma" if self._embedding == "fourier" else "index"

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True
    ) -> NoiseConditionalClassifierOutput | tuple[torch.Tensor]:
        """Classify noisy images.

        Args:
            sample (`torch.Tensor`): ``(batch, in_channels, height, width)``.
            timestep (`torch.Tensor` or `float`): ``sigma`` (Fourier) or ``t * (N - 1)`` (positional); a scalar
                or shape ``(batch,)``.
            return_dict (`bool`, defaults to `True`): return a dataclass instead of a tuple.

        Returns:
            `NoiseConditionalClassifierOutput` with ``logits`` of shape ``(batch, num_classes)``, or ``(logits,)``.
        """
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if sample.dim() != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample must have shape (batch, {self.config.in_channels}, height, width), got {tuple(sample.shape)}"
            )
        batch = sample.shape[0]
        t = prepare_timestep(timestep, batch, sample.device, embedding_dtype(sample.dtype))
        emb = (
            self.fourier_proj(torch.log(t))
            if self.fourier_proj is not None
            else sinusoidal_embedding(t, self._emb_dim)
        )
        temb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype)).to(sample.dtype)

        # Per-image standardisation: the noisy input's scale varies by orders of magnitude over time.
        flat = sample.reshape(batch, -1)
        std_floor = 1.0 / flat.shape[1] ** 0.5
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1, unbiased=False).clamp_min(std_floor).view(-1, 1, 1, 1)
        h = self.conv_in((sample - mean) / std)
        for block in self.blocks:
            h = block(h, temb)
        h = F.relu(self.norm_out(h)).mean(dim=(2, 3))
        logits = self.head(h)
        if not return_dict:
            return (logits,)
        return NoiseConditionalClassifierOutput(logits=logits)

    def log_prob_gradient(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor
    ) -> torch.Tensor:
        """``grad_x log p_t(y | x)`` for guidance: add ``scale *`` this to the unconditional score.

        Args:
            sample (`torch.Tensor`): noisy images ``(batch, in_channels, height, width)``.
            timestep (`torch.Tensor` or `float`): as in :meth:`forward`.
            class_labels (`torch.Tensor`): target classes, integer tensor ``(batch,)`` (or a scalar).

        Returns:
            `torch.Tensor`: the gradient, same shape as ``sample`` (detached).
        """
        labels = torch.as_tensor(class_labels, device=sample.device)
        if labels.is_floating_point():
            raise TypeError("class_labels must be an integer tensor")
        if labels.dim() == 0:
            labels = labels.reshape(1).expand(sample.shape[0])
        if labels.shape != (sample.shape[0],):
            raise ValueError(f"class_labels must have shape ({sample.shape[0]},), got {tuple(labels.shape)}")
        with torch.enable_grad():
            x = sample.detach().requires_grad_(True)
            log_probs = F.log_softmax(self(x, timestep).logits.float(), dim=-1)
            selected = log_probs.gather(1, labels.long()[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x)
        return grad

    @classmethod
    def from_preset(cls, name: str, **overrides) -> NoiseConditionalClassifier:
        """A freshly initialised classifier from a named preset (``"classifier-cifar10"``, ``"classifier-tiny"``)."""
        from .presets import model_from_preset

        return model_from_preset(name, expected_class=cls, **overrides)
