"""``sde-diffusers inpaint MODEL_DIR --image IMG --mask MASK``: fill the masked region with a saved score model.

The mask follows Diffusers' convention: white repaints, black keeps. Each result is written as a PNG; the kept pixels
equal the input's.
"""

from __future__ import annotations

import argparse

from .sample import add_common_arguments, check_output_dir, generate, load_pipeline, write_images

NAME = "inpaint"
HELP = "inpaint an image with a saved score model (white mask pixels are repainted) and write PNGs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_prefix="inpainted")
    parser.add_argument("--image", required=True, help="image file to complete (the model's size and channels)")
    parser.add_argument("--mask", required=True, help="mask file: white = repaint, black = keep")
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="binarise a soft mask: repaint where mask >= threshold (in [0, 1])",
    )
    add_method_arguments(parser)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--guidance-scale``, ``--guidance-variance``, ``--num-particles`` and ``--smc-lookahead``
    (inpaint and colorize)."""
    parser.add_argument(
        "--method",
        default=None,
        choices=["replacement", "guidance", "guidance+replacement", "smc"],
        help="conditioning: the paper's replacement (default), Tweedie likelihood guidance (the default and only "
        "choice for adaptive samplers), both, or 'smc' (weighted particles, --num-particles times the cost; see the "
        "README for which to use when)",
    )
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument(
        "--guidance-variance",
        default="jacobian",
        help="'jacobian' (estimated from the model, default) or a number: the data's per-pixel variance",
    )
    parser.add_argument(
        "--num-particles",
        type=int,
        default=None,
        help="particles per image with --method smc (default 16); one batch of images x particles per model call",
    )
    parser.add_argument(
        "--smc-lookahead",
        action="store_true",
        help="with --method smc: evaluate the twist one probability-flow step ahead (fixes samples shrinking between "
        "well-separated modes; two model calls and three backward passes per particle and step, not one and two)",
    )


def method_kwargs(args: argparse.Namespace) -> dict:
    """The pipeline keyword arguments of :func:`add_method_arguments`."""
    return {
        "method": args.method,
        "guidance_scale": args.guidance_scale,
        "guidance_variance": _variance(args.guidance_variance),
        "num_particles": args.num_particles,
        "smc_lookahead": args.smc_lookahead,
    }


def _variance(text: str) -> float | str:
    if text == "jacobian":
        return text
    try:
        return float(text)
    except ValueError as err:
        raise SystemExit(f"error: --guidance-variance must be 'jacobian' or a number, got {text!r}") from err


def open_image(path: str, option: str):
    """Open an image file for a command (a clear error instead of a traceback)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        raise SystemExit(f"error: cannot read {option} {path!r}: {err}") from err
    return image


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.pipelines import ScoreSdeInpaintPipeline

    check_output_dir(args)
    options = method_kwargs(args)
    image, mask = open_image(args.image, "--image"), open_image(args.mask, "--mask")
    pipe = load_pipeline(args, ScoreSdeInpaintPipeline)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if pipe.unet.config.in_channels == 3 else "L")
    if mask.mode not in ("1", "L"):
        mask = mask.convert("L")
    images = generate(
        pipe,
        args,
        image,
        mask,
        mask_threshold=args.mask_threshold,
        **options,
    )
    write_images(args, images)
    return 0
