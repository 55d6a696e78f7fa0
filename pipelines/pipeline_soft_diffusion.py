"""Soft Diffusion pipelines (Daras et al., 2022): unconditional generation and inpainting with blur + noise models.

A Soft Diffusion model is trained on the corruption ``x_t = C_t x_0 + s_t * eta`` (``C_t`` a DCT Gaussian blur,
``s_t`` a small noise level; :mod:`sde_diffusers.corruption`) to predict the clean image ``x_0``. Sampling walks
the corruption levels back with :class:`~sde_diffusers.SoftDiffusionScheduler` (momentum, naive or deterministic
steps). These pipelines run the one sampling loop of the package
(:meth:`~sde_diffusers.pipelines.pipeline_score_sde.SamplingPipelineBase._sample`) with their own
:class:`~sde_diffusers.pipelines.conditioning.Conditioning`; two things differ from the score-SDE pipelines:

* the start is not ``N(0, sigma^2 I)`` but the most corrupted level, a flat image of a random mean colour plus a
  little noise, drawn by :meth:`SoftDiffusionScheduler.initial_sample` (from the scheduler's stored colour prior or
  from ``reference_images``): the conditioning's ``initial_sample``;
* the network output is ``x0_hat`` and goes to ``scheduler.step`` as it is; there is no SDE behind the scheduler,
  so score-based conditioning does not apply (inpainting acts on ``x0_hat`` through ``after_model``).

Inpainting (:class:`SoftDiffusionInpaintPipeline`) conditions through the clean estimate; see its docstring.

Calling conventions are those of :class:`~sde_diffusers.pipelines.ScoreSdePipeline`: ``batch_size``,
``num_inference_steps`` (= network evaluations), ``generator`` (one, or a list with one per sample),
``output_type`` ``"pil"``/``"np"``/``"pt"`` (``np``/``pt`` in ``[0, 1]``), ``return_dict`` (a
:class:`~sde_diffusers.pipelines.ScoreSdePipelineOutput` with ``images`` and ``nfe``), ``callback_on_step_end``
and a progress bar. The network sees images in ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor

from sde_diffusers.sampling.soft import SOFT_SAMPLERS
from sde_diffusers.schedulers.scheduling_soft_diffusion import SoftDiffusionScheduler
from sde_diffusers.validation import check_choice

from .conditioning import Conditioning
from .input_checks import check_latents, images_to_tensor, mask_to_tensor, resolve_batch_size
from .pipeline_score_sde import DATA_RANGE, SamplingPipelineBase, ScoreSdePipelineOutput

__all__ = ["SoftDiffusionPipelineBase", "SoftDiffusionPipeline", "SoftDiffusionInpaintPipeline"]

ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor
StepCallback = Callable[[Any, int, torch.Tensor, dict], dict]


class SoftDiffusionPipelineBase(SamplingPipelineBase):
    r"""
    Shared machinery of the Soft Diffusion pipelines: checks and the starting sample (the sampling loop and the
    outputs are [`SamplingPipelineBase`]'s).

    Components:
        unet ([`DDPMppModel`], [`~diffusers.UNet2DModel`] or any model called as ``unet(sample, timestep)``): the
            network; it predicts the clean image ``x_0`` in ``[-1, 1]`` from a corrupted one and the integer
            timestep ``0 .. N-1`` of the scheduler (``t * (N - 1)``, the scale
            :func:`~sde_diffusers.losses.soft_score_matching_loss` trains it on when given the scheduler).
        scheduler ([`SoftDiffusionScheduler`]): the corruption levels, the starting distribution and the sampler.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: torch.nn.Module, scheduler: SoftDiffusionScheduler) -> None:
        super().__init__()
        if not isinstance(scheduler, SoftDiffusionScheduler):
            raise TypeError(
                f"`scheduler` must be a SoftDiffusionScheduler (Soft Diffusion models predict x_0 of a blur + noise "
                f"corruption), got {type(scheduler).__name__}."
            )
        self.register_modules(unet=unet, scheduler=scheduler)

    # ---- facts about the components ------------------------------------------------------------------
    @property
    def data_range(self) -> tuple[float, float]:
        """``(-1, 1)``: Soft Diffusion networks work on ``[-1, 1]`` images (there is no SDE behind the scheduler)."""
        return DATA_RANGE

    def scheduler_sde(self, scheduler: Any = None) -> Any:
        """Not available: a blur + noise corruption is no SDE (score-based conditioning does not apply)."""
        raise TypeError("Soft Diffusion pipelines have no SDE behind their scheduler (blur + noise corruption).")

    def sample_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the generated images (the UNet's config; checked against the scheduler)."""
        channels, height, width = self._sample_shape_from_config()
        corruption_size = self.scheduler.corruption.image_size
        if corruption_size is not None and (height, width) != tuple(corruption_size):
            raise ValueError(
                f"the UNet generates {height}x{width} images but the scheduler's blur levels were built for "
                f"{corruption_size[0]}x{corruption_size[1]}; "
                f"rebuild the scheduler with image_size=[{height}, {width}]."
            )
        return channels, height, width

    # ---- checks ------------------------------------------------------------------------------------------
    def check_common_inputs(
        self,
        num_inference_steps: object,
        output_type: object,
        sampler: object,
        callback_on_step_end: object,
        callback_on_step_end_tensor_inputs: object,
    ) -> None:
        """Validate the arguments every Soft Diffusion pipeline takes (before any work starts)."""
        self.check_loop_inputs(
            num_inference_steps, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        n_train = self.scheduler.config.num_train_timesteps
        if num_inference_steps > n_train:
            raise ValueError(
                f"`num_inference_steps` ({num_inference_steps}) must be <= the scheduler's num_train_timesteps "
                f"({n_train}): each step evaluates the network at a distinct corruption level."
            )
        if sampler is not None:
            check_choice("sampler", sampler, tuple(SOFT_SAMPLERS))

    def _scheduler_for(self, sampler: str | None) -> SoftDiffusionScheduler:
        """The pipeline's scheduler, or a copy of it with another sampler (the pipeline's own is left as it is)."""
        if sampler is None or sampler == self.scheduler.config.sampler:
            return self.scheduler
        # Without `_use_default_values`: `from_config` drops the keys listed there, and `set_prior` fills
        # `prior_mean` / `prior_cov` after construction without taking them off that list.
        config = {k: v for k, v in self.scheduler.config.items() if k != "_use_default_values"}
        return SoftDiffusionScheduler.from_config(config, sampler=sampler)

    def _prepare_reference(self, reference_images: object, channels: int) -> torch.Tensor | None:
        if reference_images is None:
            return None
        reference = images_to_tensor(reference_images, "reference_images", channels=channels)
        _, height, width = self.sample_shape()
        if tuple(reference.shape[1:]) != (channels, height, width):
            raise ValueError(
                f"`reference_images` must be {channels}x{height}x{width} (channels x height x width) like the "
                f"generated images, got {tuple(reference.shape[1:])}."
            )
        return self.from_unit_range(reference)

    def _check_no_start_source(self, reference: torch.Tensor | None, latents: torch.Tensor | None) -> None:
        # Raise the scheduler's explanation before any work, not after the first network call.
        if reference is None and latents is None and self.scheduler.config.prior_mean is None:
            raise ValueError(
                "the scheduler has no starting distribution: pass `reference_images` (clean training images) or "
                "`latents`, or save the pipeline with a scheduler built by SoftDiffusionScheduler.from_data(images) "
                "(or after scheduler.set_prior(images))."
            )

    # ---- the start -----------------------------------------------------------------------------------------
    def _initial_sample(
        self,
        scheduler: SoftDiffusionScheduler,
        reference: torch.Tensor | None,
        latents: torch.Tensor | None,
        condition_start: Callable[[torch.Tensor, SoftDiffusionScheduler], torch.Tensor] | None = None,
    ) -> Callable[[tuple[int, ...], Any], torch.Tensor]:
        """The loop's ``initial_sample``: ``latents`` as given (already a draw from the most corrupted level, so not
        scaled by ``init_noise_sigma``), else ``scheduler.initial_sample`` modified by ``condition_start``."""
        device, dtype = self._execution_device, self.unet.dtype

        def initial_sample(shape: tuple[int, ...], generator: Any) -> torch.Tensor:
            if latents is not None:
                return latents.to(device=device, dtype=dtype)
            ref = None if reference is None else reference.to(device=device, dtype=dtype)
            x = scheduler.initial_sample(shape, reference=ref, generator=generator, device=device, dtype=dtype)
            return x if condition_start is None else condition_start(x, scheduler)

        return initial_sample


# ---------------------------------------------------------------------------------------------------------
# Unconditional generation
# ---------------------------------------------------------------------------------------------------------
class SoftDiffusionPipeline(SoftDiffusionPipelineBase):
    r"""
    Unconditional generation with a Soft Diffusion (blur + noise) model.

    Args:
        unet: the ``x_0``-predicting network (see [`SoftDiffusionPipelineBase`]).
        scheduler ([`SoftDiffusionScheduler`]): its corruption schedule; build it with
            ``SoftDiffusionScheduler.from_data(train_images)`` so that it carries the starting colour prior.

    Example:

    ```py
    >>> from sde_diffusers import SoftDiffusionPipeline
    >>> pipe = SoftDiffusionPipeline.from_pretrained("path/or/repo")
    >>> images = pipe(batch_size=16, num_inference_steps=50).images
    >>> naive = pipe(batch_size=16, num_inference_steps=50, sampler="naive").images  # for comparison
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        num_inference_steps: int = 100,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: str | None = None,
        reference_images: ImageInput | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ScoreSdePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            batch_size (`int`, *optional*): number of images; defaults to the number of generators in a list or of
                `latents`, else 1.
            num_inference_steps (`int`, defaults to 100): corruption levels visited, evenly spaced in ``t`` from the
                most corrupted to the least; one network evaluation each (``<= num_train_timesteps``).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): randomness; a list gives one
                generator per sample, so each sample is reproducible on its own, whatever the batch.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (`(batch, height, width, channels)` in
                ``[0, 1]``) or `"pt"` (`(batch, channels, height, width)` in ``[0, 1]``).
            return_dict (`bool`, defaults to `True`): return a [`ScoreSdePipelineOutput`] instead of a tuple.
            sampler (`str`, *optional*): `"momentum"` (Daras et al.'s Momentum Sampler), `"naive"` or
                `"deterministic"`, overriding ``scheduler.config.sampler`` for this call only.
            reference_images (PIL image(s), `np.ndarray` or `torch.Tensor` in ``[0, 1]``, *optional*): clean images
                to start from: each sample starts at the most corrupted level of a uniformly drawn reference
                (exact for any blur schedule). Without it the scheduler's stored mean-colour prior is used.
            latents (`torch.Tensor`, *optional*): the starting sample itself, shape ``(batch, channels, height,
                width)`` in the network's range, e.g. from ``scheduler.initial_sample``; used as given.
            callback_on_step_end (`Callable`, *optional*): ``callback(pipe, step, timestep, callback_kwargs)`` after
                every step; it may return ``{"latents": ...}`` to replace the sample.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors passed in ``callback_kwargs``
                (only ``"latents"``).

        Returns:
            [`ScoreSdePipelineOutput`] with `images` and `nfe`, or a tuple `(images,)`.
        """
        self.check_common_inputs(
            num_inference_steps,
            output_type,
            sampler,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        channels, height, width = self.sample_shape()
        reference = self._prepare_reference(reference_images, channels)
        n_latents = latents.shape[0] if isinstance(latents, torch.Tensor) and latents.dim() == 4 else None
        batch = resolve_batch_size(batch_size, generator, latents=n_latents)
        shape = (batch, channels, height, width)
        check_latents(latents, shape)
        self._check_no_start_source(reference, latents)
        scheduler = self._scheduler_for(sampler)
        x0, nfe = self._sample(
            shape,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            generator=generator,
            cond=Conditioning(initial_sample=self._initial_sample(scheduler, reference, latents)),
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return self._finish(self.to_unit_range(x0), output_type, return_dict, nfe)


# ---------------------------------------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------------------------------------
class SoftDiffusionInpaintPipeline(SoftDiffusionPipelineBase):
    r"""
    Inpainting with a Soft Diffusion (blur + noise) model: fill the masked pixels, keep the others exactly.

    The mask follows Diffusers' convention: white (1) marks the pixels to repaint, black (0) the pixels to keep.

    How it conditions. Score-SDE inpainting (Song et al., 2021) replaces the known pixels of every intermediate
    sample by the observation noised to the sample's level. That works because the SDE corrupts every pixel on its
    own; here ``C_t`` blurs, so the known pixels of ``x_t = C_t x_0 + s_t eta`` depend on the unknown pixels near
    them (and, at the strongest blurs, on all of them), and the "observation corrupted to level t" does not exist.
    What does exist pixel by pixel is the *clean* image. So the conditioning acts on the network's clean estimate:
    before every step the known pixels of ``x0_hat`` are replaced by the observation,

        ``x0_hat <- m * x0_hat + (1 - m) * y``     (``m`` = mask, 1 = repaint),

    which is the posterior mean ``E[x_0 | x_t, y]`` in the known pixels (where it is ``y`` exactly) and the model's
    estimate elsewhere. The momentum step then moves the sample to ``C' x0_hat + (s'^2 / s^2)(x - C x0_hat) +
    fresh noise``: the next level is the blur of an image that agrees with ``y``, so the blur carries the
    observation across the mask boundary at every scale, from the mean colour (first steps) to the edges (last
    steps), and the network sees samples consistent with it. The last step returns the conditioned estimate, and the
    known pixels of the output are then set to the input exactly.

    The start matters as much. The most corrupted level keeps only an image's mean colour, and the sampler barely
    moves the lowest frequencies afterwards (the network's estimate reproduces the sample's mean colour), so an
    unconditional start would leave the repainted region to *compensate* for the observation's colour. The start
    is therefore the most corrupted level of the observation completed with a colour from the unconditional start,
    ``C_1 (m * c + (1 - m) * y) + s_1 eta``.

    With an exact denoiser it is still an approximation: the unknown pixels of the estimate are ``E[x_0 | x_t]``, not
    ``E[x_0 | x_t, y]`` (the correlation between known and unknown pixels under the posterior is ignored, as in
    score-SDE replacement and DDNM). On Gaussian 8x8 data with a closed-form conditional (left half repainted, 50
    steps), the repainted pixels' mean lands 16-90 % (median 45 %) as far from the exact conditional mean as the
    unconditional mean is, with about 0.8 of the conditional variance; without the conditioned start, it was
    sometimes farther than the unconditional mean.

    Args:
        unet: the ``x_0``-predicting network (see [`SoftDiffusionPipelineBase`]).
        scheduler ([`SoftDiffusionScheduler`]): its corruption schedule (with the colour prior, or pass
            ``reference_images``).

    Example:

    ```py
    >>> from sde_diffusers import SoftDiffusionInpaintPipeline
    >>> pipe = SoftDiffusionInpaintPipeline.from_pretrained("path/or/repo")
    >>> result = pipe(image, mask_image, num_inference_steps=100).images[0]
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        batch_size: int | None = None,
        num_inference_steps: int = 100,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: str | None = None,
        mask_threshold: float | None = None,
        reference_images: ImageInput | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ScoreSdePipelineOutput | tuple:
        r"""
        Inpaint images.

        Args:
            image (PIL image(s), `np.ndarray` `(H, W[, C])`/`(B, H, W, C)`, `torch.Tensor` `(C, H, W)`/`(B, C, H, W)`,
                in ``[0, 1]`` or `uint8`): the images; their size and channels must be the UNet's.
            mask_image (same kinds as `image`, one channel): 1 (white) where to repaint, 0 (black) where to keep;
                the image's height and width; one mask for all images or one per image.
            batch_size (`int`, *optional*): number of results; defaults to the number of images, masks or
                generators in a list (one image and mask are repeated).
            num_inference_steps (`int`, defaults to 100): corruption levels visited (network evaluations).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): randomness, one per sample in a list.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (``[0, 1]``).
            return_dict (`bool`, defaults to `True`): return a [`ScoreSdePipelineOutput`] instead of a tuple.
            sampler (`str`, *optional*): `"momentum"`, `"naive"` or `"deterministic"` for this call.
            mask_threshold (`float` in ``(0, 1]``, *optional*): binarise a soft mask (repaint where
                ``mask >= mask_threshold``). Without it a mask with values other than 0 and 1 is an error.
            reference_images (*optional*): clean images for the starting level (see [`SoftDiffusionPipeline`]).
            latents (`torch.Tensor`, *optional*): the starting sample (most corrupted level), used as given.
            callback_on_step_end (`Callable`, *optional*): as in [`SoftDiffusionPipeline`].
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): as in [`SoftDiffusionPipeline`].

        Returns:
            [`ScoreSdePipelineOutput`] with `images` and `nfe`, or a tuple `(images,)`. The kept pixels equal the
            input (for `"pil"`, the input's 8-bit values).
        """
        self.check_common_inputs(
            num_inference_steps,
            output_type,
            sampler,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        channels, height, width = self.sample_shape()
        pixels = images_to_tensor(image, "image", channels=channels)
        if tuple(pixels.shape[1:]) != (channels, height, width):
            raise ValueError(
                f"`image` must be {channels}x{height}x{width} (channels x height x width, the UNet's), got "
                f"{tuple(pixels.shape[1:])}; resize or convert it first."
            )
        mask = mask_to_tensor(mask_image, mask_threshold, pixels)
        reference = self._prepare_reference(reference_images, channels)
        n_latents = latents.shape[0] if isinstance(latents, torch.Tensor) and latents.dim() == 4 else None
        batch = resolve_batch_size(
            batch_size,
            generator,
            image=pixels.shape[0] if pixels.shape[0] > 1 else None,
            mask_image=mask.shape[0] if mask.shape[0] > 1 else None,
            latents=n_latents,
        )
        shape = (batch, channels, height, width)
        check_latents(latents, shape)
        self._check_no_start_source(reference, latents)

        device, dtype = self._execution_device, self.unet.dtype
        pixels = pixels.expand(shape).to(device)
        repaint = mask.expand(shape).to(device)
        observed = self.from_unit_range(pixels).to(dtype)
        repaint_net = repaint.to(dtype)

        def condition_start(x1: torch.Tensor, scheduler: SoftDiffusionScheduler) -> torch.Tensor:
            # Blurring a draw of the most corrupted level again leaves its flat colour; the start is the most
            # corrupted level of the observation completed with that colour: C_1 (m c + (1 - m) y) + s_1 eta.
            colour = scheduler.corruption.blur(x1, torch.ones(batch, device=device, dtype=x1.dtype))
            filled = repaint_net * colour + (1 - repaint_net) * observed
            noise = randn_tensor(shape, generator=generator, device=device, dtype=x1.dtype)
            return scheduler.add_noise(filled, noise, scheduler.config.num_train_timesteps - 1)

        def condition_estimate(x0_hat: torch.Tensor) -> torch.Tensor:
            # E[x_0 | x_t, y]: the observation where it is known, the model's estimate elsewhere.
            return repaint_net * x0_hat + (1 - repaint_net) * observed

        scheduler = self._scheduler_for(sampler)
        cond = Conditioning(
            initial_sample=self._initial_sample(scheduler, reference, latents, condition_start),
            after_model=condition_estimate,
        )
        x0, nfe = self._sample(
            shape,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            generator=generator,
            cond=cond,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        # Paste in [0, 1], so that kept pixels are bit-for-bit the input (no round trip through [-1, 1]).
        result = repaint * self.to_unit_range(x0.float()) + (1 - repaint) * pixels
        return self._finish(result, output_type, return_dict, nfe)
