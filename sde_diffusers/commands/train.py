"""``sde-diffusers train``: the trainer (:mod:`sde_diffusers.training`), with the options of
``training/train_score_sde.py``. A user's mistake prints one line ``error: ...`` and exits with status 2."""

from __future__ import annotations

import argparse

from sde_diffusers.training import add_arguments as add_trainer_arguments
from sde_diffusers.training import run_from_args

NAME = "train"
HELP = "train an NCSN++ / DDPM++ score model on images (accelerate; same options as training/train_score_sde.py)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trainer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_from_args(args)
