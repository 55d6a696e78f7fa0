"""Score-SDE pipelines: one sampling loop, conditioning added on top of it.

Every pipeline of this package runs :meth:`SamplingPipelineBase._sample` (inherited by
:class:`ScoreSdePipelineBase` and the Soft Diffusion pipelines), the single sampling loop: draw the start, then for
each entry of ``scheduler.timesteps`` call the network, let the conditioning modify the model output (as a score),
call ``scheduler.step``, and let the conditioning modify the new sample (projection of known pixels). The pipelines
differ only in the :class:`~sde_diffusers.pipelines.conditioning.Conditioning` they hand to that loop:

* :class:`ScoreSdePipeline`: unconditional, or class-conditional either through a label-conditional network
  (``class_labels`` go to the UNet) or, as in Song et al. (2021, section 5), through a noise-conditional
  classifier whose gradient ``grad_x log p_t(y | x)`` is added to the score with ``classifier_scale``;
* :class:`~sde_diffusers.pipelines.ScoreSdeInpaintPipeline` and
  :class:`~sde_diffusers.pipelines.ScoreSdeColorizationPipeline`: linear inverse problems (see
  ``pipeline_score_sde_inverse.py``);
* :class:`~sde_diffusers.pipelines.SoftDiffusionPipeline` and its inpainting pipeline (``pipeline_soft_diffusion.py``).

Conditioning on the score works with every scheduler that has an SDE: the network output is turned into a score
with :func:`~sde_diffusers.parameterization.model_output_to_score`, the extra term is added, and the sum is turned
back into the scheduler's own parameterisation with :func:`~sde_diffusers.parameterization.score_to_model_output`.
The forward process comes from ``scheduler.sde`` (our schedulers); for Diffusers' DDPM-family schedulers (DDIM,
DPM-Solver, ...) it is the continuous VP SDE of their beta schedule, so those swap in for VP models.

Images are in ``[-1, 1]`` for the network, as in every Diffusers image pipeline; ``"np"``/``"pt"`` outputs (and
inputs) are in ``[0, 1]``. Argument checks live in ``input_checks.py``, conditioning terms in ``conditioning.py``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from sde_diffusers.likelihood import LikelihoodOutput, log_likelihood
from sde_diffusers.scheduler_sde import SchedulerSDE, scheduler_family
from sde_diffusers.schedulers import VESDEScheduler, VPSDEScheduler
from sde_diffusers.validation import check_choice, check_int, check_number

from .conditioning import ClassifierGuidance, Conditioning, ScoreTerm
from .input_checks import (
    OUTPUT_TYPES,
    check_callback_inputs,
    check_latents,
    check_output_type,
    class_label_tensor,
    images_to_tensor,
    resolve_batch_size,
)
from .pipeline_utils import SDEDiffusionPipeline

__all__ = [
    "ScoreSdePipelineOutput",
    "SamplingPipelineBase",
    "ScoreSdePipelineBase",
    "ScoreSdePipeline",
    "ScoreTerm",
    "Conditioning",
    "OUTPUT_TYPES",
    "SAMPLERS",
]

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def _math_attention() -> contextlib.AbstractContextManager:
        return sdpa_kernel(SDPBackend.MATH)

except ImportError:  # torch < 2.3

    def _math_attention() -> contextlib.AbstractContextManager:
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)


# "scheduler": the loop over `scheduler.timesteps`; the others: the adaptive solvers of `sde_diffusers.sampling`
# (probability-flow ODE, RK45 by default; reverse SDE of Jolicoeur-Martineau et al. 2021) on the same score.
SAMPLERS = ("scheduler", "adaptive_ode", "adaptive_sde")
# The default network data range (ours, Diffusers' DDPM family, Soft Diffusion); a pipeline reads its own from the
# scheduler (`SamplingPipelineBase.data_range`), e.g. [0, 1] for Diffusers' score-SDE VE repos. Outputs map it to
# [0, 1] (Diffusers' convention for image pipelines).
DATA_RANGE = (-1.0, 1.0)
# Diffusers' score-SDE schedulers have no `step` (their pipelines call `step_correct` / `step_pred`): the loop drives
# the equivalent scheduler of ours, built with its `from_config` (which keeps every setting and the data range).
_EQUIVALENT_SCHEDULERS = {
    "score_sde_ve": (VESDEScheduler, {}),
    # ScoreSdeVpScheduler's `step_pred` is an Euler-Maruyama step of the reverse SDE, without a corrector.
    "score_sde_vp": (VPSDEScheduler, {"predictor": "euler_maruyama", "corrector": "none"}),
}


@dataclass
class ScoreSdePipelineOutput(BaseOutput):
    """Output of the score-SDE pipelines.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` of shape `(batch, height, width, channels)` or `torch.Tensor`
            of shape `(batch, channels, height, width)`): the images, in ``[0, 1]`` for ``"np"`` and ``"pt"``.
        nfe (`int`): number of network evaluations (batched calls of the UNet) that produced them.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nfe: int = 0


# ---------------------------------------------------------------------------------------------------------
# The one sampling loop and the output conversion
# ---------------------------------------------------------------------------------------------------------
class SamplingPipelineBase(SDEDiffusionPipeline):
    r"""
    What every pipeline of this package shares: the one sampling loop, the checks of the loop's arguments and the
    conversion of its result to ``"pil"`` / ``"np"`` / ``"pt"`` outputs.

    Subclasses register a ``unet`` (called as ``unet(sample, timestep[, class_labels=...])``) and a ``scheduler``
    (``set_timesteps``, ``timesteps``, ``scale_model_input``, ``step(...).prev_sample``), validate their own inputs,
    build a :class:`~sde_diffusers.pipelines.conditioning.Conditioning` and call :meth:`_sample`.
    """

    _callback_tensor_inputs = ["latents"]

    # ---- facts about the components ------------------------------------------------------------------
    def _sample_shape_from_config(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(height), int(width)

    # ---- the scheduler and its conventions --------------------------------------------------------------
    @property
    def sampling_scheduler(self) -> Any:
        """The scheduler the sampling loop drives: ``self.scheduler``, or for one without ``step`` its equivalent.

        Diffusers' ``ScoreSdeVeScheduler`` (google/ncsnpp-* repos) has no ``step``: Diffusers' ScoreSdeVePipeline
        calls its ``step_correct`` and ``step_pred``. It is converted exactly, with ``VESDEScheduler.from_config``:
        the same SDE (``sigma_min``, ``sigma_max``, ``N``), time grid ``linspace(1, sampling_eps, n)``,
        reverse-diffusion predictor, Langevin corrector (``snr``, ``correct_steps``), score output and ``[0, 1]``
        data range (``ScoreSdeVpScheduler`` likewise to ``VPSDEScheduler`` with an Euler-Maruyama predictor). The
        steps are ours, so draws are not bit-identical to Diffusers' loop (which takes its predictor's noise levels
        from a separate grid indexed by ``floor(t (n - 1))``). The conversion is made once per scheduler object;
        ``self.scheduler`` is left as it is.

        Raises:
            ValueError: the scheduler has no ``step`` and no equivalent here.
        """
        scheduler = self.scheduler
        if callable(getattr(scheduler, "step", None)):
            return scheduler
        cached = getattr(self, "_equivalent_scheduler", None)
        if cached is not None and cached[0] is scheduler:
            return cached[1]
        family = scheduler_family(scheduler)
        if family not in _EQUIVALENT_SCHEDULERS:
            raise ValueError(
                f"`scheduler` ({type(scheduler).__name__}) has no `step` method; use one of our schedulers or a "
                "Diffusers scheduler with `step`."
            )
        cls, kwargs = _EQUIVALENT_SCHEDULERS[family]
        equivalent = cls.from_config(scheduler.config, **kwargs)
        self._equivalent_scheduler = (scheduler, equivalent)
        return equivalent

    def scheduler_sde(self, scheduler: Any = None) -> SchedulerSDE:
        """The forward SDE and the conventions (time input, prediction type, data range) of ``scheduler`` (the
        :attr:`sampling_scheduler` by default) and this pipeline's network."""
        return SchedulerSDE(self.sampling_scheduler if scheduler is None else scheduler, model=self.unet)

    @property
    def data_range(self) -> tuple[float, float]:
        """Range of the data the network works on, read from the scheduler's class and config (never from pixels):
        ``(-1, 1)`` for ours and Diffusers' DDPM family, ``(0, 1)`` for Diffusers' score-SDE VE repos."""
        return self.scheduler_sde().data_range

    # ---- checks ------------------------------------------------------------------------------------------
    def check_loop_inputs(
        self,
        num_inference_steps: object,
        output_type: object,
        callback_on_step_end: object,
        callback_on_step_end_tensor_inputs: object,
    ) -> None:
        """Validate the arguments of the sampling loop that every pipeline takes (before any work starts), and that
        the scheduler can drive the loop."""
        check_int("num_inference_steps", num_inference_steps)
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        self.sampling_scheduler  # noqa: B018 - raises for a scheduler without `step` or an equivalent of ours

    # ---- the one sampling loop -----------------------------------------------------------------------
    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        kwargs = {"class_labels": cond.class_labels} if cond.class_labels is not None else {}
        out = self.unet(x, timestep, **kwargs)
        return out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)

    def _conditional_score(
        self, x: torch.Tensor, t: torch.Tensor, timestep: torch.Tensor, view: SchedulerSDE, cond: Conditioning
    ) -> torch.Tensor:
        """The model's score at ``(x, t)`` (``timestep`` in the network's scale) plus the conditioning's terms."""
        terms = cond.score_terms or []
        needs_graph = any(term.needs_model_graph for term in terms)
        # CUDA's flash and memory-efficient attention kernels have no double backward; the math kernel has.
        second_order = any(term.needs_second_order for term in terms)
        attention = _math_attention() if second_order else contextlib.nullcontext()
        with torch.enable_grad() if needs_graph else torch.no_grad(), attention:
            x_in = x.detach().requires_grad_(needs_graph)
            score = view.to_score(self._network(x_in, timestep, cond), x_in, t)
            total = score.detach()
            for term in terms:
                total = total + term(x_in, t, score if term.needs_model_graph else score.detach(), view)
        return total.detach()

    def _model_output(
        self,
        scheduler: Any,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        view: SchedulerSDE | None,
        cond: Conditioning,
    ) -> torch.Tensor:
        """The network output at ``(sample, timestep)`` with the conditioning folded in."""
        model_input = scheduler.scale_model_input(sample, timestep)
        t = view.continuous(timestep, model_input.shape[0], model_input) if cond.score_terms else None
        # A continuous-time model under a DDPM-family grid reaches t = 0, where its training marginal has no noise:
        # the score is undefined there and nothing is left to condition, so the network output goes on unchanged.
        if t is not None and bool((view.marginal_coeffs(t)[1] > 0).all()):
            score = self._conditional_score(model_input, t, timestep, view, cond)
            out = view.from_score(score, model_input, t)
        else:
            with torch.no_grad():
                out = self._network(model_input, timestep, cond)
        return out if cond.after_model is None else cond.after_model(out)

    def _initial_latents(
        self, shape: tuple[int, ...], generator: Any, latents: torch.Tensor | None, scale: float, cond: Conditioning
    ) -> torch.Tensor:
        """The start: ``scale * latents`` if given, else ``cond.initial_sample``, else ``scale * N(0, I)``."""
        device, dtype = self._execution_device, self.unet.dtype
        if latents is not None:
            check_latents(latents, shape)
            return latents.to(device=device, dtype=dtype) * scale
        if cond.initial_sample is not None:
            return cond.initial_sample(shape, generator)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scale

    @staticmethod
    def _step_kwargs(scheduler: Any, generator: object) -> dict:
        accepted = set(inspect.signature(scheduler.step).parameters)
        return {"generator": generator} if "generator" in accepted else {}

    @torch.no_grad()
    def _sample(
        self,
        shape: tuple[int, ...],
        *,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        cond: Conditioning,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str = "scheduler",
        sampler_options: dict | None = None,
        scheduler: Any = None,
    ) -> tuple[torch.Tensor, int]:
        """Run the sampler from the start to data; return the final sample (network range) and the NFE.

        With ``sampler="scheduler"`` this is the package's only sampling loop (over ``scheduler.timesteps``;
        ``scheduler`` defaults to the pipeline's own); the adaptive solvers of :mod:`sde_diffusers.sampling` run
        their own step-size control on the same conditional score.
        """
        scheduler = self.sampling_scheduler if scheduler is None else scheduler
        needs_sde = bool(cond.score_terms) or cond.after_step is not None or sampler != "scheduler"
        view = self.scheduler_sde(scheduler) if needs_sde else None
        if view is not None and not view.available:
            view.sde  # noqa: B018 - raises the explanatory ValueError before any work
        if sampler != "scheduler":
            if cond.after_step is not None:
                raise ValueError(
                    f"sampler={sampler!r} cannot project known pixels after each step (method='replacement'); use "
                    "method='guidance' or a scheduler."
                )
            if callback_on_step_end is not None:
                raise ValueError(f"`callback_on_step_end` needs the scheduler loop; sampler={sampler!r} has no steps.")
            if cond.after_model is not None:
                raise ValueError(f"sampler={sampler!r} cannot modify the network output; use the scheduler loop.")
            return self._sample_adaptive(shape, generator, cond, latents, view, sampler, sampler_options or {})
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        timesteps = scheduler.timesteps
        # Our VE schedulers start from N(0, sigma_max^2), VP-type ones (and DDPM/DDIM) from N(0, 1).
        latents = self._initial_latents(shape, generator, latents, scheduler.init_noise_sigma, cond)
        step_kwargs = self._step_kwargs(scheduler, generator)
        self._num_timesteps = len(timesteps)
        nfe = 0
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_output = self._model_output(scheduler, latents, t, view, cond)
                nfe += 1
                latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
                if cond.after_step is not None:
                    latents = cond.after_step(latents, i, generator)
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    callback_kwargs = {k: local[k] for k in (callback_on_step_end_tensor_inputs or [])}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.get("latents", latents)
                progress.update()
        return latents, nfe

    def _sample_adaptive(
        self, shape, generator, cond: Conditioning, latents, view: SchedulerSDE, sampler: str, options: dict
    ) -> tuple[torch.Tensor, int]:
        from sde_diffusers.sampling.adaptive_sde import sample_adaptive_sde
        from sde_diffusers.sampling.ode import sample_probability_flow

        solve = {"adaptive_ode": sample_probability_flow, "adaptive_sde": sample_adaptive_sde}[sampler]
        # The prior of the SDE: N(0, sigma_max^2) for VE, N(0, 1) for VP and sub-VP.
        x = self._initial_latents(shape, generator, latents, view.prior_std, cond)

        def score_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._conditional_score(x_t, t, view.model_timestep(t), view, cond)

        options = {"denoise": True, **options}
        if sampler == "adaptive_sde":
            options.setdefault("generator", generator)
        out = solve(score_fn, view.sde, x, **options)
        return out.sample, int(out.nfe)

    # ---- output ----------------------------------------------------------------------------------------
    @staticmethod
    def to_unit_range(
        x: torch.Tensor, clamp: bool = True, data_range: tuple[float, float] = DATA_RANGE
    ) -> torch.Tensor:
        """The network's ``data_range`` (``[-1, 1]`` by default) to ``[0, 1]`` (clamped unless ``clamp=False``)."""
        lo, hi = data_range
        x = (x - lo) / (hi - lo)
        return x.clamp(0, 1) if clamp else x

    @staticmethod
    def from_unit_range(x: torch.Tensor, data_range: tuple[float, float] = DATA_RANGE) -> torch.Tensor:
        """``[0, 1]`` to the network's ``data_range`` (``[-1, 1]`` by default)."""
        lo, hi = data_range
        return x * (hi - lo) + lo

    def postprocess(self, images: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """``[0, 1]`` images ``(batch, channels, height, width)`` to ``"pil"``, ``"np"`` or ``"pt"``."""
        if output_type == "pt":
            return images.float().cpu()
        array = images.float().cpu().permute(0, 2, 3, 1).numpy()
        return self.numpy_to_pil(array) if output_type == "pil" else array

    def _finish(self, images_01: torch.Tensor, output_type: str, return_dict: bool, nfe: int):
        images = self.postprocess(images_01, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ScoreSdePipelineOutput(images=images, nfe=nfe)


# ---------------------------------------------------------------------------------------------------------
# The score-SDE base: components, class conditioning, the sampler choice
# ---------------------------------------------------------------------------------------------------------
class ScoreSdePipelineBase(SamplingPipelineBase):
    r"""
    Shared machinery of the score-SDE pipelines: the sampling loop (of [`SamplingPipelineBase`]), class conditioning
    and the choice between the scheduler loop and the adaptive solvers.

    Components:
        unet ([`NCSNppModel`], [`DDPMppModel`], [`~diffusers.UNet2DModel`] or any model called as
            ``unet(sample, timestep[, class_labels=...])``): the score network; its output is what
            ``scheduler.config.prediction_type`` says (``"score"`` for NCSN++, ``"epsilon"`` for DDPM++).
        scheduler: any of our SDE schedulers ([`VESDEScheduler`], [`VPSDEScheduler`], [`SubVPSDEScheduler`], the
            probability-flow scheduler) or, for VP models, a Diffusers DDPM-family scheduler (DDIM, DPM-Solver, ...).
        classifier ([`NoiseConditionalClassifier`], *optional*): a noise-conditional classifier for classifier
            guidance, conditioned on the same timescale as the score network of its SDE.
    """

    model_cpu_offload_seq = "classifier->unet"
    _optional_components = ["classifier"]

    def __init__(self, unet: torch.nn.Module, scheduler: Any, classifier: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)

    # ---- facts about the components ------------------------------------------------------------------
    @property
    def num_unet_classes(self) -> int | None:
        """Number of classes of a label-conditional UNet (``None`` for an unconditional one)."""
        n = getattr(self.unet.config, "num_class_embeds", None)
        return int(n) if n else None

    @property
    def num_classifier_classes(self) -> int | None:
        """Number of classes of the classifier (``None`` without one)."""
        if self.classifier is None:
            return None
        n = getattr(self.classifier.config, "num_classes", None)
        return int(n) if n else None

    # ---- checks shared by every score-SDE pipeline ---------------------------------------------------
    def check_class_inputs(
        self, class_labels: object, classifier_scale: object, batch_size: int | None
    ) -> torch.Tensor | None:
        """Validate ``class_labels`` against the UNet and classifier; return them as ``(n,)`` int64 or ``None``.

        Raises:
            ValueError / TypeError: labels for a model that cannot use them, missing labels for a label-conditional
                UNet, labels out of range, or a bad ``classifier_scale``.
        """
        check_number("classifier_scale", classifier_scale, 0.0)
        n_unet, n_clf = self.num_unet_classes, self.num_classifier_classes
        if class_labels is None:
            if n_unet is not None:
                raise ValueError(
                    f"the UNet is class-conditional (num_class_embeds={n_unet}); pass `class_labels` "
                    f"(integers in [0, {n_unet}))."
                )
            return None
        if n_unet is None and self.classifier is None:
            raise ValueError(
                "`class_labels` were given but the UNet is unconditional (no num_class_embeds) and the pipeline has "
                "no classifier; load a class-conditional UNet or pass `classifier=` to the pipeline."
            )
        labels = class_label_tensor(class_labels)
        limits = [n for n in (n_unet, n_clf) if n is not None]
        if n_unet is not None and n_clf is not None and n_unet != n_clf:
            raise ValueError(f"the UNet has {n_unet} classes but the classifier has {n_clf}; they must agree.")
        n_classes = limits[0] if limits else None
        if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
            bad = labels[(labels < 0) | (labels >= n_classes)].tolist()
            raise ValueError(f"`class_labels` must lie in [0, {n_classes}), got {bad}.")
        return labels

    @staticmethod
    def _expand_labels(labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        if labels is None:
            return None
        return (labels.expand(batch) if labels.numel() == 1 else labels).to(device)

    def check_common_inputs(
        self,
        num_inference_steps: object,
        output_type: object,
        callback_on_step_end: object,
        callback_on_step_end_tensor_inputs: object,
        sampler: object = "scheduler",
        sampler_options: object = None,
    ) -> None:
        """Validate the arguments every score-SDE pipeline takes."""
        self.check_loop_inputs(
            num_inference_steps, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        check_choice("sampler", sampler, SAMPLERS)
        if sampler_options is not None and not isinstance(sampler_options, dict):
            raise TypeError(f"`sampler_options` must be a dict, got {type(sampler_options).__name__}.")
        if sampler_options and sampler == "scheduler":
            raise ValueError(
                "`sampler_options` apply to the adaptive samplers; configure a scheduler with from_config."
            )

    # ---- likelihood ------------------------------------------------------------------------------------
    def log_likelihood(
        self,
        images: PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor,
        class_labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
        **kwargs,
    ) -> LikelihoodOutput:
        r"""
        Exact log-likelihood and bits per dimension of images under the probability-flow ODE of this pipeline's
        network and scheduler (:func:`~sde_diffusers.likelihood.log_likelihood`), in the network's own data range.

        Args:
            images (PIL image(s), `np.ndarray` or `torch.Tensor`): images in ``[0, 1]`` (uint8 is divided by 255)
                with the UNet's channels and size, like the pipelines' image inputs.
            class_labels (`int`, `list[int]`, `torch.Tensor` or `np.ndarray`, *optional*): classes of a
                label-conditional UNet, one per image or one for all (the classifier does not enter the likelihood).
            kwargs: options of :func:`~sde_diffusers.likelihood.log_likelihood` (`trace`, `num_probes`, `rtol`,
                `atol`, `eps`, `method`, `dequantize`, `num_dequant`, `num_levels`, `generator`, ...). The SDE, the
                network's time input and prediction type and the data range come from the pipeline.

        Returns:
            [`~sde_diffusers.likelihood.LikelihoodOutput`]: `log_likelihood` in nats of the images mapped to the
            network's data range (``D log 2`` lower for ``[-1, 1]`` than for ``[0, 1]``), and `bits_per_dim` with
            the dequantization offset of that range, so bits per dimension compare across ranges.
        """
        reserved = {"sde", "data_range", "scheduler_config", "prediction_type", "time_input", "model_kwargs"}
        if reserved & set(kwargs):
            raise TypeError(f"{sorted(reserved & set(kwargs))} are read from the pipeline; do not pass them.")
        x = images_to_tensor(images, "images")
        expected = self._sample_shape_from_config()
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"`images` must be {'x'.join(map(str, expected))} (channels x height x width, the UNet's), got "
                f"{'x'.join(map(str, x.shape[1:]))}."
            )
        if class_labels is not None and self.num_unet_classes is None:
            raise ValueError("`class_labels` need a label-conditional UNet; the classifier is not part of p(x).")
        labels = self.check_class_inputs(class_labels, 0.0, None) if self.num_unet_classes is not None else None
        n_labels = None if labels is None or labels.numel() == 1 else labels.numel()
        batch = resolve_batch_size(None, None, images=x.shape[0], class_labels=n_labels)
        view = self.scheduler_sde()
        device, dtype = self._execution_device, self.unet.dtype
        model_kwargs = {}
        if labels is not None:
            model_kwargs["class_labels"] = self._expand_labels(labels, batch, device)
        x = self.from_unit_range(x, data_range=view.data_range).to(device=device, dtype=dtype)
        score_fn = view.score_fn(self.unet, **model_kwargs)
        return log_likelihood(score_fn, view.sde, x, data_range=view.data_range, **kwargs)

    def _classifier_terms(self, labels: torch.Tensor | None, scale: float) -> list[ScoreTerm]:
        if labels is None or self.classifier is None or scale == 0:
            return []
        return [ClassifierGuidance(self.classifier, labels, scale)]


# ---------------------------------------------------------------------------------------------------------
# Unconditional and class-conditional generation
# ---------------------------------------------------------------------------------------------------------
class ScoreSdePipeline(ScoreSdePipelineBase):
    r"""
    Unconditional and class-conditional generation with a score model (Song et al., 2021).

    Class conditioning works both ways of the paper: a label-conditional UNet (``num_class_embeds``) receives
    ``class_labels``; an unconditional UNet with a ``classifier`` is guided by ``classifier_scale *
    grad_x log p_t(y | x)`` added to its score. Both together also work.

    Args:
        unet: the score network (see [`ScoreSdePipelineBase`]).
        scheduler: the sampler (our PC / probability-flow schedulers; DDIM or DPM-Solver for VP models).
        classifier ([`NoiseConditionalClassifier`], *optional*): for classifier guidance.

    Example:

    ```py
    >>> from sde_diffusers import ScoreSdePipeline
    >>> pipe = ScoreSdePipeline.from_pretrained("path/or/repo")
    >>> images = pipe(batch_size=4, num_inference_steps=500).images
    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
        classifier_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str = "scheduler",
        sampler_options: dict | None = None,
    ) -> ScoreSdePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            batch_size (`int`, *optional*): number of images; defaults to the number of `class_labels` or of
                generators in a list, else 1.
            num_inference_steps (`int`, defaults to 1000): noise levels of the scheduler's grid (a PC scheduler with
                a corrector makes ``n_corrector_steps + 1`` network calls per level).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): randomness; a list gives one
                generator per sample, so each sample is reproducible on its own (with a batch-independent
                scheduler: set ``langevin_per_sample=True`` when a Langevin corrector is on).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (`(batch, height, width, channels)` in
                ``[0, 1]``) or `"pt"` (`(batch, channels, height, width)` in ``[0, 1]``).
            return_dict (`bool`, defaults to `True`): return a [`ScoreSdePipelineOutput`] instead of a tuple.
            class_labels (`int`, `list[int]`, `torch.Tensor` or `np.ndarray`, *optional*): classes to generate, one
                per sample or one for all; needs a class-conditional UNet or a classifier.
            classifier_scale (`float`, defaults to 1.0): weight of the classifier gradient (1 is Bayes' rule).
            latents (`torch.Tensor`, *optional*): standard-normal prior noise of shape
                ``(batch, channels, height, width)`` (scaled by ``scheduler.init_noise_sigma`` here).
            callback_on_step_end (`Callable`, *optional*): ``callback(pipe, step, timestep, callback_kwargs)`` called
                after every scheduler step; it may return ``{"latents": ...}`` to replace the sample.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors to pass in ``callback_kwargs``
                (only ``"latents"``).
            sampler (`str`, defaults to `"scheduler"`): `"scheduler"` runs the loop over `scheduler.timesteps`;
                `"adaptive_ode"` (probability-flow ODE, RK45) and `"adaptive_sde"` (reverse SDE, "Gotta Go Fast")
                are the adaptive solvers of `sde_diffusers.sampling`, which choose their own steps on the
                scheduler's SDE (`num_inference_steps` and callbacks do not apply; `nfe` reports the cost).
            sampler_options (`dict`, *optional*): keyword arguments of the adaptive solver (`rtol`, `atol`, `eps`,
                `method`, `denoise`, ...).

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
        labels = self.check_class_inputs(class_labels, classifier_scale, batch_size)
        n_labels = None if labels is None or labels.numel() == 1 else labels.numel()
        n_latents = latents.shape[0] if isinstance(latents, torch.Tensor) and latents.dim() > 0 else None
        batch = resolve_batch_size(batch_size, generator, class_labels=n_labels, latents=n_latents)
        device = self._execution_device
        labels = self._expand_labels(labels, batch, device)
        cond = Conditioning(
            class_labels=labels if self.num_unet_classes is not None else None,
            score_terms=self._classifier_terms(labels, float(classifier_scale)),
        )
        x, nfe = self._sample(
            (batch, *self._sample_shape_from_config()),
            num_inference_steps=num_inference_steps,
            generator=generator,
            cond=cond,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            sampler=sampler,
            sampler_options=sampler_options,
        )
        return self._finish(self.to_unit_range(x, data_range=self.data_range), output_type, return_dict, nfe)
