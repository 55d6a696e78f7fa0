"""Score-SDE pipelines: one sampling loop, conditioning added on top of it.

Every pipeline of this package runs :meth:`ScoreSdePipelineBase._sample`, the single sampling loop: draw the prior,
then for each entry of ``scheduler.timesteps`` call the network, let the conditioning modify the model output (as a
score), call ``scheduler.step``, and let the conditioning modify the new sample (projection of known pixels). The
pipelines differ only in the conditioning they hand to that loop:

* :class:`ScoreSdePipeline`: unconditional, or class-conditional either through a label-conditional network
  (``class_labels`` go to the UNet) or, as in Song et al. (2021, section 5), through a noise-conditional
  classifier whose gradient ``grad_x log p_t(y | x)`` is added to the score with ``classifier_scale``;
* :class:`~sde_diffusers.pipelines.ScoreSdeInpaintPipeline` and
  :class:`~sde_diffusers.pipelines.ScoreSdeColorizationPipeline`: linear inverse problems (see
  ``pipeline_score_sde_inverse.py``).

Conditioning on the score works with every scheduler: the network output is turned into a score with
:func:`~sde_diffusers.parameterization.model_output_to_score`, the extra term is added, and the sum is turned back
into the scheduler's own parameterisation with :func:`~sde_diffusers.parameterization.score_to_model_output`. The
forward process comes from ``scheduler.sde`` (our schedulers); for Diffusers' DDPM-family schedulers (DDIM,
DPM-Solver, ...) it is the continuous VP SDE of their beta schedule, so those swap in for VP models.

Images are in ``[-1, 1]`` for the network, as in every Diffusers image pipeline; ``"np"``/``"pt"`` outputs (and
inputs) are in ``[0, 1]``.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from sde_diffusers.parameterization import (
    check_prediction_type,
    model_output_to_score,
    model_time,
    score_to_model_output,
)
from sde_diffusers.schedulers.scheduling_sde_common import vp_sde_from_config
from sde_diffusers.sde import SDE, VESDE, VPSDE

from .pipeline_utils import SDEDiffusionPipeline

__all__ = [
    "ScoreSdePipelineOutput",
    "ScoreSdePipelineBase",
    "ScoreSdePipeline",
    "SchedulerSDE",
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


OUTPUT_TYPES = ("pil", "np", "pt")
# "scheduler": the loop over `scheduler.timesteps`; the others: the adaptive solvers of `sde_diffusers.sampling`
# (probability-flow ODE, RK45 by default; reverse SDE of Jolicoeur-Martineau et al. 2021) on the same score.
SAMPLERS = ("scheduler", "adaptive_ode", "adaptive_sde")
# The network's data range; outputs map it to [0, 1] (Diffusers' convention for image pipelines).
DATA_RANGE = (-1.0, 1.0)


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
# The forward process behind a scheduler
# ---------------------------------------------------------------------------------------------------------
class SchedulerSDE:
    """The forward SDE, time scale and model parameterisation behind a scheduler.

    Our schedulers carry their SDE (``scheduler.sde``) and map their timesteps to continuous time
    (``scheduler.continuous_timesteps``). For Diffusers' DDPM-family schedulers (linear betas), the SDE is the
    continuous VP SDE with ``beta_min = N beta_start``, ``beta_max = N beta_end``, and the timestep ``k`` is
    ``t = (k + 1) / N``, where that SDE's marginal matches DDPM's ``alpha_bar_k``.

    Args:
        scheduler: the pipeline's scheduler.

    Raises:
        ValueError: ``scheduler`` has neither an SDE nor a linear DDPM beta schedule (only when the SDE is asked for).
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._sde: SDE | None = (
            getattr(scheduler, "sde", None) if isinstance(getattr(scheduler, "sde", None), SDE) else None
        )
        self._error: str | None = None
        config = getattr(scheduler, "config", {})
        if self._sde is None:
            try:
                self._sde = vp_sde_from_config(
                    VPSDE,
                    config.get("num_train_timesteps", 1000),
                    config.get("beta_start", 0.0001),
                    config.get("beta_end", 0.02),
                    config.get("beta_schedule", "linear"),
                )
                if config.get("trained_betas") is not None:
                    raise ValueError("trained_betas have no continuous SDE")
            except (ValueError, TypeError) as err:
                self._sde = None
                self._error = (
                    f"{type(scheduler).__name__} has no SDE this conditioning can use ({err}); use one of our "
                    "schedulers or a DDPM-family scheduler with a linear beta schedule"
                )
        self.prediction_type = check_prediction_type(config.get("prediction_type", "epsilon"))

    @property
    def available(self) -> bool:
        """Whether the scheduler has a forward SDE."""
        return self._sde is not None

    @property
    def sde(self) -> SDE:
        """The forward SDE (raises ``ValueError`` if the scheduler has none)."""
        if self._sde is None:
            raise ValueError(self._error)
        return self._sde

    def continuous(self, timestep: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Continuous time ``t`` of shape ``(batch,)`` (dtype and device of ``like``) for a scheduler timestep."""
        to_t = getattr(self.scheduler, "continuous_timesteps", None)
        if callable(to_t):
            t = to_t(timestep)
        else:
            # DDPM's timestep k has alpha_bar_k = prod_{j <= k} (1 - beta_j) = exp(-int_0^{(k + 1) / N} beta) to
            # first order: the VP marginal at t = (k + 1) / N (never t = 0, where the std vanishes).
            n = self.sde.N
            t = (torch.as_tensor(timestep).to(torch.float64) + 1) / n
        return t.to(device=like.device, dtype=like.dtype).reshape(-1).expand(batch)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The network's timestep for continuous ``t`` (inverse of :meth:`continuous`), shape of ``t``."""
        to_model = getattr(self.scheduler, "model_timesteps", None)
        if callable(to_model):
            return to_model(t).to(t.dtype)
        return t * self.sde.N - 1

    def to_score(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output at ``(x, t)`` to ``grad_x log p_t(x)``."""
        return model_output_to_score(self.sde, model_output, x, t, self.prediction_type)

    def from_score(self, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A score at ``(x, t)`` in the scheduler's parameterisation."""
        return score_to_model_output(self.sde, score, x, t, self.prediction_type)


# ---------------------------------------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------------------------------------
class ScoreTerm(abc.ABC):
    """A term added to the score during sampling: ``score + term(x, t, score, sde)``.

    Subclasses implement :meth:`__call__`. With ``needs_model_graph = True`` the network runs with gradients
    enabled and ``score`` keeps its graph to ``x`` (for terms that differentiate through the network, such as the
    likelihood of an observation given Tweedie's denoised estimate); otherwise ``score`` is detached.
    """

    needs_model_graph: bool = False
    #: Whether the term differentiates the network twice (double backward); see ``_conditional_score``.
    needs_second_order: bool = False

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, sde: SDE) -> torch.Tensor:
        """The term at ``(x, t)`` given the model's ``score`` there (shape of ``x``)."""


class ClassifierGuidance(ScoreTerm):
    """``scale * grad_x log p_t(y | x)`` from a noise-conditional classifier (Song et al., 2021, eq. 12 onward).

    Args:
        classifier: a model ``classifier(x, timestep)`` returning logits (``.logits``, a tuple, or a tensor) with an
            optional ``time_input`` attribute (``"sigma"``, ``"index"`` or ``"t"``; ``"auto"`` if absent).
        labels (`torch.Tensor`): target classes, shape ``(batch,)``.
        scale (`float`): guidance scale (1 is Bayes' rule; larger sharpens the class).
    """

    def __init__(self, classifier: torch.nn.Module, labels: torch.Tensor, scale: float) -> None:
        self.classifier, self.labels, self.scale = classifier, labels, scale

    def __call__(self, x, t, score, sde):
        timestep = model_time(sde, t, getattr(self.classifier, "time_input", "auto"))
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = self.classifier(x_in, timestep.to(x.dtype))
            logits = getattr(out, "logits", out[0] if isinstance(out, (tuple, list)) else out)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs.gather(1, self.labels.long()[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x_in)
        return self.scale * grad.to(x.dtype)


@dataclass
class Conditioning:
    """What a pipeline hands to the sampling loop.

    Args:
        class_labels (`torch.Tensor`, *optional*): labels for a label-conditional UNet, shape ``(batch,)``.
        score_terms (`list[ScoreTerm]`): added to the model's score at every evaluation.
        after_step (`Callable`, *optional*): ``after_step(sample, index, generator) -> sample`` applied to every
            new sample (``index`` is the position in ``scheduler.timesteps`` of the step just taken).
    """

    class_labels: torch.Tensor | None = None
    score_terms: list[ScoreTerm] | None = None
    after_step: Callable[[torch.Tensor, int, Any], torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_number(name: str, value: object, minimum: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not np.isfinite(value)
    ):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")
    return float(value)


def check_output_type(output_type: object) -> str:
    """Return ``output_type`` if it is one of :data:`OUTPUT_TYPES`, else raise ``ValueError``."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    return output_type  # type: ignore[return-value]


def _generator_count(generator: object) -> int | None:
    """Length of a generator list (``None`` for a single generator or none); raises on anything else."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if isinstance(generator, list) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return len(generator)
    raise TypeError(
        f"`generator` must be a torch.Generator or a non-empty list of them, got {type(generator).__name__}."
    )


def resolve_batch_size(batch_size: object, generator: object, **counts: int | None) -> int:
    """The batch size: ``batch_size`` if given, else the length shared by the per-sample inputs, else 1.

    Args:
        batch_size: the user's ``batch_size`` (``None`` = infer).
        generator: a generator or a list of them (a list must have one per sample).
        **counts: number of items of other per-sample inputs (``None`` when the input is absent or broadcast).

    Raises:
        ValueError: the counts disagree with each other or with ``batch_size``.
    """
    named = {name: n for name, n in counts.items() if n is not None}
    n_gen = _generator_count(generator)
    if n_gen is not None:
        named["generator"] = n_gen
    if batch_size is not None:
        batch = _check_int("batch_size", batch_size)
    elif named:
        batch = next(iter(named.values()))
    else:
        batch = 1
    for name, n in named.items():
        if n != batch:
            described = ", ".join(f"{k}: {v}" for k, v in named.items())
            source = f"batch_size={batch}" if batch_size is not None else "the other per-sample inputs"
            raise ValueError(
                f"`{name}` has {n} entries but {source} asks for {batch} samples ({described}); pass one per sample."
            )
    return batch


def _label_tensor(class_labels: object) -> torch.Tensor:
    """Labels (an int, a sequence of ints, or an integer array/tensor) as a 1-D int64 tensor."""
    if isinstance(class_labels, bool):
        raise TypeError("`class_labels` must be integers, got a bool.")
    if isinstance(class_labels, (int, np.integer)):
        return torch.tensor([int(class_labels)])
    if isinstance(class_labels, torch.Tensor):
        labels = class_labels.detach().cpu()
    elif isinstance(class_labels, np.ndarray):
        labels = torch.from_numpy(class_labels)
    elif isinstance(class_labels, Sequence) and not isinstance(class_labels, str):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in class_labels):
            raise TypeError(f"`class_labels` must contain integers only, got {list(class_labels)!r}.")
        labels = torch.tensor([int(v) for v in class_labels], dtype=torch.long)
    else:
        raise TypeError(
            "`class_labels` must be an int, a list of ints or an integer tensor/array, "
            f"got {type(class_labels).__name__}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`class_labels` must be integers, got dtype {labels.dtype}.")
    if labels.dim() > 1:
        raise ValueError(f"`class_labels` must be a scalar or 1-D, got shape {tuple(labels.shape)}.")
    labels = labels.reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("`class_labels` is empty.")
    return labels


# ---------------------------------------------------------------------------------------------------------
# The shared base: components, checks, the sampling loop, output conversion
# ---------------------------------------------------------------------------------------------------------
class ScoreSdePipelineBase(SDEDiffusionPipeline):
    r"""
    Shared machinery of the score-SDE pipelines: the sampling loop, class conditioning and output conversion.

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
    _callback_tensor_inputs = ["latents"]

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

    def _sample_shape_from_config(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(height), int(width)

    # ---- checks shared by every pipeline -------------------------------------------------------------
    def check_class_inputs(
        self, class_labels: object, classifier_scale: object, batch_size: int | None
    ) -> torch.Tensor | None:
        """Validate ``class_labels`` against the UNet and classifier; return them as ``(n,)`` int64 or ``None``.

        Raises:
            ValueError / TypeError: labels for a model that cannot use them, missing labels for a label-conditional
                UNet, labels out of range, or a bad ``classifier_scale``.
        """
        _check_number("classifier_scale", classifier_scale, 0.0)
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
        labels = _label_tensor(class_labels)
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
        """Validate the arguments every pipeline takes."""
        _check_int("num_inference_steps", num_inference_steps)
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {sampler!r}.")
        if sampler_options is not None and not isinstance(sampler_options, dict):
            raise TypeError(f"`sampler_options` must be a dict, got {type(sampler_options).__name__}.")
        if sampler_options and sampler == "scheduler":
            raise ValueError(
                "`sampler_options` apply to the adaptive samplers; configure a scheduler with from_config."
            )
        check_output_type(output_type)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}.")
        inputs = callback_on_step_end_tensor_inputs or []
        bad = [k for k in inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only contain {self._callback_tensor_inputs}, got {bad}."
            )

    def _classifier_terms(self, labels: torch.Tensor | None, scale: float) -> list[ScoreTerm]:
        if labels is None or self.classifier is None or scale == 0:
            return []
        return [ClassifierGuidance(self.classifier, labels, scale)]

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
                total = total + term(x_in, t, score if term.needs_model_graph else score.detach(), view.sde)
        return total.detach()

    def _model_output(
        self, sample: torch.Tensor, timestep: torch.Tensor, view: SchedulerSDE, cond: Conditioning
    ) -> torch.Tensor:
        """The network output at ``(sample, timestep)`` with the conditioning's score terms folded in."""
        model_input = self.scheduler.scale_model_input(sample, timestep)
        if not cond.score_terms:
            with torch.no_grad():
                return self._network(model_input, timestep, cond)
        t = view.continuous(timestep, model_input.shape[0], model_input)
        score = self._conditional_score(model_input, t, timestep, view, cond)
        return view.from_score(score, model_input, t)

    def _step_kwargs(self, generator: object) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {"generator": generator} if "generator" in accepted else {}

    def _prior(
        self, shape: tuple[int, ...], generator: Any, latents: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        device, dtype = self._execution_device, self.unet.dtype
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(shape):
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor of shape {tuple(shape)}, got {got}.")
            latents = latents.to(device=device, dtype=dtype)
        return latents * scale

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
    ) -> tuple[torch.Tensor, int]:
        """Run the sampler from the prior to data; return the final sample (network range) and the NFE.

        With ``sampler="scheduler"`` this is the package's only sampling loop (over ``scheduler.timesteps``);
        the adaptive solvers of :mod:`sde_diffusers.sampling` run their own step-size control on the same
        conditional score.
        """
        view = SchedulerSDE(self.scheduler)
        if (cond.score_terms or cond.after_step is not None or sampler != "scheduler") and not view.available:
            view.sde  # noqa: B018 - raises the explanatory ValueError before any work
        if sampler != "scheduler":
            if cond.after_step is not None:
                raise ValueError(
                    f"sampler={sampler!r} cannot project known pixels after each step (method='replacement'); use "
                    "method='guidance' or a scheduler."
                )
            if callback_on_step_end is not None:
                raise ValueError(f"`callback_on_step_end` needs the scheduler loop; sampler={sampler!r} has no steps.")
            return self._sample_adaptive(shape, generator, cond, latents, view, sampler, sampler_options or {})
        device = self._execution_device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # Our VE schedulers start from N(0, sigma_max^2), VP-type ones (and DDPM/DDIM) from N(0, 1).
        latents = self._prior(shape, generator, latents, self.scheduler.init_noise_sigma)
        step_kwargs = self._step_kwargs(generator)
        self._num_timesteps = len(timesteps)
        nfe = 0
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_output = self._model_output(latents, t, view, cond)
                nfe += 1
                latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
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
        prior_std = view.sde.sigma_max if isinstance(view.sde, VESDE) else 1.0
        x = self._prior(shape, generator, latents, prior_std)

        def score_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._conditional_score(x_t, t, view.model_timestep(t), view, cond)

        options = {"denoise": True, **options}
        if sampler == "adaptive_sde":
            options.setdefault("generator", generator)
        out = solve(score_fn, view.sde, x, **options)
        return out.sample, int(out.nfe)

    # ---- output ----------------------------------------------------------------------------------------
    @staticmethod
    def to_unit_range(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Network range ``[-1, 1]`` to ``[0, 1]`` (clamped unless ``clamp=False``)."""
        lo, hi = DATA_RANGE
        x = (x - lo) / (hi - lo)
        return x.clamp(0, 1) if clamp else x

    @staticmethod
    def from_unit_range(x: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` to the network range ``[-1, 1]``."""
        lo, hi = DATA_RANGE
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
        return self._finish(self.to_unit_range(x), output_type, return_dict, nfe)
