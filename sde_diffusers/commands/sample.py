"""``sde-diffusers sample MODEL_DIR``: generate images with a saved score model and write them as PNG files.

MODEL_DIR is a pipeline folder or Hub repo id saved by any sde-diffusers pipeline (or a plain Diffusers pipeline
with a ``unet`` and a ``scheduler``, e.g. a ``DDPMPipeline``). The helpers here are shared by the ``inpaint`` and
``colorize`` commands.

``sample`` scales out: under ``torchrun`` / ``accelerate launch`` the processes share the blocks of
``--batch-size`` images and the main process writes every PNG; image i depends only on (seed, i), so the files are
the same for any number of processes. PNGs are written atomically as blocks finish, next to ``PREFIX_run.json``
(the run's settings): the same command started again after a kill draws only the missing images, and a folder
holding a run with other settings is refused before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
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


def add_common_arguments(
    parser: argparse.ArgumentParser, default_prefix: str, batch_help: str = "all at once"
) -> None:
    """Arguments every generating command takes (model, output, sampler, seed, device, classes)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="saved pipeline folder or Hub repo id")
    parser.add_argument("--output-dir", required=True, help="folder for the PNG files (created if missing)")
    parser.add_argument("--prefix", default=default_prefix, help=f"file name prefix (default: {default_prefix})")
    parser.add_argument("--num-images", type=_positive_int, default=4, help="images to write (default: 4)")
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"images per pipeline call (default: {batch_help})",
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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed >= 0; image i draws its noise from a generator seeded with (seed, i) (default: 0)",
    )
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


def load_pipeline(args: argparse.Namespace, pipeline_class: type, device: str | torch.device | None = None) -> Any:
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
    device = device or args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)


def batches(args: argparse.Namespace) -> list[range]:
    """Index ranges of the images each pipeline call makes."""
    size = args.batch_size or args.num_images
    return [range(i, min(i + size, args.num_images)) for i in range(0, args.num_images, size)]


def generators(indices: range, seed: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded with ``item_seed(seed, i)``: image i is the same whatever the batch."""
    from sde_diffusers.distributed import item_generators

    return item_generators(seed, indices)


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
                generator=generators(indices, args.seed),
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
#: Images per block when --batch-size is not given.
DEFAULT_BATCH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._shared import add_run_arguments

    add_common_arguments(parser, default_prefix="sample", batch_help=f"all at once, at most {DEFAULT_BATCH}")
    add_run_arguments(parser, shards="image", device=False)


def _settings(args: argparse.Namespace, pipe: Any, batch_size: int) -> dict:
    """Everything the PNGs depend on: the identity of a resumable run."""
    from sde_diffusers.distributed import model_fingerprint

    config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return {
        "model": model_fingerprint(pipe.unet, getattr(pipe, "classifier", None)),
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": config,
        "steps": args.steps,
        **sampler_kwargs(args),
        "class_labels": args.class_labels,
        "classifier_scale": args.classifier_scale,
        "num_images": args.num_images,
        "batch_size": batch_size,
        "batch_invariant": args.batch_invariant,
        "seed": args.seed,
        "seeding": "image i: torch.Generator('cpu').manual_seed(sde_diffusers.distributed.item_seed(seed, i))",
        "device_type": pipe.device.type,
        "dtype": str(pipe.unet.dtype),
    }


def _png_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``(H, W, C)`` image as PNG bytes (the PIL conversion of ``numpy_to_pil``)."""
    import io

    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.distributed import Processes, ShardStore, atomic_write_bytes, run_blocks, split_blocks
    from sde_diffusers.pipelines import ScoreSdePipeline
    from sde_diffusers.validation import check_int

    from ._shared import Progress, check_threads

    # ---- input checks, before any work ----------------------------------------------------------------------
    check_output_dir(args)
    check_int("--seed", args.seed, minimum=0)
    check_threads(args)
    sampler_kwargs(args)
    labels_for(args, range(0))
    batch_size = args.batch_size or min(args.num_images, DEFAULT_BATCH)
    processes = Processes(args.device)
    with processes.agree():
        pipe = load_pipeline(args, ScoreSdePipeline, device=processes.device)
    pipe.set_progress_bar_config(disable=True)
    out = Path(args.output_dir)
    blocks = split_blocks(args.num_images, batch_size)
    store = ShardStore(out, _settings(args, pipe, batch_size), name=args.prefix)

    def png(i: int) -> Path:
        return out / f"{args.prefix}_{i:04d}.png"

    def finished_blocks() -> set[int]:
        store.check_manifest()
        return {k for k, block in enumerate(blocks) if all(png(i).is_file() for i in block)}

    done = processes.on_main(finished_blocks)

    # ---- sampling: blocks shared by the processes, PNGs written by the main process ----------------------------
    def draw(block: range) -> np.ndarray:
        groups = [range(i, i + 1) for i in block] if args.batch_invariant else [block]
        images = []
        for indices in groups:
            # a pipeline's ValueError (bad classes, sampler options) reaches every process and the CLI's one line
            result = pipe(
                batch_size=len(indices),
                num_inference_steps=args.steps,
                generator=generators(indices, args.seed),
                class_labels=labels_for(args, indices),
                classifier_scale=args.classifier_scale,
                output_type="np",
                **sampler_kwargs(args),
            )
            images.append((result.images * 255).round().astype("uint8"))  # numpy_to_pil's rounding
        return np.concatenate(images)

    bar = Progress(
        args.num_images, unit="img", desc="sampling", enabled=processes.is_main_process and not args.no_progress
    )
    bar.update(sum(len(blocks[k]) for k in done))

    def write(index: int, images: np.ndarray) -> None:
        for i, image in zip(blocks[index], images, strict=True):
            atomic_write_bytes(png(i), _png_bytes(image))
        bar.update(len(images))

    try:
        run_blocks(processes, blocks, draw, skip=done, on_result=write)
    finally:
        bar.close()
    if not processes.is_main_process:
        return 0
    written = args.num_images - sum(len(blocks[k]) for k in done)
    if args.grid:
        import PIL.Image
        from diffusers.utils import make_image_grid

        images = [PIL.Image.open(png(i)) for i in range(args.num_images)]
        cols = max(1, int(len(images) ** 0.5))
        while len(images) % cols:
            cols -= 1
        grid = make_image_grid(images, rows=len(images) // cols, cols=cols)
        grid.save(out / f"{args.prefix}_grid.png")
    again = f" ({args.num_images - written} were there already)" if written < args.num_images else ""
    print(f"wrote {written} image(s) to {out}" + again + (" (and a grid)" if args.grid else ""))
    return 0
