"""``sde-diffusers colorize MODEL_DIR --image GREY``: colour a grayscale image with a colour score model.

A colour input file is converted to grey first (``--grey-weights``: the mean of R, G, B as in the paper, or e.g.
``0.299 0.587 0.114`` for PIL's luma). Each result is written as a PNG whose grey level equals the input's.
"""

from __future__ import annotations

import argparse

from .inpaint import add_method_arguments, method_kwargs, open_image
from .sample import add_common_arguments, check_output_dir, generate, load_pipeline, write_images

NAME = "colorize"
HELP = "colorize a grayscale image with a saved score model of colour images and write PNGs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_prefix="colorized")
    parser.add_argument("--image", required=True, help="grayscale image file (a colour file is converted to grey)")
    parser.add_argument(
        "--grey-weights",
        type=float,
        nargs=3,
        default=None,
        metavar=("R", "G", "B"),
        help="weights of R, G, B in the grey level (default: the mean, as in the paper)",
    )
    add_method_arguments(parser)


def _to_grey(image, weights):
    """A PIL image as a float (H, W) grey array in [0, 1] with the given channel weights."""
    import numpy as np

    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    w = np.asarray(weights or (1.0, 1.0, 1.0), dtype=np.float64)
    return (rgb @ (w / w.sum())).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.pipelines import ScoreSdeColorizationPipeline

    check_output_dir(args)
    options = method_kwargs(args)
    grey = _to_grey(open_image(args.image, "--image"), args.grey_weights)
    pipe = load_pipeline(args, ScoreSdeColorizationPipeline)
    images = generate(
        pipe,
        args,
        grey,
        grey_weights=args.grey_weights,
        **options,
    )
    write_images(args, images)
    return 0
