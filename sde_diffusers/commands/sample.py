"""``sde-diffusers sample MODEL_DIR``: generate images with a saved score model and write them as PNG files.

MODEL_DIR is a pipeline folder or Hub repo id saved by any sde-diffusers pipeline (or a plain Diffusers pipeline
with a ``unet`` and a ``scheduler``, e.g. a ``DDPMPipeline``). The helpers here are shared by the ``inpaint`` and
``colorize`` commands.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

NAME = "sample"
HELP = "generate images with a saved score model (PC, probability-flow or any swapped-in scheduler) and write PNGs"


# ---------------------------------------------------------------------------------------------------------
# Shared by sample / inpaint / colorize
# ---------------------------------------------------------------------------------------------------------
def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string, e.g. predictor=ancestral


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, default_prefix: str) -> None:
    """Arguments every generating command takes (model, output, sampler, seed, device, classes)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="saved pipeline folder or Hub repo id")
    parser.add_argument("--output-dir", required=True, help="folder for the PNG files (created if missing)")
    parser.add_argument("--prefix", default=default_prefix, help=f"file name prefix (default: {default_prefix})")
    parser.add_argument("--num-images", type=_positive_int, default=4, help="images to write (default: 4)")
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per pipeline call (default: all at once)",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=1000,
        help="num_inference_steps: noise levels of the sampler (default: 1000)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="swap in another scheduler class built from the saved config, e.g. DDIMScheduler, "
        "VESDEScheduler, ProbabilityFlowScheduler (default: the saved one)",
    )
    parser.add_argument(
        "--scheduler-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scheduler config override (JSON value), repeatable, e.g. snr=0.075 predictor=ancestral",
    )
    parser.add_argument(
        "--sampler",
        default="scheduler",
        choices=["scheduler", "adaptive_ode", "adaptive_sde"],
        help="the scheduler's loop (default), or an adaptive solver that picks its own steps",
    )
    parser.add_argument(
        "--sampler-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adaptive solver option (JSON value), repeatable, e.g. rtol=0.01 atol=0.001",
    )
    parser.add_argument(
        "--class-labels",
        type=int,
        nargs="+",
        default=None,
        help="class of each image (one value: all images); needs a class-conditional model or a "
        "classifier in the pipeline",
    )
    parser.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; image i uses seed + i (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--grid", action="store_true", help="also write all images as one grid PNG")


def _scheduler_class(name: str) -> type:
    import diffusers

    import sde_diffusers

    for module in (sde_diffusers, diffusers):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and hasattr(cls, "from_config"):
            return cls
    raise SystemExit(f"error: --scheduler {name!r} is not a scheduler class of sde_diffusers or diffusers")


def load_pipeline(args: argparse.Namespace, pipeline_class: type) -> Any:
    """Load MODEL_DIR as ``pipeline_class`` (sharing components), swap the scheduler if asked, move to the device."""
    from diffusers import DiffusionPipeline

    import sde_diffusers
    from sde_diffusers.pipelines.pipeline_utils import SDEDiffusionPipeline

    path = args.model_dir
    try:
        saved_class = SDEDiffusionPipeline.load_config(path)["_class_name"]
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read a pipeline from MODEL_DIR {path!r}: {err}") from err
    ours = getattr(sde_diffusers, str(saved_class), None)
    if isinstance(ours, type) and issubclass(ours, SDEDiffusionPipeline):
        loaded = SDEDiffusionPipeline.from_pretrained(path)
    else:
        loaded = DiffusionPipeline.from_pretrained(path)  # a plain Diffusers pipeline (e.g. DDPMPipeline)
    components = loaded.components
    if "unet" not in components or "scheduler" not in components:
        raise SystemExit(f"error: {path} has no unet and scheduler (components: {sorted(components)})")
    scheduler = components["scheduler"]
    if args.scheduler is not None or args.scheduler_option:
        cls = _scheduler_class(args.scheduler) if args.scheduler else type(scheduler)
        scheduler = cls.from_config(scheduler.config, **dict(args.scheduler_option))
    pipe = pipeline_class(unet=components["unet"], scheduler=scheduler, classifier=components.get("classifier"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)


def batches(args: argparse.Namespace) -> list[range]:
    """Index ranges of the images each pipeline call makes."""
    size = args.batch_size or args.num_images
    return [range(i, min(i + size, args.num_images)) for i in range(0, args.num_images, size)]


def generators(indices: range, seed: int, device: str | torch.device) -> list[torch.Generator]:
    """One generator per image (seed + index), so image i is the same whatever the batch size."""
    gen_device = "cpu" if torch.device(device).type == "mps" else device
    return [torch.Generator(device=gen_device).manual_seed(seed + i) for i in indices]


def labels_for(args: argparse.Namespace, indices: range) -> list[int] | None:
    """Class labels of the images in ``indices`` (``None`` without ``--class-labels``)."""
    if args.class_labels is None:
        return None
    if len(args.class_labels) not in (1, args.num_images):
        raise SystemExit(
            f"error: --class-labels needs 1 value or one per image ({args.num_images}), got {len(args.class_labels)}"
        )
    return [args.class_labels[0] if len(args.class_labels) == 1 else args.class_labels[i] for i in indices]


def sampler_kwargs(args: argparse.Namespace) -> dict:
    """``sampler`` and ``sampler_options`` for a pipeline call."""
    options = dict(args.sampler_option)
    if options and args.sampler == "scheduler":
        raise SystemExit("error: --sampler-option needs --sampler adaptive_ode or adaptive_sde")
    return {"sampler": args.sampler, "sampler_options": options or None}


def generate(pipe: Any, args: argparse.Namespace, *inputs: Any, **kwargs: Any) -> list:
    """Call ``pipe`` batch by batch (image i seeded with seed + i); bad arguments end the command with a message."""
    images = []
    for indices in batches(args):
        try:
            out = pipe(
                *inputs,
                batch_size=len(indices),
                num_inference_steps=args.steps,
                generator=generators(indices, args.seed, pipe.device),
                class_labels=labels_for(args, indices),
                classifier_scale=args.classifier_scale,
                **sampler_kwargs(args),
                **kwargs,
            )
        except (ValueError, TypeError) as err:
            raise SystemExit(f"error: {err}") from err
        images.extend(out.images)
    return images


def write_images(args: argparse.Namespace, images: list) -> list[Path]:
    """Write ``images`` (PIL) as ``PREFIX_0000.png`` ... (and a grid with ``--grid``); return the paths."""
    from diffusers.utils import make_image_grid

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{args.prefix}_{i:04d}.png"
        image.save(path)
        paths.append(path)
    if args.grid:
        cols = max(1, int(len(images) ** 0.5))
        while len(images) % cols:
            cols -= 1
        path = out / f"{args.prefix}_grid.png"
        make_image_grid(images, rows=len(images) // cols, cols=cols).save(path)
        paths.append(path)
    print(f"wrote {len(images)} image(s) to {out}" + (" (and a grid)" if args.grid else ""))
    return paths


def check_output_dir(args: argparse.Namespace) -> None:
    """Fail before sampling if the output folder cannot be written."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --output-dir {out} exists and is not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise SystemExit(f"error: --output-dir {out} is not writable")


# ---------------------------------------------------------------------------------------------------------
# The sample command
# ---------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_prefix="sample")


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.pipelines import ScoreSdePipeline

    check_output_dir(args)
    pipe = load_pipeline(args, ScoreSdePipeline)
    write_images(args, generate(pipe, args))
    return 0
