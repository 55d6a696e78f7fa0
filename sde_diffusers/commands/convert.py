"""``sde-diffusers convert CHECKPOINT --config NAME_OR_JSON --output-dir DIR``: an official score_sde checkpoint as a
pipeline folder of this package (see :func:`sde_diffusers.convert_score_sde_checkpoint`).

Every check (config, checkpoint format, keys, shapes, EMA, Hub token with ``--push-to-hub``) runs before anything is
written; a problem is reported as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

NAME = "convert"
HELP = "convert an official score_sde_pytorch checkpoint (checkpoint_N.pth) into a pipeline folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint_N.pth written by score_sde's run_lib")
    parser.add_argument(
        "--config",
        required=True,
        metavar="NAME_OR_JSON",
        help="released config name, e.g. ve/cifar10_ncsnpp_continuous (an unknown name lists them all), or a JSON "
        "file with the official sections model, data, training, sampling",
    )
    parser.add_argument("--output-dir", required=True, help="folder to write the pipeline to (created if missing)")
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="use the raw training weights instead of their exponential moving average (the paper's)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private (with --push-to-hub)")
    parser.add_argument("--license", default="apache-2.0", help="licence declared in the model card")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.convert import convert_score_sde_checkpoint, converted_model_card
    from sde_diffusers.hub_utils import check_push_arguments, push_pipeline_to_hub

    out = os.path.abspath(args.output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        return _fail(f"--output-dir {args.output_dir} exists and is not a folder")
    token = None
    if args.push_to_hub is not None:
        try:
            token = check_push_arguments(args.push_to_hub, private=args.private)
        except (ValueError, TypeError) as err:
            return _fail(str(err))
    try:
        pipe = convert_score_sde_checkpoint(args.checkpoint, args.config, use_ema=not args.raw_weights)
        card = converted_model_card(
            pipe.conversion,
            os.path.basename(args.checkpoint),
            use_ema=not args.raw_weights,
            repo_id=args.push_to_hub,
            license=args.license,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _fail(str(err))

    pipe.save_pretrained(out)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)
    conversion = pipe.conversion
    print(
        f"converted {args.checkpoint} ({conversion.name}, {'raw' if args.raw_weights else 'EMA'} weights) -> {out}: "
        f"{type(pipe.unet).__name__} with time input {pipe.unet.time_input!r}, {type(pipe.scheduler).__name__}"
    )
    if args.push_to_hub is not None:
        commit = push_pipeline_to_hub(out, args.push_to_hub, token=token, private=args.private)
        print(f"pushed to {commit.repo_url.repo_id} ({commit.commit_url})")
    return 0
