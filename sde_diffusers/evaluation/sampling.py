"""Samplers by name, for evaluation: draw ``N`` images from a score pipeline with a given budget of model calls.

Each entry of :data:`SAMPLERS` only *configures* the library; no sampling maths lives here:

* ``pc``, ``pc_ancestral``, ``reverse_diffusion``, ``euler_maruyama``, ``ancestral``, ``corrector_only``: our
  predictor–corrector schedulers (:class:`~sde_diffusers.VESDEScheduler`, :class:`~sde_diffusers.VPSDEScheduler`,
  :class:`~sde_diffusers.SubVPSDEScheduler`) rebuilt with ``from_config`` from the pipeline's own scheduler, with
  the predictor/corrector swapped, and run by :class:`~sde_diffusers.ScoreSdePipeline`.
* ``ddim``, ``dpm_solver``: Diffusers' ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` built with
  ``from_config`` from the VP model's scheduler config (DDPM names and betas) and run by the same pipeline.
* ``ode_euler``, ``ode_heun``: fixed-step probability-flow ODE in the sigma variable on Karras et al.'s (2022)
  noise levels (``rho = 7``), ending with Tweedie's denoiser
  (:func:`~sde_diffusers.sampling.ode.sample_probability_flow_fixed`).
* ``ode_adaptive``: the probability-flow ODE with adaptive Dormand–Prince steps
  (:func:`~sde_diffusers.sampling.ode.sample_probability_flow`), cost set by a tolerance.
* ``adaptive_sde``: the adaptive reverse-SDE solver of Jolicoeur-Martineau et al. (2021)
  (:func:`~sde_diffusers.sampling.adaptive_sde.sample_adaptive_sde`), cost set by a tolerance.

Fixed-step samplers take an NFE budget (number of network evaluations per image) and use the largest number of
steps that fits it (a PC step with one corrector step costs two evaluations; a Heun step two, the final
denoising step one). Adaptive samplers take a tolerance instead and report the NFE they needed.

Typical use::

    from sde_diffusers.evaluation.sampling import draw_samples

    out = draw_samples(pipe, "ode_heun", num_samples=500, nfe=50, seed=0)
    out.images  # (500, C, H, W) in [0, 1], on the CPU
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils import BaseOutput

from ..scheduler_sde import SchedulerSDE
from ..sde import SDE, VESDE, VPSDE, SubVPSDE

__all__ = [
    "SDE_TYPES",
    "SAMPLERS",
    "SamplerInfo",
    "SamplingOutput",
    "SamplingPlan",
    "plan_sampling",
    "available_samplers",
    "draw_samples",
    "get_sampler",
    "pipeline_sde",
    "sde_type",
]

SDE_TYPES = ("ve", "vp", "subvp")
_ALL = SDE_TYPES


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler is and how its cost is set.

    Args:
        name (`str`): the registry key.
        description (`str`): one line for tables and ``--help``.
        family (`str`): ``"pc"`` (our PC schedulers in the pipeline), ``"diffusers"`` (a Diffusers scheduler
            swapped in), ``"ode"`` (fixed-step probability flow) or ``"adaptive"`` (tolerance-controlled).
        sde_types (`tuple[str, ...]`): the SDEs it is valid for.
        nfe_per_step (`int`): network evaluations per grid step (fixed-step samplers).
        nfe_offset (`int`): evaluations beyond ``nfe_per_step * steps`` (``-1`` for Heun, whose last step is a
            single Euler denoising step).
        default_nfe (`int`, *optional*): NFE used when none is given (fixed-step samplers).
        default_tolerance (`float`, *optional*): tolerance used when none is given (adaptive samplers).
        options (`dict`): the settings handed to the library (predictor/corrector, solver, ...).
    """

    name: str
    description: str
    family: str
    sde_types: tuple[str, ...] = _ALL
    nfe_per_step: int = 1
    nfe_offset: int = 0
    default_nfe: int | None = None
    default_tolerance: float | None = None
    options: dict = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        """Whether a tolerance (not an NFE budget) sets the cost."""
        return self.family == "adaptive"

    @property
    def min_nfe(self) -> int:
        """The smallest NFE budget that gives one step."""
        return self.nfe_per_step + self.nfe_offset

    def steps_for_nfe(self, nfe: int) -> int:
        """Largest number of steps whose cost does not exceed ``nfe`` (fixed-step samplers only).

        Raises:
            ValueError: the sampler is adaptive, or ``nfe`` is below :attr:`min_nfe`.
        """
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive: pass a tolerance, not an NFE budget")
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < self.min_nfe:
            raise ValueError(f"nfe for sampler {self.name!r} must be an integer >= {self.min_nfe}, got {nfe!r}")
        return (nfe - self.nfe_offset) // self.nfe_per_step

    def nfe_for_steps(self, steps: int) -> int:
        """Network evaluations per image of ``steps`` steps."""
        return self.nfe_per_step * steps + self.nfe_offset


def _pc(name: str, description: str, predictor: str, corrector: str, nfe_per_step: int = 1) -> SamplerInfo:
    return SamplerInfo(
        name,
        description,
        "pc",
        nfe_per_step=nfe_per_step,
        default_nfe=1000 * nfe_per_step,
        options={"predictor": predictor, "corrector": corrector, "n_corrector_steps": 1},
    )


#: Every sampler by name.
SAMPLERS: dict[str, SamplerInfo] = {
    s.name: s
    for s in [
        _pc(
            "pc",
            "PC: reverse-diffusion predictor + 1 Langevin corrector step (snr from the scheduler config)",
            "reverse_diffusion",
            "langevin",
            nfe_per_step=2,
        ),
        _pc(
            "pc_ancestral",
            "PC: ancestral predictor + 1 Langevin corrector step",
            "ancestral",
            "langevin",
            nfe_per_step=2,
        ),
        _pc(
            "reverse_diffusion",
            "predictor only: reverse diffusion (PC without corrector)",
            "reverse_diffusion",
            "none",
        ),
        _pc("euler_maruyama", "predictor only: Euler-Maruyama on the reverse SDE", "euler_maruyama", "none"),
        _pc("ancestral", "predictor only: ancestral sampling (SMLD / DDPM chains)", "ancestral", "none"),
        _pc(
            "corrector_only",
            "corrector only: Langevin MCMC at each noise level (the paper's C2000)",
            "none",
            "langevin",
        ),
        SamplerInfo(
            "ddim",
            "Diffusers DDIMScheduler (eta=0) swapped in via from_config",
            "diffusers",
            ("vp",),
            default_nfe=50,
            options={"scheduler": "DDIMScheduler"},
        ),
        SamplerInfo(
            "dpm_solver",
            "Diffusers DPMSolverMultistepScheduler (2nd order, dpmsolver++) via from_config",
            "diffusers",
            ("vp",),
            default_nfe=20,
            options={"scheduler": "DPMSolverMultistepScheduler"},
        ),
        SamplerInfo(
            "ode_euler",
            "probability-flow ODE, Euler steps in sigma (DDIM / EDM Euler), Karras spacing, Tweedie end",
            "ode",
            default_nfe=100,
            options={"solver": "euler", "spacing": "karras", "eps": 1e-3},
        ),
        SamplerInfo(
            "ode_heun",
            "probability-flow ODE, Heun steps in sigma (EDM), Karras spacing, Tweedie end",
            "ode",
            nfe_per_step=2,
            nfe_offset=-1,
            default_nfe=49,
            options={"solver": "heun", "spacing": "karras", "eps": 1e-3},
        ),
        SamplerInfo(
            "ode_adaptive",
            "probability-flow ODE, adaptive Dormand-Prince RK45 (rtol = atol = tolerance)",
            "adaptive",
            default_tolerance=1e-3,
            options={"method": "dopri5", "eps": 1e-3, "denoise": True},
        ),
        SamplerInfo(
            "adaptive_sde",
            "adaptive reverse-SDE solver 'Gotta Go Fast' (rtol = tolerance, atol 0.0078)",
            "adaptive",
            default_tolerance=1e-2,
            options={"atol": 0.0078, "eps": 1e-3, "denoise": True},
        ),
    ]
}


def get_sampler(name: str) -> SamplerInfo:
    """The :class:`SamplerInfo` of ``name`` (``ValueError`` listing the choices for an unknown name)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# ---------------------------------------------------------------------------------------------------------
# The model behind a pipeline
# ---------------------------------------------------------------------------------------------------------
def pipeline_sde(pipe: Any) -> SDE:
    """The forward SDE of a pipeline's scheduler (ours, or a DDPM-family one read as the VP SDE)."""
    return SchedulerSDE(pipe.scheduler).sde


def sde_type(sde: SDE) -> str:
    """``"ve"``, ``"vp"`` or ``"subvp"`` for an SDE object."""
    if isinstance(sde, SubVPSDE):
        return "subvp"
    if isinstance(sde, VPSDE):
        return "vp"
    if isinstance(sde, VESDE):
        return "ve"
    raise TypeError(f"sde must be a VESDE, VPSDE or SubVPSDE, got {type(sde).__name__}")


def available_samplers(pipe: Any) -> list[str]:
    """Names of the samplers valid for the pipeline's SDE."""
    kind = sde_type(pipeline_sde(pipe))
    return [name for name, info in SAMPLERS.items() if kind in info.sde_types]


# ---------------------------------------------------------------------------------------------------------
# Drawing samples
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SamplingOutput(BaseOutput):
    """Result of :func:`draw_samples`.

    Args:
        images (`torch.Tensor` of shape `(num_samples, channels, height, width)`): float32 CPU images in ``[0, 1]``.
        nfe (`float`): network evaluations per image: the batched model calls of its batch, averaged over images
            (adaptive solvers evaluate a batch until its slowest sample finishes).
        nfe_per_sample (`float`): mean evaluations each image needed on its own (differs from ``nfe`` only for
            adaptive samplers).
        model_calls (`int`): batched network calls counted on the model itself (all batches).
        nfe_per_batch (`list[int]`): batched network calls reported by the sampler for each batch.
        steps (`int`, *optional*): grid steps of a fixed-step sampler.
        seconds (`float`): wall time of the sampling.
        settings (`dict`): the sampler, its options and the budget, for reports.
    """

    images: torch.Tensor
    nfe: float
    nfe_per_sample: float
    model_calls: int
    nfe_per_batch: list = field(default_factory=list)
    steps: int | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _scheduler_for(info: SamplerInfo, pipe: Any, kind: str) -> Any:
    """The scheduler a pipeline-run sampler swaps in, built with ``from_config`` from the pipeline's own."""
    import diffusers

    from ..schedulers import SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler

    config = pipe.scheduler.config
    if info.family == "diffusers":
        # Only the model's noise schedule and parameterisation carry over; the Diffusers scheduler keeps its own
        # defaults for everything else (and does not warn about our PC keys).
        keys = (
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "prediction_type",
        )
        return getattr(diffusers, info.options["scheduler"]).from_config({k: config[k] for k in keys if k in config})
    cls = {"ve": VESDEScheduler, "vp": VPSDEScheduler, "subvp": SubVPSDEScheduler}[kind]
    return cls.from_config(config, **info.options)


def _class_labels(pipe: Any, start: int, count: int, device: torch.device) -> torch.Tensor | None:
    """Balanced labels ``i mod num_classes`` for a label-conditional UNet (``None`` otherwise)."""
    n = getattr(pipe.unet.config, "num_class_embeds", None)
    if not n:
        return None
    return (torch.arange(start, start + count, device=device) % int(n)).long()


def _sample_shape(pipe: Any, batch: int) -> tuple[int, ...]:
    size = pipe.unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return batch, int(pipe.unet.config.in_channels), int(height), int(width)


@dataclass
class SamplingPlan:
    """A checked sampling request (see :func:`plan_sampling`).

    Args:
        sampler (`str`): the sampler's name.
        sde_type (`str`): the model's SDE (``"ve"``, ``"vp"`` or ``"subvp"``).
        steps (`int`, *optional*): grid steps (fixed-step samplers).
        tolerance (`float`, *optional*): tolerance (adaptive samplers).
        nfe (`int`, *optional*): evaluations per image that the steps cost (``None`` for adaptive samplers,
            whose cost is known only afterwards).
    """

    sampler: str
    sde_type: str
    steps: int | None = None
    tolerance: float | None = None
    nfe: int | None = None


def plan_sampling(pipe: Any, sampler: str, *, nfe: int | None = None, tolerance: float | None = None) -> SamplingPlan:
    """Check a sampler request against the pipeline's model without running anything.

    Args:
        pipe: the pipeline (its scheduler fixes the SDE).
        sampler (`str`): a key of :data:`SAMPLERS`.
        nfe (`int`, *optional*): NFE budget of a fixed-step sampler (default: the sampler's).
        tolerance (`float`, *optional*): tolerance of an adaptive sampler (default: the sampler's).

    Returns:
        :class:`SamplingPlan`.

    Raises:
        ValueError: unknown sampler, a sampler that does not apply to the model's SDE, a budget of the wrong kind
            (``nfe`` for an adaptive sampler, ``tolerance`` for a fixed-step one) or out of range.
    """
    info = get_sampler(sampler)
    kind = sde_type(pipeline_sde(pipe))
    if kind not in info.sde_types:
        valid = [n for n, i in SAMPLERS.items() if kind in i.sde_types]
        raise ValueError(
            f"sampler {sampler!r} applies to {'/'.join(info.sde_types)} models, but this model's SDE is {kind}; "
            f"choose one of {', '.join(valid)}"
        )
    if info.adaptive:
        if nfe is not None:
            raise ValueError(f"sampler {sampler!r} is adaptive: set its cost with tolerance, not nfe")
        tolerance = info.default_tolerance if tolerance is None else tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
        return SamplingPlan(sampler, kind, tolerance=float(tolerance))
    if tolerance is not None:
        raise ValueError(f"sampler {sampler!r} has a fixed step count: set its cost with nfe, not tolerance")
    steps = info.steps_for_nfe(info.default_nfe if nfe is None else nfe)
    return SamplingPlan(sampler, kind, steps=steps, nfe=info.nfe_for_steps(steps))


def draw_samples(
    pipe: Any,
    sampler: str,
    num_samples: int,
    *,
    nfe: int | None = None,
    tolerance: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    on_model_call: Callable[[], None] | None = None,
) -> SamplingOutput:
    """Draw ``num_samples`` images with a named sampler.

    Batch ``b`` (of ``batch_size`` images) uses a ``torch.Generator`` seeded with ``seed + b`` on the model's
    device, for the prior draw and every noise draw, so results are reproducible given ``seed`` and
    ``batch_size``. All samplers draw the same prior noise for the same seed (the pipeline and the SDE draw it the
    same way), so they are compared on common random numbers. A label-conditional UNet gets balanced labels.

    Args:
        pipe ([`ScoreSdePipeline`]): the model and its scheduler (the scheduler fixes the SDE and the
            parameterisation).
        sampler (`str`): a key of :data:`SAMPLERS`.
        num_samples (`int`): images to draw.
        nfe (`int`, *optional*): NFE budget per image for fixed-step samplers (default: the sampler's).
        tolerance (`float`, *optional*): tolerance of adaptive samplers (default: the sampler's).
        batch_size (`int`, *optional*): images per batch (default: all at once).
        seed (`int`, defaults to 0): base seed.
        on_model_call (`Callable`, *optional*): called after every batched network call (for progress bars).

    Returns:
        :class:`SamplingOutput`.

    Raises:
        ValueError: unknown sampler, a sampler that does not apply to the model's SDE, a budget of the wrong kind,
            or bad sizes; all before any network call.
    """
    num_samples = _check_positive_int("num_samples", num_samples)
    batch_size = num_samples if batch_size is None else _check_positive_int("batch_size", batch_size)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    plan = plan_sampling(pipe, sampler, nfe=nfe, tolerance=tolerance)
    info, steps, tolerance = get_sampler(sampler), plan.steps, plan.tolerance
    sde = pipeline_sde(pipe)
    kind = plan.sde_type
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    run = _build_runner(info, pipe, sde, kind, steps, tolerance)

    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1
        if on_model_call is not None:
            on_model_call()

    handle = pipe.unet.register_forward_hook(hook)
    was_training = pipe.unet.training
    pipe.unet.eval()
    images, nfes, per_sample = [], [], []
    start = time.perf_counter()
    try:
        for b, first in enumerate(range(0, num_samples, batch_size)):
            count = min(batch_size, num_samples - first)
            generator = torch.Generator(device=device).manual_seed(seed + b)
            labels = _class_labels(pipe, first, count, device)
            x, batch_nfe, sample_nfe = run(_sample_shape(pipe, count), generator, labels, device, dtype)
            images.append(x.detach().float().cpu())
            nfes.append(batch_nfe)
            per_sample.append(sample_nfe)
    finally:
        handle.remove()
        pipe.unet.train(was_training)
    seconds = time.perf_counter() - start
    settings = {"sampler": sampler, "family": info.family, **info.options}
    settings.update({"steps": steps} if steps is not None else {"tolerance": tolerance})
    settings.update({"batch_size": batch_size, "seed": seed, "sde": kind})
    if info.family == "pc":
        settings["snr"] = float(pipe.scheduler.config.get("snr", float("nan")))
    weights = [min(batch_size, num_samples - f) for f in range(0, num_samples, batch_size)]
    return SamplingOutput(
        images=torch.cat(images),
        nfe=sum(n * w for n, w in zip(nfes, weights, strict=True)) / num_samples,
        nfe_per_sample=sum(n * w for n, w in zip(per_sample, weights, strict=True)) / num_samples,
        model_calls=calls[0],
        nfe_per_batch=[int(n) for n in nfes],
        steps=steps,
        seconds=seconds,
        settings=settings,
    )


# ---------------------------------------------------------------------------------------------------------
# One runner per family: (shape, generator, labels, device, dtype) -> (images in [0, 1], nfe, mean nfe per sample)
# ---------------------------------------------------------------------------------------------------------
def _build_runner(info: SamplerInfo, pipe: Any, sde: SDE, kind: str, steps: int | None, tolerance: float | None):
    from ..pipelines.pipeline_score_sde import ScoreSdePipeline

    if info.family in ("pc", "diffusers"):
        sampling_pipe = ScoreSdePipeline(unet=pipe.unet, scheduler=_scheduler_for(info, pipe, kind))
        sampling_pipe.set_progress_bar_config(disable=True)

        def run_pipeline(shape, generator, labels, device, dtype):
            out = sampling_pipe(
                batch_size=shape[0],
                num_inference_steps=steps,
                generator=generator,
                output_type="pt",
                class_labels=labels,
            )
            return out.images, out.nfe, float(out.nfe)

        return run_pipeline

    from ..sampling.adaptive_sde import sample_adaptive_sde
    from ..sampling.ode import sample_probability_flow, sample_probability_flow_fixed

    view = SchedulerSDE(pipe.scheduler, pipe.unet)
    data_range = view.data_range  # [0, 1] for Diffusers' score-SDE VE repos, [-1, 1] otherwise

    def to_unit(x: torch.Tensor) -> torch.Tensor:
        return ScoreSdePipeline.to_unit_range(x, data_range=data_range)

    options = dict(info.options)

    def run_function(shape, generator, labels, device, dtype):
        extra = {"class_labels": labels} if labels is not None else {}
        score_fn = view.score_fn(pipe.unet, **extra)
        common = {"shape": shape, "generator": generator, "device": device, "dtype": dtype}
        with torch.no_grad():
            if info.family == "ode":
                out = sample_probability_flow_fixed(score_fn, sde, num_steps=steps, **options, **common)
            elif info.name == "ode_adaptive":
                out = sample_probability_flow(score_fn, sde, rtol=tolerance, atol=tolerance, **options, **common)
            else:
                out = sample_adaptive_sde(score_fn, sde, rtol=tolerance, **options, **common)
        per_sample = float(out.nfe_per_sample.double().mean()) if out.nfe_per_sample is not None else float(out.nfe)
        return to_unit(out.sample), out.nfe, per_sample

    return run_function
