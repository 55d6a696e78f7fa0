"""The score-SDE trainer: ``python training/train_score_sde.py``, ``accelerate launch`` or ``sde-diffusers train``.

Installed as ``sde_diffusers.training``. :func:`train` runs a :class:`TrainingConfig` in-process;
:mod:`~sde_diffusers.training.checkpointing` holds the crash-safe checkpoint helpers.
"""

from .checkpointing import is_checkpoint, list_checkpoints, read_trainer_state, resolve_checkpoint
from .train_score_sde import (
    TrainingConfig,
    TrainingInputError,
    TrainingResult,
    add_arguments,
    build_parser,
    config_from_args,
    load_config_file,
    main,
    train,
    validate_config,
)

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "TrainingInputError",
    "train",
    "validate_config",
    "main",
    "add_arguments",
    "build_parser",
    "config_from_args",
    "load_config_file",
    "is_checkpoint",
    "list_checkpoints",
    "read_trainer_state",
    "resolve_checkpoint",
]
