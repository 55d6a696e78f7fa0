"""Soft Diffusion (blur + noise) against Gaussian diffusion (VP SDE) on MNIST: sample quality against NFE.

Two networks of the same architecture, the same initial weights and the same training budget (steps, batch,
learning rate, EMA) are trained on the MNIST images shipped with the package:

* ``soft``: DDPM++ predicting ``x_0`` of ``x_t = C_t x_0 + s_t eta`` (DCT blur + small noise), trained with Soft
  Score Matching (:func:`sde_diffusers.losses.soft_score_matching_loss`), levels spaced evenly in Wasserstein-2
  (:meth:`SoftDiffusionScheduler.from_data`);
* ``gaussian``: DDPM++ predicting ``epsilon`` of the VP SDE (beta 0.1 .. 20), trained with continuous denoising score
  matching (:func:`sde_diffusers.losses.denoising_score_matching_loss`).

Both take the timestep on the same ``t * 999`` scale. Each sampler then draws ``--num-samples`` images at every NFE
of ``--nfe`` and the domain FID against held-out MNIST images is computed in the feature space of the shipped MNIST
classifier (:func:`sde_diffusers.evaluation.load_feature_extractor`; nothing is downloaded). Samplers:

* soft model: ``soft-momentum`` (Daras et al.'s Momentum Sampler), ``soft-naive``, ``soft-deterministic``
  (:class:`~sde_diffusers.SoftDiffusionPipeline`);
* Gaussian model: ``vp-em`` and ``vp-ancestral`` (:class:`~sde_diffusers.VPSDEScheduler` predictors, through
  :class:`~sde_diffusers.pipelines.ScoreSdePipeline`) and the probability-flow ODE with Euler (DDIM-like) and Heun
  steps on Karras-spaced noise levels (:func:`sde_diffusers.sampling.ode.sample_probability_flow_fixed`; Heun makes
  ``2 n - 1`` evaluations, so it gets the largest ``n`` within the NFE).

Data: the package's MNIST (the 10,000 MNIST *test* images): ``train`` (first 8,000) trains the models, ``test``
(last 2,000) is the FID reference. At ``--image-size 16`` images are resized (antialiased bilinear) and samples are
resized back to 28 px for the classifier; the reference goes through the same round trip, so the resize costs
nothing in the metric. The ``data`` row is the FID of ``--num-samples`` real training images: the floor at that
sample size.

Outputs (under ``--out``, names starting with ``--name``): ``<name>.json`` (every number, the config and the
command), ``<name>.md`` (the table), ``<name>.png`` (FID against NFE), ``<name>_samples_soft.png`` and
``<name>_samples_gaussian.png`` (a grid from each model's best sampler at the largest NFE).

Run (one command each)::

    # CPU, about 10-15 minutes on 1-2 threads: 16x16, tiny model
    python benchmarks/soft_vs_gaussian.py --quick --device cpu --threads 1
    # GPU (H100 / H200, a few minutes): 28x28, small model, bf16 autocast for training
    python benchmarks/soft_vs_gaussian.py --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

SOFT_SAMPLERS = ("soft-momentum", "soft-naive", "soft-deterministic")
GAUSSIAN_SAMPLERS = ("vp-em", "vp-ancestral", "pf-euler", "pf-heun")
ALL_SAMPLERS = SOFT_SAMPLERS + GAUSSIAN_SAMPLERS
CLASSIFIER_SIZE = 28  # the shipped MNIST feature classifier takes 28x28 images


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Everything that defines a run (recorded in the JSON)."""

    image_size: int = 28
    preset: str = "ddpmpp-small"
    base_channels: int | None = None
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    num_samples: int = 2000
    sample_batch: int = 1000
    nfe: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    samplers: list[str] = field(default_factory=lambda: list(ALL_SAMPLERS))
    soft_schedule: str = "w2"
    soft_weighting: str = "score"
    num_train_timesteps: int = 1000
    seed: int = 0
    mixed_precision: str = "bf16"
    max_train_seconds: float | None = None


QUICK = dict(
    image_size=16,
    preset="ddpmpp-tiny",
    steps=2000,
    batch_size=64,
    lr=2e-3,
    warmup=100,
    num_samples=256,
    sample_batch=256,
    nfe=[5, 10, 20, 50],
    mixed_precision="no",
)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CPU setting: 16x16, tiny model, 2000 steps, 256 samples")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
        help="output folder (default: benchmarks/results)",
    )
    parser.add_argument("--name", default=None, help="file name stem (default: soft_vs_gaussian[_quick])")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--image-size",
        type=int,
        choices=(16, 28, 32),
        default=None,
        help="16: resized, 28: native, 32: zero-padded",
    )
    parser.add_argument("--preset", default=None, help="model preset of sde_diffusers.models (a DDPM++ one)")
    parser.add_argument("--base-channels", type=int, default=None, help="override the preset's width")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--ema-decay", type=float, default=None)
    parser.add_argument("--num-samples", type=int, default=None, help="samples per (sampler, NFE) for the FID")
    parser.add_argument("--sample-batch", type=int, default=None)
    parser.add_argument("--nfe", type=int, nargs="+", default=None, help="network evaluations per sample")
    parser.add_argument("--samplers", nargs="+", choices=ALL_SAMPLERS, default=None)
    parser.add_argument(
        "--soft-schedule",
        choices=("w2", "default"),
        default=None,
        help="w2: levels fitted to the data (from_data); default: geometric blur, linear noise",
    )
    parser.add_argument(
        "--soft-weighting",
        choices=("score", "uniform"),
        default=None,
        help="Soft Score Matching weighting: score = 1 / s_t^2 (DSM of the implied score), uniform = 1",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default=None,
        help="bf16 autocast for the training forward pass (CUDA; default bf16 there)",
    )
    parser.add_argument(
        "--max-train-seconds",
        type=float,
        default=None,
        help="cap on the first (soft) model's training time; the Gaussian model then gets exactly as\n"
        "many steps, so the budgets stay equal (for a fixed-length GPU lease)",
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    settings = Settings(**QUICK) if args.quick else Settings()
    overrides = {
        "image_size": args.image_size,
        "preset": args.preset,
        "base_channels": args.base_channels,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "ema_decay": args.ema_decay,
        "num_samples": args.num_samples,
        "sample_batch": args.sample_batch,
        "nfe": args.nfe,
        "samplers": args.samplers,
        "soft_schedule": args.soft_schedule,
        "soft_weighting": args.soft_weighting,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
        "max_train_seconds": args.max_train_seconds,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device")
    if not args.device.startswith("cuda") and settings.mixed_precision != "no":
        settings.mixed_precision = "no"  # bf16 autocast on CPU is slow and not what the CPU numbers are about
    for name in ("steps", "batch_size", "num_samples", "sample_batch"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if settings.num_samples <= 128:
        parser.error("--num-samples must be > 128 (the feature dimension) for a non-singular FID covariance")
    if any(n < 2 or n > settings.num_train_timesteps for n in settings.nfe):
        parser.error(f"--nfe values must lie in [2, {settings.num_train_timesteps}]")
    settings.nfe = sorted(set(settings.nfe))
    if args.name is None:
        args.name = "soft_vs_gaussian_quick" if args.quick else "soft_vs_gaussian"
    return args, settings


# ---------------------------------------------------------------------------------------------------------
# Data and metric
# ---------------------------------------------------------------------------------------------------------
def to_model_size(images01: torch.Tensor, size: int) -> torch.Tensor:
    """28x28 images in [0, 1] to the training size, in [-1, 1]."""
    if size == 32:
        images01 = F.pad(images01, (2, 2, 2, 2))  # MNIST's background is 0: pad with it
    elif size != 28:
        images01 = F.interpolate(images01, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images01 * 2 - 1


def to_classifier_size(images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] at the training size back to the classifier's 28x28."""
    size = images01.shape[-1]
    if size == 32:
        return images01[..., 2:-2, 2:-2]
    if size != CLASSIFIER_SIZE:
        images01 = F.interpolate(images01, size=(CLASSIFIER_SIZE,) * 2, mode="bilinear", align_corners=False)
    return images01.clamp(0, 1)


class DomainFID:
    """FID in the shipped MNIST classifier's feature space against a fixed reference set."""

    def __init__(self, reference01: torch.Tensor, device: str) -> None:
        from sde_diffusers.evaluation import FeatureStatistics, extract_features, load_feature_extractor

        self._extract = extract_features
        self.extractor = load_feature_extractor("mnist", device=device)
        feats = extract_features(self.extractor, to_classifier_size(reference01).to(device)).features
        self.reference = FeatureStatistics.from_features(feats.numpy())

    def __call__(self, samples01: torch.Tensor) -> float:
        from sde_diffusers.evaluation import frechet_distance

        device = next(self.extractor.parameters()).device
        feats = self._extract(self.extractor, to_classifier_size(samples01.float()).to(device)).features
        return float(frechet_distance(feats.numpy(), self.reference))


# ---------------------------------------------------------------------------------------------------------
# Models and the shared training function
# ---------------------------------------------------------------------------------------------------------
def build_model(settings: Settings, seed: int) -> torch.nn.Module:
    """A fresh DDPM++ with the same initial weights for a given seed (both models start identical)."""
    from sde_diffusers.models import from_preset

    overrides = {"in_channels": 1, "sample_size": settings.image_size}
    if settings.base_channels is not None:
        overrides["base_channels"] = settings.base_channels
    torch.manual_seed(seed)
    return from_preset(settings.preset, **overrides)


def autocast_model(model: torch.nn.Module, device: str, mixed_precision: str) -> Callable:
    """``model(x, t).sample`` with the forward pass (only) under bf16 autocast, returned in float32.

    The losses blur and compare outside autocast: a DCT blur in bf16 would lose three digits.
    """

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if mixed_precision == "bf16" else nullcontext()
        with ctx:
            out = model(x, t).sample
        return out.float()

    return forward


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[Callable, torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor,
    settings: Settings,
    device: str,
    *,
    seed: int,
    label: str,
    steps: int | None = None,
    max_seconds: float | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` with ``loss_fn(forward, x0, generator)``; return the EMA model and a training record.

    AdamW with linear warm-up and gradient clipping, EMA through ``diffusers.training_utils.EMAModel``
    (Song et al.'s warm-up ``min(decay, (1 + n) / (10 + n))``), batches drawn with a seeded generator on
    ``device`` from the data tensor already there (no data-loader overhead). Runs ``steps`` (default
    ``settings.steps``) steps, or stops at the first log line past ``max_seconds``; ``record["steps"]`` says how
    many ran, so the other model can be given exactly as many.
    """
    steps = settings.steps if steps is None else steps
    from diffusers.training_utils import EMAModel

    model = model.to(device).train()
    forward = autocast_model(model, device, settings.mixed_precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, min(settings.warmup, steps // 5))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    ema = EMAModel(model.parameters(), decay=settings.ema_decay, foreach=device.startswith("cuda"))
    gen = torch.Generator(device=device).manual_seed(seed)
    losses, log_every = [], max(1, min(settings.steps // 10, 250))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    done = 0
    for step in range(steps):
        idx = torch.randint(data.shape[0], (settings.batch_size,), generator=gen, device=device)
        loss = loss_fn(forward, data[idx], gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.step(model.parameters())
        done = step + 1
        if done % log_every == 0 or done == steps:
            value = float(loss.detach())  # one host sync per log line, not per step
            losses.append((done, value))
            elapsed = time.perf_counter() - start
            print(f"  [{label}] step {done:>6}/{steps}  loss {value:.4f}  {elapsed:7.1f} s", flush=True)
            if max_seconds is not None and elapsed > max_seconds and done < steps:
                print(f"  [{label}] stopping at step {done}: past --max-train-seconds {max_seconds}", flush=True)
                break
    sync()
    seconds = time.perf_counter() - start
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    ema_model.eval().requires_grad_(False)
    record = {
        "steps": done,
        "train_seconds": round(seconds, 2),
        "ms_per_step": round(1000 * seconds / done, 3),
        "final_loss": losses[-1][1],
        "loss_curve": losses,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema_model, record


# ---------------------------------------------------------------------------------------------------------
# Samplers: each returns (images in [0, 1], actual NFE)
# ---------------------------------------------------------------------------------------------------------
def make_soft_sampler(unet: torch.nn.Module, scheduler, sampler: str) -> Callable:
    from sde_diffusers.pipelines.pipeline_soft_diffusion import SoftDiffusionPipeline

    pipe = SoftDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run(batch: int, nfe: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        out = pipe(batch_size=batch, num_inference_steps=nfe, generator=generator, output_type="pt", sampler=sampler)
        return out.images, out.nfe

    return run


def make_vp_pipeline_sampler(unet: torch.nn.Module, predictor: str) -> Callable:
    from sde_diffusers.pipelines import ScoreSdePipeline
    from sde_diffusers.schedulers import VPSDEScheduler

    pipe = ScoreSdePipeline(unet=unet, scheduler=VPSDEScheduler(predictor=predictor))
    pipe.set_progress_bar_config(disable=True)

    def run(batch: int, nfe: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        out = pipe(batch_size=batch, num_inference_steps=nfe, generator=generator, output_type="pt")
        return out.images, out.nfe

    return run


def make_pf_sampler(unet: torch.nn.Module, sde, solver: str, shape: tuple[int, int, int], device: str) -> Callable:
    from sde_diffusers.parameterization import make_score_fn
    from sde_diffusers.sampling.ode import sample_probability_flow_fixed

    score_fn = make_score_fn(unet, sde, "epsilon", "index")

    def run(batch: int, nfe: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        # Euler: n evaluations for n levels (with the final denoising step); Heun: 2 n - 1.
        num_steps = nfe if solver == "euler" else (nfe + 1) // 2
        out = sample_probability_flow_fixed(
            score_fn,
            sde,
            num_steps=num_steps,
            solver=solver,
            spacing="karras",
            shape=(batch, *shape),
            generator=generator,
            device=device,
        )
        return ((out.sample + 1) / 2).clamp(0, 1).cpu(), int(out.nfe)

    return run


def draw(run: Callable, settings: Settings, nfe: int, seed: int, device: str) -> tuple[torch.Tensor, int, float]:
    """``num_samples`` images in batches of ``sample_batch``; the seed is shared by every sampler."""
    gen = torch.Generator(device=device).manual_seed(seed)
    images, used = [], 0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    remaining = settings.num_samples
    while remaining > 0:
        batch = min(settings.sample_batch, remaining)
        out, used = run(batch, nfe, gen)
        images.append(out.float().cpu())
        remaining -= batch
    sync()
    return torch.cat(images), used, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------
def format_table(results: dict, settings: Settings, floor: float) -> str:
    header = "| sampler | model | " + " | ".join(f"NFE {n}" for n in settings.nfe) + " |"
    lines = [header, "|" + "---|" * (2 + len(settings.nfe))]
    for sampler, rows in results.items():
        cells = []
        for n in settings.nfe:
            row = rows.get(str(n))
            if row is None:
                cells.append("-")
            else:
                exact = "" if row["nfe"] == n else f" ({row['nfe']})"
                cells.append(f"{row['fid']:.2f}{exact}")
        model = "soft" if sampler.startswith("soft") else "gaussian"
        lines.append(f"| {sampler} | {model} | " + " | ".join(cells) + " |")
    lines.append(
        f"| data (real train images) | - | {floor:.2f} (floor at {settings.num_samples} samples) |"
        + " |" * (len(settings.nfe) - 1)
    )
    return "\n".join(lines)


def plot(results: dict, settings: Settings, floor: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, rows in results.items():
        pts = sorted((row["nfe"], row["fid"]) for row in rows.values())
        style = "-" if sampler.startswith("soft") else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=sampler)
    ax.axhline(floor, color="grey", linestyle=":", label=f"real data ({settings.num_samples} images)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("domain FID (MNIST classifier features)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_grid(images01: torch.Tensor, path: str, cols: int = 8) -> None:
    from diffusers.utils import make_image_grid
    from PIL import Image

    n = min(len(images01), cols * cols)
    rows = max(1, n // cols)
    arr = (images01[: rows * cols, 0].numpy() * 255).round().astype(np.uint8)
    pil = [Image.fromarray(a, mode="L").resize((56, 56), Image.NEAREST) for a in arr]
    make_image_grid(pil, rows=rows, cols=cols).save(path)


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args, settings = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    command = "python benchmarks/soft_vs_gaussian.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"command: {command}\nsettings: {asdict(settings)}\ndevice: {device}", flush=True)
    wall = time.perf_counter()

    from sde_diffusers.evaluation import load_builtin
    from sde_diffusers.losses import denoising_score_matching_loss, soft_score_matching_loss
    from sde_diffusers.parameterization import make_score_fn
    from sde_diffusers.schedulers import SoftDiffusionScheduler, VPSDEScheduler

    train01, _ = load_builtin("mnist", split="train")
    test01, _ = load_builtin("mnist", split="test")
    data = to_model_size(train01, settings.image_size).to(device)
    reference01 = (to_model_size(test01, settings.image_size) + 1) / 2
    fid = DomainFID(reference01, device)
    floor_idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(settings.seed))[
        : settings.num_samples
    ]
    floor = fid((data[floor_idx].cpu() + 1) / 2)
    print(f"data floor FID ({settings.num_samples} real training images vs {len(test01)} held out): {floor:.3f}")

    # ---- the two models: same architecture, same initial weights, same budget ----------------------------
    soft_kwargs = {"num_train_timesteps": settings.num_train_timesteps, "image_size": settings.image_size}
    if settings.soft_schedule == "w2":
        soft_scheduler = SoftDiffusionScheduler.from_data(data[:2000].cpu(), **soft_kwargs)
    else:
        soft_scheduler = SoftDiffusionScheduler(**soft_kwargs)
        soft_scheduler.set_prior(data.cpu())
    vp_scheduler = VPSDEScheduler(num_train_timesteps=settings.num_train_timesteps)
    sde = vp_scheduler.sde

    def soft_loss(forward, x0, gen):
        return soft_score_matching_loss(forward, x0, soft_scheduler, generator=gen, weighting=settings.soft_weighting)

    def gaussian_loss(forward, x0, gen):
        return denoising_score_matching_loss(make_score_fn(forward, sde, "epsilon", "index"), sde, x0, generator=gen)

    models, training = {}, {}
    labels = {"soft" if s.startswith("soft") else "gaussian" for s in settings.samplers}
    for label, loss_fn in (("soft", soft_loss), ("gaussian", gaussian_loss)):
        if label not in labels:
            continue
        steps = min(record["steps"] for record in training.values()) if training else settings.steps
        print(f"training the {label} model ({steps} steps, batch {settings.batch_size})", flush=True)
        models[label], training[label] = train(
            build_model(settings, settings.seed),
            loss_fn,
            data,
            settings,
            device,
            seed=settings.seed + 1,
            label=label,
            steps=steps,
            max_seconds=None if training else settings.max_train_seconds,
        )

    # ---- sampling and FID -----------------------------------------------------------------------------------
    shape = (1, settings.image_size, settings.image_size)
    factories = {
        "soft-momentum": lambda: make_soft_sampler(models["soft"], soft_scheduler, "momentum"),
        "soft-naive": lambda: make_soft_sampler(models["soft"], soft_scheduler, "naive"),
        "soft-deterministic": lambda: make_soft_sampler(models["soft"], soft_scheduler, "deterministic"),
        "vp-em": lambda: make_vp_pipeline_sampler(models["gaussian"], "euler_maruyama"),
        "vp-ancestral": lambda: make_vp_pipeline_sampler(models["gaussian"], "ancestral"),
        "pf-euler": lambda: make_pf_sampler(models["gaussian"], sde, "euler", shape, device),
        "pf-heun": lambda: make_pf_sampler(models["gaussian"], sde, "heun", shape, device),
    }
    results: dict[str, dict] = {}
    finals: dict[str, torch.Tensor] = {}
    stem = os.path.join(args.out, args.name)
    date = datetime.date.today().isoformat()
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    steps_done = min(record["steps"] for record in training.values())
    title = (
        f"MNIST {settings.image_size}px, {settings.preset}, {steps_done} steps x {settings.batch_size}, "
        f"{settings.num_samples} samples; {device_name}, {date}"
    )

    def write_outputs() -> dict:
        # Called after every sampler, so that a run cut short still leaves its numbers behind.
        record = {
            "command": command,
            "date": date,
            "device": device,
            "device_name": device_name,
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "settings": asdict(settings),
            "data": {
                "train": f"MNIST test-set images 0..7999 ({len(data)}), {settings.image_size}x{settings.image_size}",
                "reference": f"MNIST test-set images 8000..9999 ({len(test01)})",
                "metric": "Frechet distance of the shipped MNIST classifier's 128-d features (domain FID)",
            },
            "data_floor_fid": round(floor, 4),
            "soft_scheduler": {
                "schedule": settings.soft_schedule,
                "weighting": settings.soft_weighting,
                "blur_sigma_range": [
                    float(soft_scheduler.corruption.blur_sigmas[0]),
                    float(soft_scheduler.corruption.blur_sigmas[-1]),
                ],
                "noise_std_range": [
                    float(soft_scheduler.corruption.noise_stds[0]),
                    float(soft_scheduler.corruption.noise_stds[-1]),
                ],
            },
            "gaussian_sde": "VP, beta_min 0.1, beta_max 20 (DDPM linear betas 1e-4 .. 0.02, N = 1000)",
            "training": training,
            "results": results,
            "best_sampler_at_max_nfe": {},
            "complete": len(finals) == len(settings.samplers),
            "wall_seconds": round(time.perf_counter() - wall, 1),
        }
        for label in ("soft", "gaussian"):
            candidates = [s for s in finals if s.startswith("soft") == (label == "soft")]
            if candidates:
                top = min(candidates, key=lambda s: results[s][str(settings.nfe[-1])]["fid"])
                record["best_sampler_at_max_nfe"][label] = top
                save_grid(finals[top], f"{stem}_samples_{label}.png")
        with open(f"{stem}.json", "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
        with open(f"{stem}.md", "w", encoding="utf-8") as fh:
            fh.write(
                f"Domain FID (lower is better) against NFE; {title}.\n\n"
                f"{format_table(results, settings, floor)}\n\nCommand: `{command}`\n"
            )
        plot(results, settings, floor, f"{stem}.png", title)
        return record

    for sampler in settings.samplers:
        run = factories[sampler]()
        results[sampler] = {}
        for n in settings.nfe:
            images, used, seconds = draw(run, settings, n, settings.seed + 2, device)
            score = fid(images)
            results[sampler][str(n)] = {
                "nfe": used,
                "fid": round(score, 4),
                "sample_seconds": round(seconds, 3),
            }
            print(f"  {sampler:<19} NFE {used:>4}  FID {score:9.3f}  ({seconds:.1f} s)", flush=True)
            if n == settings.nfe[-1]:
                finals[sampler] = images
        record = write_outputs()

    print("\n" + format_table(results, settings, floor))
    print(f"\nwall time {record['wall_seconds']:.0f} s; wrote {stem}.json, .md, .png, _samples_*.png")
    if any(not math.isfinite(row["fid"]) for rows in results.values() for row in rows.values()):
        print("warning: some FIDs are not finite", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
