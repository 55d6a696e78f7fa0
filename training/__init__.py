"""The trainer: ``python training/train_score_sde.py``, ``accelerate launch`` or ``sde-diffusers train``.

Installed as ``sde_diffusers.training``. :func:`train` runs a :class:`TrainingConfig` in-process. The modules, in
the order a run uses them:

* :mod:`.config`: :class:`TrainingConfig`, its command line and JSON config files;
* :mod:`.plan`: :func:`validate_config`, every check before anything is written, and the :class:`TrainingPlan`;
* :mod:`.corruptions`: one strategy per ``--corruption`` (Gaussian SDE, blur + noise);
* :mod:`.trainer`: the ``accelerate`` training loop with exact resume;
* :mod:`.export`: the exported pipeline, model card, Hub upload and summary;
* :mod:`.checkpointing`: the crash-safe checkpoint helpers.
"""

from .checkpointing import is_checkpoint, list_checkpoints, read_trainer_state, resolve_checkpoint
from .config import (
    TrainingConfig,
    TrainingInputError,
    TrainingResult,
    add_arguments,
    build_parser,
    config_from_args,
    load_config_file,
)
from .plan import TrainingPlan, validate_config
from .train_score_sde import main, run_from_args
from .trainer import Trainer, train

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "TrainingInputError",
    "TrainingPlan",
    "Trainer",
    "train",
    "validate_config",
    "main",
    "run_from_args",
    "add_arguments",
    "build_parser",
    "config_from_args",
    "load_config_file",
    "is_checkpoint",
    "list_checkpoints",
    "read_trainer_state",
    "resolve_checkpoint",
]
