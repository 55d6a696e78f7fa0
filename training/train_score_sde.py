"""Train a score-based model (NCSN++ / DDPM++) on images with continuous-time denoising score matching.

``--corruption blur`` trains a Soft Diffusion model instead (Daras et al. 2022): a DDPM++ network predicts ``x_0``
of the blur + noise corruption ``x_t = C_t x_0 + s_t eta`` with levels fitted to the training images, trained by
Soft Score Matching and exported as a :class:`~sde_diffusers.pipelines.SoftDiffusionPipeline`.

Runs the same way everywhere; ``accelerate`` handles devices, distributed data parallel, mixed precision,
gradient accumulation, checkpoint state and TensorBoard::

    python training/train_score_sde.py --dataset_name digits --model_preset ddpmpp-tiny --max_train_steps 2000
    python training/train_score_sde.py --dataset_name digits --corruption blur --max_train_steps 2000
    accelerate launch training/train_score_sde.py --config training/configs/mnist_vp.json
    torchrun --nproc_per_node 2 training/train_score_sde.py ...     # two CPU processes over gloo
    sde-diffusers train ...                                         # the same options

Outputs in ``--output_dir``: ``pipeline/`` (the EMA weights as a pipeline in the shim layout, with a model
card and a sample grid), ``checkpoints/`` (crash-safe, see :mod:`sde_diffusers.training.checkpointing`),
``logs/`` (TensorBoard), ``samples/`` (periodic grids) and ``train_summary.json``.

The trainer itself lives in the package: :mod:`~sde_diffusers.training.config` (options and command line),
:mod:`~sde_diffusers.training.plan` (validation and planning), :mod:`~sde_diffusers.training.trainer` (the loop),
:mod:`~sde_diffusers.training.export` (pipeline, model card, Hub) and :mod:`~sde_diffusers.training.corruptions`
(what differs between ``--corruption gaussian`` and ``blur``).
"""

from __future__ import annotations

import argparse
import sys

from sde_diffusers.training.config import TrainingInputError, build_parser, config_from_args
from sde_diffusers.training.trainer import train

__all__ = ["run_from_args", "main"]


def run_from_args(args: argparse.Namespace) -> int:
    """Run the trainer from parsed arguments; a user's mistake prints one line ``error: ...`` and returns 2."""
    try:
        result = train(config_from_args(args))
    except (TrainingInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.pipeline_dir:
        line = f"done: {result.global_step} steps"
        if result.final_loss is not None:
            line += f", final loss {result.final_loss:.4g}"
        if result.bits_per_dim is not None:
            line += f", {result.bits_per_dim:.3f} bits/dim"
        print(f"{line}; pipeline in {result.pipeline_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python training/train_score_sde.py [options]``; the exit status."""
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
