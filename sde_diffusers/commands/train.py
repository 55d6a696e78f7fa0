"""``sde-diffusers train``: the score-SDE trainer (:mod:`sde_diffusers.training.train_score_sde`)."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train an NCSN++ / DDPM++ score model on images (accelerate; same options as training/train_score_sde.py)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sde_diffusers.training.train_score_sde import add_arguments as add_trainer_arguments

    add_trainer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.training.train_score_sde import run_from_args

    return run_from_args(args)
