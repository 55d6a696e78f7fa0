"""Colorization with a score model (Song et al., 2021, appendix I.2): a grey image in, colour images out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .input_checks import images_to_tensor, resolve_batch_size
from .pipeline_score_sde import ScoreSdePipelineOutput
from .pipeline_score_sde_inverse import LinearObservation, ScoreSdeInverseProblemPipeline

__all__ = ["ScoreSdeColorizationPipeline", "decoupled_colour_basis", "fit_grey_in_range", "grey_level"]

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor
# The paper's grey level: the mean of R, G and B. Pass `grey_weights=(0.299, 0.587, 0.114)` for the luma of
# ITU-R BT.601 that PIL's `convert("L")` computes.
MEAN_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


def _check_weights(grey_weights: object) -> torch.Tensor:
    if grey_weights is None:
        grey_weights = MEAN_WEIGHTS
    try:
        w = torch.as_tensor(grey_weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`grey_weights` must be three positive numbers, got {grey_weights!r}.") from err
    if w.shape != (3,) or not torch.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"`grey_weights` must be three positive finite numbers, got {grey_weights!r}.")
    return w / w.sum()


def decoupled_colour_basis(grey_weights: Sequence[float] | None = None) -> torch.Tensor:
    """The orthonormal colour transform of the paper: a ``3 x 3`` matrix ``Q`` whose rows are an orthonormal basis
    of colour space with first row ``w / |w|``, so the first channel of ``Q c`` is the grey level ``w . c`` divided by
    ``|w|`` (``w`` = ``grey_weights`` normalised to sum 1; the mean of R, G, B by default).

    Returns:
        `torch.Tensor` (float64) of shape `(3, 3)`; ``Q @ Q.T`` is the identity.
    """
    w = _check_weights(grey_weights)
    # Gram-Schmidt (QR) on [w, e_1, e_2, e_3]: the first basis vector is w / |w|.
    q, _ = torch.linalg.qr(torch.cat([w[:, None], torch.eye(3, dtype=torch.float64)], dim=1)[:, :3])
    q = q.T
    return q * torch.sign(q[0] @ w)  # first row along +w (flipping the others' signs keeps orthonormality)


def grey_level(images: torch.Tensor, grey_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Grey level ``w . c`` of colour images ``(batch, 3, height, width)``; shape ``(batch, 1, height, width)``."""
    w = _check_weights(grey_weights).to(images)
    return torch.einsum("c,bchw->bhw", w, images)[:, None]


def fit_grey_in_range(
    images: torch.Tensor,
    grey: torch.Tensor,
    grey_weights: Sequence[float] | None = None,
    iterations: int = 60,
) -> torch.Tensor:
    """The colour closest to ``c + lambda (1, 1, 1)`` inside ``[0, 1]^3`` with grey level ``grey``, per pixel.

    ``w . clamp(c + lambda, 0, 1)`` grows continuously from 0 to 1 with ``lambda``, so bisection finds the shift
    that gives exactly ``grey`` (any grey in ``[0, 1]`` is reachable): colours stay in range and the grey level
    of the result equals the input's, which plain clamping would break.

    Args:
        images (`torch.Tensor`): colours ``(batch, 3, height, width)``, any range.
        grey (`torch.Tensor`): target grey levels ``(batch, 1, height, width)`` in ``[0, 1]``.
        grey_weights: the weights of the grey level.
        iterations (`int`, defaults to 60): bisection steps (60 reach float64 resolution).
    """
    w = _check_weights(grey_weights).view(1, 3, 1, 1)
    c, g = images.double(), grey.double()
    lo = -c.amax(1, keepdim=True)  # all channels <= 0 -> grey 0
    hi = 1 - c.amin(1, keepdim=True)  # all channels >= 1 -> grey 1
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = (w * (c + mid).clamp(0, 1)).sum(1, keepdim=True) < g
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    out = (c + 0.5 * (lo + hi)).clamp(0, 1)
    # Remove the last bisection residual (float64 rounding) with one more grey-changing shift along (1, 1, 1).
    residual = g - (w * out).sum(1, keepdim=True)
    return (out + residual).clamp(0, 1).to(images.dtype)


class ScoreSdeColorizationPipeline(ScoreSdeInverseProblemPipeline):
    r"""
    Colorize grayscale images with a score model of colour images.

    The colour of each pixel is written in the paper's decoupled orthonormal colour space, whose first channel is the
    normalised grey level: colorization observes that channel and samples the other two, exactly the structure of
    inpainting, so the same ``method`` options apply (``"replacement"``: the paper's and the default, as for
    inpainting; ``"guidance"``: Tweedie likelihood guidance, far more accurate hue weights on most problems of
    ``benchmarks/conditional_accuracy.py`` but worse than replacement on one; ``"guidance+replacement"``; ``"smc"``:
    twisted sequential Monte Carlo with ``num_particles`` particles per image). The grey level of every result equals
    the input: the observed channel is pasted at the end and colours are brought into range along the grey-preserving
    direction (:func:`fit_grey_in_range`).

    Args:
        unet: a score network of 3-channel images (see [`ScoreSdePipelineBase`]).
        scheduler: the sampler.
        classifier ([`NoiseConditionalClassifier`], *optional*): for class-guided colorization.

    Example:

    ```py
    >>> from sde_diffusers import ScoreSdeColorizationPipeline
    >>> pipe = ScoreSdeColorizationPipeline.from_pretrained("path/or/repo")
    >>> colour = pipe(grey_image.convert("L"), num_inference_steps=500).images[0]
    ```
    """

    default_method = "replacement"

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        batch_size: int | None = None,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        method: str | None = None,
        guidance_scale: float = 1.0,
        guidance_variance: float | str = "jacobian",
        num_particles: int | None = None,
        smc_lookahead: bool = False,
        grey_weights: Sequence[float] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
        classifier_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str = "scheduler",
        sampler_options: dict | None = None,
    ) -> ScoreSdePipelineOutput | tuple:
        r"""
        Colorize grayscale images.

        Args:
            image (PIL image(s) of mode `"L"`, `np.ndarray` or `torch.Tensor`): grey levels with one channel and the
                UNet's size; numpy `(H, W[, 1])` or `(B, H, W, 1)`, torch `(H, W)`, `(1, H, W)` or `(B, 1, H, W)`,
                floats in ``[0, 1]`` (uint8 is divided by 255). One image is repeated over the batch.
            batch_size (`int`, *optional*): number of results; defaults to the number of images, labels or
                generators, else 1.
            num_inference_steps (`int`, defaults to 1000): noise levels of the scheduler's grid.
            generator (`torch.Generator` or a list of them, *optional*): randomness; a list gives one per sample.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (see [`ScoreSdePipeline`]).
            return_dict (`bool`, defaults to `True`): return a [`ScoreSdePipelineOutput`] instead of a tuple.
            method, guidance_scale, guidance_variance, num_particles, smc_lookahead: as in
                [`ScoreSdeInpaintPipeline`].
            grey_weights (three `float`, *optional*): weights of R, G, B in the grey level (normalised to sum 1);
                the mean by default, as in the paper; `(0.299, 0.587, 0.114)` matches PIL's `convert("L")`.
            class_labels, classifier_scale: class conditioning, as in [`ScoreSdePipeline`].
            latents (`torch.Tensor`, *optional*): standard-normal prior noise ``(batch, 3, height, width)``
                (``(batch * num_particles, 3, height, width)`` with `"smc"`).
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in [`ScoreSdePipeline`].
            sampler, sampler_options: the scheduler loop or an adaptive solver, as in [`ScoreSdePipeline`] (the
                adaptive solvers take the guidance methods, not `"replacement"` or `"smc"`).

        Returns:
            [`ScoreSdePipelineOutput`] with `images` and `nfe`, or a tuple `(images,)`.
        """
        self.check_common_inputs(
            num_inference_steps,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            sampler,
            sampler_options,
        )
        method = self.resolve_method(method, sampler)
        self.check_method_inputs(method, guidance_scale, guidance_variance, sampler)
        particles = self.check_smc_inputs(method, num_particles, guidance_variance, smc_lookahead)
        channels, _, _ = self._sample_shape_from_config()
        if channels != 3:
            raise ValueError(
                f"colorization needs a UNet of 3-channel (RGB) images; this one has {channels} channel(s)."
            )
        grey = images_to_tensor(image, "image", pil_modes=("L", "RGB"))
        if grey.shape[1] != 1:
            raise ValueError(
                f"`image` must be grayscale (PIL mode 'L' or one channel), got {grey.shape[1]} channels; convert a "
                "colour image with `image.convert('L')` first."
            )
        self._check_size(grey.shape[2], grey.shape[3], "image")
        basis = decoupled_colour_basis(grey_weights)
        weights = _check_weights(grey_weights)
        labels = self.check_class_inputs(class_labels, classifier_scale, batch_size)
        n_labels = None if labels is None or labels.numel() == 1 else labels.numel()
        # With "smc" the latents hold every particle: batch * num_particles of them.
        n_latents = latents.shape[0] // particles if isinstance(latents, torch.Tensor) and latents.dim() > 0 else None
        batch = resolve_batch_size(
            batch_size,
            generator,
            image=grey.shape[0] if grey.shape[0] > 1 else None,
            class_labels=n_labels,
            latents=n_latents,
        )

        device, dtype = self._execution_device, self.unet.dtype
        grey = grey.expand(batch, 1, *grey.shape[2:]).to(device)
        axis = basis[0].to(device=device, dtype=torch.float32).view(1, 3, 1, 1)  # w / |w|

        def project(x: torch.Tensor) -> torch.Tensor:  # onto the grey axis of every pixel: q0 (q0 . x)
            q = axis.to(x.dtype)
            return q * (q * x).sum(1, keepdim=True)

        # In the network range [lo, hi], w . x = lo + (hi - lo) grey since the weights sum to 1 (2 grey - 1 in
        # [-1, 1]); so P x = q0 (w . x) / |w|.
        data_range = self.data_range  # [-1, 1], or [0, 1] for Diffusers' score-SDE VE repos
        observed = axis * self.from_unit_range(grey, data_range=data_range) / float(weights.norm())

        def make_observation(repeats: int) -> LinearObservation:
            return LinearObservation(
                observed=(observed.repeat_interleave(repeats, 0) if repeats > 1 else observed).to(dtype),
                project=project,
                num_observed=torch.full((batch * repeats,), float(grey[0, 0].numel()), device=device),
            )

        x, nfe = self._solve(
            (batch, 3, *grey.shape[2:]),
            make_observation,
            method=method,
            guidance_scale=float(guidance_scale),
            guidance_variance=guidance_variance,
            class_labels=self._expand_labels(labels, batch, device),
            classifier_scale=float(classifier_scale),
            num_particles=particles,
            smc_lookahead=smc_lookahead,
            num_inference_steps=num_inference_steps,
            generator=generator,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            sampler=sampler,
            sampler_options=sampler_options,
        )
        # Paste the observed grey axis (the paper's last replacement), then bring colours into [0, 1] along the
        # grey-preserving direction, so the grey level of the result is the input's.
        x = make_observation(1).replace(x.float(), observed)
        images = fit_grey_in_range(self.to_unit_range(x, clamp=False, data_range=data_range), grey, weights.tolist())
        return self._finish(images, output_type, return_dict, nfe)
