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

    out = draw_samples(pipe, "ode_heun", num_samples=500, nfe=50, seed=0, batch_size=100)
    out.images  # (500, C, H, W) in [0, 1], on the CPU

Under ``torchrun`` / ``accelerate launch`` the same call splits the blocks of ``batch_size`` samples across the
processes and returns the same result on each; ``samples_dir=`` makes it resumable (see
:mod:`sde_diffusers.distributed`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..scheduler_sde import SchedulerSDE
from ..sde import SDE, VESDE, VPSDE, SubVPSDE
from ..validation import check_bool, check_int

if TYPE_CHECKING:
    from ..distributed import Processes

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
    "sampling_settings",
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
        # per-sample Langevin step sizes: no sample depends on the others in its batch
        options={"predictor": predictor, "corrector": corrector, "n_corrector_steps": 1}
        | ({"langevin_per_sample": True} if corrector == "langevin" else {}),
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
        images (`torch.Tensor` of shape `(num_samples, channels, height, width)`): float32 CPU images in ``[0, 1]``
            on the 8-bit grid (what a PNG holds and what the metrics see), in index order.
        nfe (`float`): network evaluations per image: the batched model calls of its batch, averaged over images
            (adaptive solvers evaluate a batch until its slowest sample finishes).
        nfe_per_sample (`float`): mean evaluations each image needed on its own (differs from ``nfe`` only for
            adaptive samplers).
        model_calls (`int`): batched network calls counted on the model itself (all batches, all processes; blocks
            read back from ``samples_dir`` count nothing).
        nfe_per_batch (`list[int]`): batched network calls reported by the sampler for each batch computed now.
        steps (`int`, *optional*): grid steps of a fixed-step sampler.
        seconds (`float`): wall time of the sampling.
        settings (`dict`): the sampler, its options and the budget, for reports.
        num_processes (`int`): processes that shared the work.
        resumed_samples (`int`): samples read back from ``samples_dir`` instead of drawn.
    """

    images: torch.Tensor
    nfe: float
    nfe_per_sample: float
    model_calls: int
    nfe_per_batch: list = field(default_factory=list)
    steps: int | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    num_processes: int = 1
    resumed_samples: int = 0


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


def sampling_settings(pipe: Any, plan: SamplingPlan, *, num_samples: int, batch_size: int, seed: int) -> dict:
    """Everything the samples of :func:`draw_samples` depend on (the identity of a resumable run)."""
    from ..distributed import model_fingerprint

    info = get_sampler(plan.sampler)
    config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return {
        "sampler": plan.sampler,
        "options": dict(info.options),
        "steps": plan.steps,
        "tolerance": plan.tolerance,
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": config,
        "model": model_fingerprint(pipe.unet),
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "seeding": "sample i: torch.Generator('cpu').manual_seed(item_seed(seed, i))",
        "device_type": pipe.unet.device.type,
        "dtype": str(pipe.unet.dtype),
    }


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
    on_samples: Callable[[int], None] | None = None,
    processes: Processes | None = None,
    samples_dir: str | os.PathLike | None = None,
    batch_invariant: bool = False,
) -> SamplingOutput:
    """Draw ``num_samples`` images with a named sampler, split across the processes of the run.

    Sample ``i`` takes all its randomness (prior draw and every noise draw) from its own CPU generator seeded with
    :func:`~sde_diffusers.distributed.item_seed` ``(seed, i)``, and samples are drawn in fixed blocks of
    ``batch_size`` consecutive indices. So the result does not depend on the number of processes (under
    ``torchrun`` / ``accelerate launch`` each process draws its share of the blocks; see
    :mod:`sde_diffusers.distributed`), nor on a kill and resume through ``samples_dir``; another ``batch_size``
    changes only the floating-point rounding of batched network calls (``batch_invariant=True`` removes that too).
    The PC samplers use per-sample Langevin step sizes, so no sample depends on its batch. All samplers draw the
    same prior noise for the same seed, so they are compared on common random numbers. A label-conditional UNet
    gets balanced labels (``i mod num_classes``).

    Args:
        pipe ([`ScoreSdePipeline`]): the model and its scheduler (the scheduler fixes the SDE and the
            parameterisation).
        sampler (`str`): a key of :data:`SAMPLERS`.
        num_samples (`int`): images to draw.
        nfe (`int`, *optional*): NFE budget per image for fixed-step samplers (default: the sampler's).
        tolerance (`float`, *optional*): tolerance of adaptive samplers (default: the sampler's).
        batch_size (`int`, *optional*): images per block (default: all at once).
        seed (`int`, defaults to 0): base seed (``>= 0``).
        on_model_call (`Callable`, *optional*): called after every batched network call of this process.
        on_samples (`Callable[[int], None]`, *optional*): called on the main process with the number of samples
            finished (by all processes) after each round of blocks, and first with those read back (progress bars).
        processes ([`~sde_diffusers.distributed.Processes`], *optional*): the run's processes (default: formed from
            the launcher's environment; one without a launcher).
        samples_dir (`str`, *optional*): keep finished blocks there (uint8 ``.npz`` shards and a manifest) and
            resume from them; a folder holding a run with other settings is refused before any work.
        batch_invariant (`bool`, defaults to `False`): draw every sample as a batch of one (slower), so the result
            is bit-identical for any ``batch_size``.

    Returns:
        :class:`SamplingOutput`, the same on every process.

    Raises:
        ValueError: unknown sampler, a sampler that does not apply to the model's SDE, a budget of the wrong kind,
            bad sizes, or a ``samples_dir`` holding another run; all before any network call.
    """
    from ..distributed import Processes, ShardStore, item_generators, run_blocks, split_blocks

    num_samples = check_int("num_samples", num_samples)
    batch_size = num_samples if batch_size is None else check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    batch_invariant = check_bool("batch_invariant", batch_invariant)
    plan = plan_sampling(pipe, sampler, nfe=nfe, tolerance=tolerance)
    info, steps, tolerance = get_sampler(sampler), plan.steps, plan.tolerance
    sde = pipeline_sde(pipe)
    kind = plan.sde_type
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    run = _build_runner(info, pipe, sde, kind, steps, tolerance)
    processes = processes if processes is not None else Processes(device)
    blocks = split_blocks(num_samples, batch_size)
    store = None
    if samples_dir is not None:
        identity = sampling_settings(pipe, plan, num_samples=num_samples, batch_size=batch_size, seed=seed)
        store = ShardStore(samples_dir, {**identity, "batch_invariant": batch_invariant}, name="samples")
    done = processes.on_main(lambda: store.open(blocks)) if store is not None else set()

    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1
        if on_model_call is not None:
            on_model_call()

    def draw(block: range) -> dict[str, np.ndarray]:
        before = calls[0]
        generators = item_generators(seed, block)
        labels = _class_labels(pipe, block.start, len(block), device)
        groups = [slice(i, i + 1) for i in range(len(block))] if batch_invariant else [slice(0, len(block))]
        images, batch_nfe, per_sample = [], [], []
        for part in groups:
            count = part.stop - part.start
            x, group_nfe, sample_nfe = run(
                _sample_shape(pipe, count),
                generators[part],
                None if labels is None else labels[part],
                device,
                dtype,
            )
            images.append(_to_uint8(x))
            batch_nfe += [int(group_nfe)] * count
            per_sample += [float(sample_nfe)] * count if isinstance(sample_nfe, float) else list(sample_nfe)
        return {
            "images": np.concatenate(images),
            "batch_nfe": np.asarray(batch_nfe, dtype=np.int64),
            "nfe_per_sample": np.asarray(per_sample, dtype=np.float64),
            "calls_per_batch": np.asarray([batch_nfe[p.start] for p in groups], dtype=np.int64),
            "model_calls": np.asarray(calls[0] - before, dtype=np.int64),
        }

    def finished(index: int, result: dict[str, np.ndarray]) -> None:
        if store is not None:
            store.write(blocks[index], result)
        if on_samples is not None:
            on_samples(len(blocks[index]))

    if on_samples is not None and processes.is_main_process and done:
        on_samples(sum(len(blocks[k]) for k in done))
    handle = pipe.unet.register_forward_hook(hook)
    was_training = pipe.unet.training
    pipe.unet.eval()
    start = time.perf_counter()
    try:
        computed = run_blocks(processes, blocks, draw, skip=done, on_result=finished)
    finally:
        handle.remove()
        pipe.unet.train(was_training)
    seconds = time.perf_counter() - start
    # shards are on the main process's machine only: it reads the resumed blocks and sends them to the others
    resumed = processes.on_main(lambda: {k: store.read(blocks[k]) for k in done}) if done else {}
    results = [computed[k] if k in computed else resumed[k] for k in range(len(blocks))]
    images = np.concatenate([r["images"] for r in results])
    if images.shape != _sample_shape(pipe, num_samples):
        raise ValueError(f"the shards in {str(samples_dir)!r} do not hold {num_samples} images of this model")
    settings = {"sampler": sampler, "family": info.family, **info.options}
    settings.update({"steps": steps} if steps is not None else {"tolerance": tolerance})
    settings.update({"batch_size": batch_size, "seed": seed, "sde": kind, "batch_invariant": batch_invariant})
    if info.family == "pc":
        settings["snr"] = float(pipe.scheduler.config.get("snr", float("nan")))
    return SamplingOutput(
        images=torch.from_numpy(images).float() / 255.0,
        nfe=float(np.concatenate([r["batch_nfe"] for r in results]).mean()),
        nfe_per_sample=float(np.concatenate([r["nfe_per_sample"] for r in results]).mean()),
        model_calls=int(sum(int(r["model_calls"]) for r in computed.values())),
        nfe_per_batch=[int(n) for k in sorted(computed) for n in computed[k]["calls_per_batch"]],
        steps=steps,
        seconds=seconds,
        settings=settings,
        num_processes=processes.num_processes,
        resumed_samples=sum(len(blocks[k]) for k in done),
    )


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[0, 1]`` images to uint8 (the rounding of ``numpy_to_pil`` and :func:`~.quality.quantize_8bit`)."""
    return (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------
# One runner per family: (shape, generators, labels, device, dtype) -> (images in [0, 1], nfe, nfe per sample)
# ---------------------------------------------------------------------------------------------------------
def _build_runner(info: SamplerInfo, pipe: Any, sde: SDE, kind: str, steps: int | None, tolerance: float | None):
    from ..pipelines.pipeline_score_sde import ScoreSdePipeline

    if info.family in ("pc", "diffusers"):
        sampling_pipe = ScoreSdePipeline(unet=pipe.unet, scheduler=_scheduler_for(info, pipe, kind))
        sampling_pipe.set_progress_bar_config(disable=True)

        def run_pipeline(shape, generators, labels, device, dtype):
            out = sampling_pipe(
                batch_size=shape[0],
                num_inference_steps=steps,
                generator=generators,
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

    def run_function(shape, generators, labels, device, dtype):
        extra = {"class_labels": labels} if labels is not None else {}
        score_fn = view.score_fn(pipe.unet, **extra)
        # the prior, one CPU generator per sample (as the pipeline draws it), then on the model's device
        x = torch.cat([sde.prior_sampling((1, *shape[1:]), generator=g, dtype=dtype) for g in generators])
        x = x.to(device)
        with torch.no_grad():
            if info.family == "ode":
                out = sample_probability_flow_fixed(score_fn, sde, x, num_steps=steps, **options)
            elif info.name == "ode_adaptive":
                out = sample_probability_flow(score_fn, sde, x, rtol=tolerance, atol=tolerance, **options)
            else:
                out = sample_adaptive_sde(score_fn, sde, x, rtol=tolerance, generator=generators, **options)
        per_sample = out.nfe_per_sample.double().cpu().tolist() if out.nfe_per_sample is not None else float(out.nfe)
        return to_unit(out.sample), out.nfe, per_sample

    return run_function
