"""``sde-diffusers evaluate MODEL_DIR --data DATA --sampler NAME --num-samples N``: sample quality of a saved model.

MODEL_DIR is a pipeline folder as the trainer saves it (``model_index.json``, ``unet/``, ``scheduler/``; plain
Diffusers pipeline folders with a DDPM-family scheduler work too, as VP models). The command draws
``--num-samples`` images with the named sampler (``--nfe`` sets the budget of fixed-step samplers,
``--tolerance`` that of adaptive ones; see :mod:`sde_diffusers.evaluation.sampling` for the list) and reports,
against the held-out split of DATA:

* the domain FID (Fréchet distance in the feature space of the project's classifier for the data set, or
  Inception-v3 with ``--feature-extractor inception``), KID and improved precision/recall;
* bits/dim of the first ``--bpd-images`` held-out images through the probability-flow ODE (0 skips it).

DATA is ``digits`` or ``mnist`` (shipped), ``cifar10`` (with ``--data-root``), or a folder of images (used whole as
the reference; pass ``--feature-extractor``). Reference images are prepared at the model's resolution exactly as the
trainer prepares training images; real and generated images are then quantized to 8 bits and resized identically
to the extractor's input size (see :mod:`sde_diffusers.evaluation.quality`).

Prints a table and writes a JSON report (``--out``, default ``MODEL_DIR/evaluation.json``).

Under ``torchrun`` / ``accelerate launch`` the processes share the sampling and bits/dim blocks (sample i depends only
on (seed, i): the same numbers for any number of processes); the main process computes the features and metrics and
writes the report. ``--samples-dir`` keeps finished sample blocks and resumes from them after a kill.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ._shared import Progress, add_run_arguments, check_threads, check_writable_file

NAME = "evaluate"
HELP = "Sample quality (domain FID, KID, precision/recall) and bits/dim of a saved score model."


def _sampler_names() -> list[str]:
    from sde_diffusers.evaluation.sampling import SAMPLERS

    return list(SAMPLERS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sde_diffusers.evaluation.extractors import FEATURE_EXTRACTORS

    parser.add_argument("model_dir", metavar="MODEL_DIR", help="saved pipeline folder (model_index.json)")
    parser.add_argument("--data", required=True, help="'digits', 'mnist', 'cifar10' or a folder of reference images")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 folder with train/ and test/ (for --data cifar10)")
    parser.add_argument("--split", default="test", help="held-out split of a built-in data set (default: test)")
    parser.add_argument(
        "--sampler",
        required=True,
        choices=_sampler_names(),
        metavar="SAMPLER",
        help=f"one of: {', '.join(_sampler_names())}",
    )
    parser.add_argument("--num-samples", type=int, default=500, help="images to generate (default: 500)")
    parser.add_argument(
        "--nfe",
        type=int,
        default=None,
        help="network evaluations per image for fixed-step samplers (default: the sampler's)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="tolerance of adaptive samplers (ode_adaptive, adaptive_sde)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="images per sampling batch: a block of consecutive sample indices (default: 256)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed >= 0: sample i draws its noise from a generator seeded with (seed, i) (default: 0)",
    )
    parser.add_argument(
        "--samples-dir",
        default=None,
        metavar="DIR",
        help="keep finished sample blocks in DIR (.npz) and resume from them: a killed run started again with "
        "the same arguments continues where it stopped",
    )
    parser.add_argument(
        "--feature-extractor",
        default="auto",
        choices=("auto", *FEATURE_EXTRACTORS),
        help="feature space of the metrics (default: the data set's own classifier)",
    )
    parser.add_argument(
        "--extractor-weights",
        default=None,
        help="Inception weights file (for 'inception'), a classifier folder replacing the shipped one, or for "
        "'dinov2' / 'clip' a transformers folder or Hub repo id (default facebook/dinov2-large / "
        "openai/clip-vit-large-patch14)",
    )
    parser.add_argument(
        "--num-reference", type=int, default=None, help="use the first N reference images (default: all)"
    )
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    parser.add_argument("--pr-k", type=int, default=3, help="neighbourhood size of precision/recall (default: 3)")
    parser.add_argument(
        "--allow-small-sample",
        action="store_true",
        help="compute the FID even with fewer samples than feature dimensions (biased; warns)",
    )
    parser.add_argument(
        "--bpd-images", type=int, default=64, help="held-out images for bits/dim (0 skips; default 64)"
    )
    parser.add_argument("--bpd-batch-size", type=int, default=64)
    parser.add_argument("--bpd-rtol", type=float, default=1e-5, help="ODE rtol for bits/dim (default 1e-5)")
    parser.add_argument("--bpd-atol", type=float, default=1e-5, help="ODE atol for bits/dim (default 1e-5)")
    parser.add_argument("--save-grid", default=None, metavar="PNG", help="also save a grid of the first 64 samples")
    parser.add_argument("--out", default=None, metavar="JSON", help="report path (default: MODEL_DIR/evaluation.json)")
    add_run_arguments(parser, shards="sample")


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def load_pipeline(model_dir: str | os.PathLike, device: torch.device | str | None = None) -> Any:
    """A :class:`~sde_diffusers.ScoreSdePipeline` with the UNet and scheduler saved in ``model_dir``.

    Our shim-layout folders load through ``SDEDiffusionPipeline.from_pretrained``; a plain Diffusers pipeline
    folder (e.g. ``DDPMPipeline``) through ``DiffusionPipeline.from_pretrained``. Either way its ``unet`` and
    ``scheduler`` are re-wrapped in a ``ScoreSdePipeline``, the one sampling loop of the package.

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder or has no ``model_index.json``.
        ValueError: the pipeline has no ``unet`` or no ``scheduler``.
    """
    from sde_diffusers.pipelines import ScoreSdePipeline

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"MODEL_DIR {str(model_dir)!r} is not a folder")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"MODEL_DIR {str(model_dir)!r} has no model_index.json: pass a pipeline folder as the trainer saves it "
            "(<output_dir>/pipeline)"
        )
    entry = json.loads(index_path.read_text()).get("_class_name")
    import sde_diffusers.pipelines as ours

    if isinstance(entry, list) or hasattr(ours, str(entry)):
        from sde_diffusers.pipelines.pipeline_utils import SDEDiffusionPipeline

        loaded = SDEDiffusionPipeline.from_pretrained(os.fspath(folder))
    else:
        from diffusers import DiffusionPipeline

        loaded = DiffusionPipeline.from_pretrained(os.fspath(folder))
    components = loaded.components
    for name in ("unet", "scheduler"):
        if components.get(name) is None:
            raise ValueError(f"the pipeline in {str(model_dir)!r} has no {name!r} component")
    pipe = ScoreSdePipeline(unet=components["unet"], scheduler=components["scheduler"])
    if device is not None:
        pipe.to(device)
    return pipe


def _check_args(args: argparse.Namespace) -> None:
    from sde_diffusers.validation import check_int, check_positive

    for name in ("num_samples", "batch_size", "kid_subsets", "pr_k", "bpd_batch_size"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name))
    check_int("--seed", args.seed, minimum=0)
    check_int("--bpd-images", args.bpd_images, minimum=0)
    if args.num_reference is not None:
        check_int("--num-reference", args.num_reference, minimum=2)
    for name in ("bpd_rtol", "bpd_atol"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    check_threads(args)


def _model_geometry(pipe: Any) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return int(pipe.unet.config.in_channels), int(size)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------
def _resumed(report: dict[str, Any]) -> str:
    resumed = report.get("resumed_samples") or 0
    return f" ({resumed} read back from {report['samples_dir']})" if resumed else ""


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned two-column text table."""
    m = report["metrics"]
    rows = [
        ("model", report["model_dir"]),
        ("SDE", report["sde"]),
        ("sampler", report["sampler"]),
        (
            "budget",
            f"{report['steps']} steps" if report.get("steps") is not None else f"tolerance {report['tolerance']:g}",
        ),
        (
            "NFE per image",
            f"{report['nfe']:.1f}"
            + (f" (per sample {report['nfe_per_sample']:.1f})" if report["nfe_per_sample"] != report["nfe"] else ""),
        ),
        ("samples", str(report["num_samples"]) + _resumed(report)),
        ("processes", str(report["num_processes"])),
        (
            "reference",
            f"{report['reference']['data']} {report['reference']['split']} "
            f"({report['reference']['num_images']} images)",
        ),
        ("features", report["feature_extractor"]["name"]),
        ("FID", f"{m['fid']:.3f}"),
        ("KID", f"{m['kid']:.5f} ± {m['kid_std']:.5f}"),
        ("precision", f"{m['precision']:.3f}"),
        ("recall", f"{m['recall']:.3f}"),
    ]
    if m.get("bits_per_dim") is not None:
        rows.append(
            (
                "bits/dim",
                f"{m['bits_per_dim']:.4f} ± {m['bits_per_dim_stderr']:.4f} "
                f"({report['bits_per_dim']['num_images']} images)",
            )
        )
    rows.append(
        (
            "time",
            f"sampling {report['timing']['sampling_s']:.1f} s, total {report['timing']['total_s']:.1f} s",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from sde_diffusers.distributed import Processes
    from sde_diffusers.evaluation.extractors import load_feature_extractor
    from sde_diffusers.evaluation.metrics import FeatureStatistics
    from sde_diffusers.evaluation.quality import (
        check_fid_sample_size,
        default_extractor,
        features_of,
        heldout_bits_per_dim,
        load_reference,
        sample_quality,
    )
    from sde_diffusers.evaluation.sampling import draw_samples, plan_sampling

    start = time.perf_counter()
    _check_args(args)
    processes = Processes(args.device)
    device = processes.device
    main = processes.is_main_process

    # ---- everything that can fail, before any sampling (on every process; a failure stops them all) ----------
    extractor = extractor_name = None
    with processes.agree():
        pipe = load_pipeline(args.model_dir, device)
        plan = plan_sampling(pipe, args.sampler, nfe=args.nfe, tolerance=args.tolerance)
        extractor_name = default_extractor(args.data) if args.feature_extractor == "auto" else args.feature_extractor
        if extractor_name is None:
            raise ValueError(f"--data {args.data!r} is an image folder: choose its --feature-extractor explicitly")
        if main:  # features and metrics are the main process's work
            extractor = load_feature_extractor(extractor_name, weights_path=args.extractor_weights, device=device)
            feature_dim = int(extractor.feature_dim)
            try:
                check_fid_sample_size(args.num_samples, feature_dim, args.allow_small_sample)
            except ValueError as err:
                raise ValueError(
                    f"--num-samples {args.num_samples} is too small for a FID in this feature space: {err}"
                ) from err
        channels, size = _model_geometry(pipe)
        reference = load_reference(
            args.data, split=args.split, resolution=size, channels=channels, root=args.data_root
        )
        if args.num_reference is not None:
            reference.images = reference.images[: args.num_reference]
            reference.info["num_images"] = len(reference.images)
        if main:
            check_fid_sample_size(len(reference.images), feature_dim, args.allow_small_sample)
        if args.bpd_images > len(reference.images):
            raise ValueError(f"--bpd-images {args.bpd_images} exceeds the {len(reference.images)} reference images")
        if main:
            check_writable_file(args.out or Path(args.model_dir) / "evaluation.json", "--out")
            if args.save_grid:
                check_writable_file(args.save_grid, "--save-grid")

    # ---- sampling and bits/dim, shared by the processes ----------------------------------------------------
    show = main and not args.no_progress
    bar = Progress(args.num_samples, unit="img", desc=f"sampling ({args.sampler})", enabled=show)
    try:
        samples = draw_samples(
            pipe,
            args.sampler,
            args.num_samples,
            nfe=args.nfe,
            tolerance=args.tolerance,
            batch_size=args.batch_size,
            seed=args.seed,
            on_model_call=bar.model_call,
            on_samples=bar.update,
            processes=processes,
            samples_dir=args.samples_dir,
            batch_invariant=args.batch_invariant,
        )
    finally:
        bar.close()
    bpd = None
    if args.bpd_images > 0:
        bpd_bar = Progress(args.bpd_images, unit="img", desc="bits/dim", enabled=show)
        try:
            bpd = heldout_bits_per_dim(
                pipe,
                reference,
                num_images=args.bpd_images,
                batch_size=args.bpd_batch_size,
                rtol=args.bpd_rtol,
                atol=args.bpd_atol,
                seed=args.seed,
                on_batch=lambda done, mean: bpd_bar.update(done - bpd_bar.bar.n, bpd=f"{mean:.4f}"),
                processes=processes,
                batch_invariant=args.batch_invariant,
            )
        finally:
            bpd_bar.close()
    if not main:
        return 0

    # ---- metrics and the report: the main process --------------------------------------------------------
    t_features = time.perf_counter()
    # fixed extractor batches in index order: the features do not depend on how the samples were drawn
    real = features_of(reference.unit_range(), extractor)
    real_stats = FeatureStatistics.from_features(real, allow_small_sample=args.allow_small_sample)
    fake = features_of(samples.images, extractor)
    metrics: dict[str, Any] = sample_quality(
        fake,
        real,
        real_statistics=real_stats,
        kid_subsets=args.kid_subsets,
        pr_k=args.pr_k,
        seed=args.seed,
        allow_small_sample=args.allow_small_sample,
    )
    features_s = time.perf_counter() - t_features
    metrics["bits_per_dim"] = bpd["bits_per_dim"] if bpd else None
    metrics["bits_per_dim_stderr"] = bpd["bits_per_dim_stderr"] if bpd else None

    if args.save_grid:
        import PIL.Image
        from diffusers.utils import make_image_grid

        from sde_diffusers.pipelines import ScoreSdePipeline

        shown = samples.images[: min(64, len(samples.images))]
        cols = min(8, len(shown))
        rows = math.ceil(len(shown) / cols)
        pil = ScoreSdePipeline.numpy_to_pil(shown.permute(0, 2, 3, 1).numpy())
        pil += [PIL.Image.new(pil[0].mode, pil[0].size)] * (rows * cols - len(pil))  # black padding
        Path(args.save_grid).parent.mkdir(parents=True, exist_ok=True)
        make_image_grid(pil, rows=rows, cols=cols).save(args.save_grid)

    report = {
        "model_dir": os.fspath(args.model_dir),
        "sde": plan.sde_type,
        "sampler": args.sampler,
        "steps": samples.steps,
        "tolerance": plan.tolerance,
        "nfe": samples.nfe,
        "nfe_per_sample": samples.nfe_per_sample,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "seeds": {
            "base": args.seed,
            "sample i": "torch.Generator('cpu').manual_seed(sde_diffusers.distributed.item_seed(seed, i))",
        },
        "num_processes": processes.num_processes,
        "batch_invariant": args.batch_invariant,
        "samples_dir": args.samples_dir,
        "resumed_samples": samples.resumed_samples,
        "metrics": metrics,
        "sampler_settings": samples.settings,
        "reference": {**reference.info, "description": reference.description},
        "feature_extractor": {
            "name": extractor_name,
            "feature_dim": int(extractor.feature_dim),
            "input": "8-bit quantized, resized bilinearly to the extractor's input size (same path for both sets)",
        },
        "bits_per_dim": bpd,
        "timing": {
            "sampling_s": samples.seconds,
            "features_and_metrics_s": features_s,
            "bits_per_dim_s": bpd["seconds"] if bpd else 0.0,
            "total_s": time.perf_counter() - start,
            "wall_time_s": time.perf_counter() - start,
            "seconds_per_model_call": samples.seconds / max(samples.model_calls, 1) if samples.model_calls else None,
        },
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "date": datetime.date.today().isoformat(),
        },
    }
    report["timing"]["total_s"] = report["timing"]["wall_time_s"] = time.perf_counter() - start
    out = Path(args.out) if args.out else Path(args.model_dir) / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"report: {out}")
    return 0
