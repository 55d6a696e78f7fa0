"""Inpainting with a score model (Song et al., 2021, section 5 and appendix I.2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .input_checks import images_to_tensor, mask_to_tensor, resolve_batch_size
from .pipeline_score_sde import ScoreSdePipelineOutput
from .pipeline_score_sde_inverse import LinearObservation, ScoreSdeInverseProblemPipeline

__all__ = ["ScoreSdeInpaintPipeline"]

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor


class ScoreSdeInpaintPipeline(ScoreSdeInverseProblemPipeline):
    r"""
    Fill the masked pixels of an image with samples from the score model's conditional distribution.

    The mask follows Diffusers' convention: white (1) marks the pixels to repaint, black (0) the pixels to keep. The
    kept pixels of the result equal the input exactly. ``method`` chooses how the sampler is conditioned (see
    :mod:`~sde_diffusers.pipelines.pipeline_score_sde_inverse`): ``"replacement"`` is the paper's method and the
    default (every other method is worse than it on some problem of ``benchmarks/conditional_accuracy.py``;
    adaptive solvers take ``"guidance"``); ``"guidance"`` adds the Tweedie likelihood gradient to the score and
    usually draws the modes of the missing region with far more accurate weights when the known pixels are ambiguous,
    but can commit to the wrong mode when they lie in the far tails of the modes; ``"guidance+replacement"`` does
    both; ``"smc"`` runs ``num_particles`` weighted particles per image (twisted sequential Monte Carlo), the most
    accurate mode weights when the twist is sound, at ``num_particles`` times the cost (see the README's table).

    Args:
        unet: the score network (see [`ScoreSdePipelineBase`]).
        scheduler: the sampler: our PC / probability-flow schedulers, or DDIM / DPM-Solver for VP models.
        classifier ([`NoiseConditionalClassifier`], *optional*): for class-guided inpainting.

    Example:

    ```py
    >>> from sde_diffusers import ScoreSdeInpaintPipeline
    >>> pipe = ScoreSdeInpaintPipeline.from_pretrained("path/or/repo")
    >>> result = pipe(image, mask_image, num_inference_steps=500).images[0]
    ```
    """

    default_method = "replacement"

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
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
        mask_threshold: float | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
        classifier_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str = "scheduler",
        sampler_options: dict | None = None,
    ) -> ScoreSdePipelineOutput | tuple:
        r"""
        Inpaint images.

        Args:
            image (PIL image(s), `np.ndarray` or `torch.Tensor`): the image(s) to complete, with the UNet's channels
                and size; numpy arrays are `(H, W[, C])` or `(B, H, W, C)`, tensors `(C, H, W)` or `(B, C, H, W)`,
                floats in ``[0, 1]`` (uint8 is divided by 255). One image is repeated over the batch.
            mask_image (same kinds as `image`): 1 (white) where to repaint, 0 (black) where to keep; one channel or
                one per image channel, the image's height and width, one mask or one per image.
            batch_size (`int`, *optional*): number of results; defaults to the number of images, labels or
                generators, else 1.
            num_inference_steps (`int`, defaults to 1000): noise levels of the scheduler's grid.
            generator (`torch.Generator` or a list of them, *optional*): randomness; a list gives one per sample.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (see [`ScoreSdePipeline`]).
            return_dict (`bool`, defaults to `True`): return a [`ScoreSdePipelineOutput`] instead of a tuple.
            method (`str`, *optional*): `"replacement"` (the paper's; the default with the scheduler), `"guidance"`
                (the default with an adaptive `sampler`), `"guidance+replacement"` or `"smc"` (see the module docs of
                `pipeline_score_sde_inverse`).
            guidance_scale (`float`, defaults to 1.0): weight of the likelihood gradient (guidance methods); with
                `"smc"` it scales the proposal's guidance along the unobserved directions (the weights correct any
                value).
            guidance_variance (`float` or `"jacobian"`, defaults to `"jacobian"`): per-pixel prior variance ``v`` of
                the data in the network's ``[-1, 1]`` range for ``r_t^2 = v sigma^2 / (v + sigma^2)``, or
                `"jacobian"` to take ``r_t^2`` from the network's Jacobian (two backward passes per evaluation;
                the only choice for `"smc"`).
            num_particles (`int`, *optional*): particles per output image for `method="smc"` (default 16); each
                network call evaluates ``batch_size * num_particles`` samples in one batch, and the returned image is
                one particle drawn by the final weights. Only with `"smc"`.
            smc_lookahead (`bool`, defaults to `False`): with `"smc"`, evaluate the twist one probability-flow step
                ahead: at Tweedie's estimate after a deterministic DDIM step from ``x_t`` to the geometric middle of
                ``x_t``'s noise level and the last one, with the within-mode variance read from the network's Jacobian
                there; the proposal follows that twist's gradient. Undecided particles between modes are no longer
                overrated (see the README's "Why SMC misses the target"). Cost per particle and step: two network
                calls instead of one (so about twice the time of the same `num_particles`), and three backward passes
                (the Jacobian probe at the landing point and the gradient through both calls) as before two; the last
                step uses the default (Tweedie) twist. Only with `"smc"`.
            mask_threshold (`float`, *optional*): binarise a soft mask: repaint where ``mask >= mask_threshold``
                (mask in ``[0, 1]``). Without it, a mask with values other than 0 and 1 is an error.
            class_labels, classifier_scale: class conditioning, as in [`ScoreSdePipeline`].
            latents (`torch.Tensor`, *optional*): standard-normal prior noise ``(batch, channels, height, width)``
                (``(batch * num_particles, ...)`` with `"smc"`, particle ``k`` of image ``b`` at ``b * K + k``).
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in [`ScoreSdePipeline`].
            sampler, sampler_options: the scheduler loop or an adaptive solver, as in [`ScoreSdePipeline`] (the
                adaptive solvers take the guidance methods, not `"replacement"` or `"smc"`).

        Returns:
            [`ScoreSdePipelineOutput`] with `images` and `nfe` (batched network calls; with `"smc"` each call
            evaluates `num_particles` samples per image), or a tuple `(images,)`.
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
        pixels = images_to_tensor(image, "image")
        mask = self._prepare_mask(mask_image, mask_threshold, pixels)
        labels = self.check_class_inputs(class_labels, classifier_scale, batch_size)
        n_labels = None if labels is None or labels.numel() == 1 else labels.numel()
        # With "smc" the latents hold every particle: batch * num_particles of them.
        n_latents = latents.shape[0] // particles if isinstance(latents, torch.Tensor) and latents.dim() > 0 else None
        batch = resolve_batch_size(
            batch_size,
            generator,
            image=pixels.shape[0] if pixels.shape[0] > 1 else None,
            mask_image=mask.shape[0] if mask.shape[0] > 1 else None,
            class_labels=n_labels,
            latents=n_latents,
        )

        device, dtype = self._execution_device, self.unet.dtype
        shape = (batch, *pixels.shape[1:])
        pixels = pixels.expand(shape).to(device)
        keep = (1.0 - mask).expand(shape).to(device)
        data_range = self.data_range  # [-1, 1], or [0, 1] for Diffusers' score-SDE VE repos
        observed = keep * self.from_unit_range(pixels, data_range=data_range)

        def make_observation(repeats: int) -> LinearObservation:
            keep_r = keep.repeat_interleave(repeats, 0) if repeats > 1 else keep
            return LinearObservation(
                observed=(observed.repeat_interleave(repeats, 0) if repeats > 1 else observed).to(dtype),
                project=lambda x: keep_r.to(x.dtype) * x,
                num_observed=keep_r.flatten(1).sum(1).clamp_min(1.0),
            )

        x, nfe = self._solve(
            shape,
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
        # The kept pixels are the input's, bit for bit.
        images = torch.where(keep > 0, pixels, self.to_unit_range(x.float(), data_range=data_range))
        return self._finish(images, output_type, return_dict, nfe)

    def _prepare_mask(
        self, mask_image: ImageInput, mask_threshold: float | None, pixels: torch.Tensor
    ) -> torch.Tensor:
        """The mask as ``(batch, 1 or channels, height, width)`` with 1 = repaint; checks before any work."""
        channels, height, width = self._sample_shape_from_config()
        if pixels.shape[1] != channels:
            kinds = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
            raise ValueError(
                f"`image` is {kinds.get(pixels.shape[1], pixels.shape[1])} but the UNet takes "
                f"{kinds.get(channels, channels)} images."
            )
        self._check_size(pixels.shape[2], pixels.shape[3], "image")
        return mask_to_tensor(mask_image, mask_threshold, pixels)
