"""Validation and planning: every option and input is checked, and the data, model and scheduler are built, before
the first file is written.

:func:`validate_config` never changes the config it is given: options resolved from their defaults (the SDE of
the preset, ``reduce_mean``, the resolution of the data, VE's ``sigma_max``) are returned in a new config inside
the :class:`TrainingPlan`. What depends on ``--corruption`` is asked of its strategy
(:mod:`sde_diffusers.training.corruptions`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sde_diffusers.data import ImageData, load_image_data
from sde_diffusers.hub_utils import check_push_arguments
from sde_diffusers.models import from_preset, get_preset
from sde_diffusers.validation import check_bool, check_choice, check_int, check_number

from .checkpointing import list_checkpoints, read_trainer_state, resolve_checkpoint
from .config import (
    LR_SCHEDULERS,
    MIXED_PRECISION,
    REPORT_TO,
    RESUME_KEYS,
    SOFT_WEIGHTINGS,
    TrainingConfig,
    TrainingInputError,
)
from .corruptions import CORRUPTIONS, TrainingCorruption, foreign_options

__all__ = ["TrainingPlan", "validate_config", "world_size"]

_SCORE_NETWORKS = ("NCSNppModel", "DDPMppModel")


@dataclass(frozen=True)
class TrainingPlan:
    """A checked run: the resolved options and everything built from them (nothing written yet).

    Args:
        config (`TrainingConfig`): the options, with the defaults that depend on the data and preset resolved.
        corruption (`TrainingCorruption`): the strategy of ``config.corruption``.
        data (`ImageData`): the training images.
        eval_data (`ImageData`, *optional*): held-out images for bits/dim.
        eval_note (`str`): what ``eval_data`` is, for logs and the model card.
        model (`torch.nn.Module`): the network with its initial weights (seeded by ``config.seed``).
        scheduler: the scheduler the model is trained for, sampled and exported with.
        output_dir, checkpoints_dir (`Path`): where the run writes.
        resume_dir (`Path`, *optional*): the checkpoint to continue from.
        hub_token (`str`, *optional*): the token for ``push_to_hub``.
    """

    config: TrainingConfig
    corruption: TrainingCorruption
    data: ImageData
    eval_data: ImageData | None
    eval_note: str
    model: torch.nn.Module
    scheduler: Any
    output_dir: Path
    checkpoints_dir: Path
    resume_dir: Path | None
    hub_token: str | None

    @property
    def sde(self) -> Any:
        """The SDE of a Gaussian-corruption scheduler (``None`` for other corruptions)."""
        return getattr(self.scheduler, "sde", None)


def world_size() -> int:
    """Processes of the run, before the Accelerator exists: what the launcher (torchrun, accelerate) announces."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingInputError(message)


def _user_error(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a ``sde_diffusers.validation`` check; a ``TypeError`` / ``ValueError`` becomes a ``TrainingInputError``."""
    try:
        return check(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise TrainingInputError(str(err)) from err


def _check_numbers(cfg: TrainingConfig) -> None:
    """The ranges of every numeric and choice option (the same for every corruption)."""
    ints = {
        "--num_train_timesteps": 2,
        "--train_batch_size": 1,
        "--max_train_steps": 1,
        "--gradient_accumulation_steps": 1,
        "--lr_warmup_steps": 0,
        "--seed": 0,
        "--checkpointing_steps": 0,
        "--logging_steps": 1,
        "--sample_every": 0,
        "--num_sample_images": 1,
        "--num_inference_steps": 1,
        "--eval_bpd_images": 0,
    }
    for flag, minimum in ints.items():
        _user_error(check_int, flag, getattr(cfg, flag[2:]), minimum)
    if cfg.checkpoints_total_limit is not None:
        _user_error(check_int, "--checkpoints_total_limit", cfg.checkpoints_total_limit, 1)
    positive = ("--sigma_min", "--beta_min", "--learning_rate", "--adam_epsilon")
    for flag in positive:
        _user_error(check_number, flag, getattr(cfg, flag[2:]), 0.0, strict=True)
    if cfg.sigma_max is not None:
        _user_error(check_number, "--sigma_max", cfg.sigma_max, cfg.sigma_min, strict=True)
    _user_error(check_number, "--beta_max", cfg.beta_max, cfg.beta_min, strict=True)
    _user_error(check_number, "--train_eps", cfg.train_eps, 0.0, 1.0, strict=True)
    _user_error(check_number, "--eval_bpd_tolerance", cfg.eval_bpd_tolerance, 0.0, 1.0, strict=True)
    _user_error(check_number, "--adam_weight_decay", cfg.adam_weight_decay, 0.0)
    if cfg.max_grad_norm is not None:
        _user_error(check_number, "--max_grad_norm", cfg.max_grad_norm, 0.0, strict=True)
    for flag in ("--adam_beta1", "--adam_beta2", "--ema_decay"):  # in [0, 1)
        value = _user_error(check_number, flag, getattr(cfg, flag[2:]), 0.0, 1.0)
        _check(value < 1.0, f"`{flag}` must lie in [0.0, 1.0), got {value!r}")
    for flag, choices in (
        ("--lr_scheduler", LR_SCHEDULERS),
        ("--mixed_precision", MIXED_PRECISION),
        ("--report_to", REPORT_TO),
        ("--soft_weighting", SOFT_WEIGHTINGS),
    ):
        _user_error(check_choice, flag, getattr(cfg, flag[2:]), choices)
    for flag in (
        "--center_crop",
        "--random_flip",
        "--class_conditional",
        "--likelihood_weighting",
        "--use_ema",
        "--use_cpu",
        "--overwrite_output_dir",
        "--save_final_checkpoint",
        "--progress_bar",
        "--push_to_hub",
        "--hub_private",
    ):
        _user_error(check_bool, flag, getattr(cfg, flag[2:]))
    _check(
        cfg.mixed_precision != "fp16" or (torch.cuda.is_available() and not cfg.use_cpu),
        "--mixed_precision fp16 needs a CUDA GPU; use 'no' (or 'bf16') on this machine",
    )
    _check(
        isinstance(cfg.output_dir, (str, os.PathLike)) and str(cfg.output_dir) != "",
        "--output_dir must be a path",
    )


def _check_options(cfg: TrainingConfig) -> tuple[TrainingCorruption, Any, dict[str, Any]]:
    """Options alone (no data, no files): the strategy, the model preset and the options resolved from defaults."""
    _check(isinstance(cfg, TrainingConfig), f"config must be a TrainingConfig, got {type(cfg).__name__}")
    _check(
        (cfg.dataset_name is None) != (cfg.train_data_dir is None),
        "pass exactly one of --dataset_name (digits, mnist or a Hub dataset id) and --train_data_dir",
    )
    try:
        preset = get_preset(cfg.model_preset)
    except ValueError as err:
        raise TrainingInputError(f"--model_preset: {err}") from err
    _check(
        preset.model_class in _SCORE_NETWORKS,
        f"--model_preset {cfg.model_preset!r} builds a {preset.model_class}, not a score network",
    )
    _check(isinstance(cfg.model_config, dict), "--model_config must be a JSON object")
    managed = sorted({"in_channels", "sample_size", "num_class_embeds"} & set(cfg.model_config))
    _check(
        not managed,
        f"--model_config must not set {managed}: they follow the data (--resolution, "
        "--image_mode, --class_conditional)",
    )
    corruption = CORRUPTIONS.get(cfg.corruption)
    _check(corruption is not None, f"--corruption must be one of {tuple(CORRUPTIONS)}, got {cfg.corruption!r}")
    corruption.refuse_foreign_options(cfg, foreign_options(corruption))
    _check_numbers(cfg)
    resolved = corruption.check(cfg, preset)
    if cfg.push_to_hub:
        _check(bool(cfg.hub_model_id), "--push_to_hub needs --hub_model_id user/name")
    else:
        _check(cfg.hub_token is None, "--hub_token is only used with --push_to_hub")
    return corruption, preset, resolved


def _check_output_dir(cfg: TrainingConfig, output_dir: Path, checkpoints_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise TrainingInputError(f"--output_dir {str(output_dir)!r} is not writable: {err}") from err
    if cfg.resume_from_checkpoint is None and list_checkpoints(checkpoints_dir) and not cfg.overwrite_output_dir:
        raise TrainingInputError(
            f"--output_dir {str(output_dir)!r} already holds checkpoints of a training run; pass "
            "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over, or another "
            "--output_dir"
        )


def _check_resume(cfg: TrainingConfig, resume_dir: Path) -> None:
    saved = read_trainer_state(resume_dir).get("config", {})
    differ = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {getattr(cfg, k)!r}" for k in differ)
        raise TrainingInputError(
            f"checkpoint {str(resume_dir)!r} was trained with other settings ({details}); resume with the same "
            "options (or start a new --output_dir)"
        )


def _load_data(cfg: TrainingConfig, split: str) -> ImageData:
    try:
        return load_image_data(
            cfg.dataset_name,
            cfg.train_data_dir,
            split=split,
            resolution=cfg.resolution,
            resize_mode=cfg.resize_mode,
            center_crop=cfg.center_crop,
            image_mode=cfg.image_mode,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            dataset_config_name=cfg.dataset_config_name,
        )
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--train_data_dir: {err}") from err
    except (ValueError, TypeError) as err:
        raise TrainingInputError(str(err)) from err


def _check_data(cfg: TrainingConfig, data: ImageData, factor: int) -> int:
    """The training images against the model and the batch; returns their (square) size."""
    height, width = data.resolution
    _check(height == width, f"the training images are {height}x{width}; pass --resolution to make them square")
    _check(
        height % factor == 0,
        f"the training images are {height}x{width}, not divisible by {factor}: the model {cfg.model_preset!r} "
        f"halves the resolution {factor.bit_length() - 1} times; pass --resolution (e.g. "
        f"{factor * max(1, round(height / factor))})",
    )
    if cfg.class_conditional:
        _check(
            data.labels is not None,
            f"--class_conditional needs class labels, but {data.description} has none (use class subfolders, "
            "a label column, or a built-in data set)",
        )
    _check(
        cfg.train_batch_size * world_size() <= len(data),
        f"the global batch ({cfg.train_batch_size} per process x {world_size()} processes) is larger than the "
        f"data set ({len(data)} images)",
    )
    return height


def _eval_data(cfg: TrainingConfig, data: ImageData) -> tuple[ImageData | None, str]:
    if not cfg.eval_bpd_images:
        return None, ""
    try:
        eval_data = _load_data(cfg, cfg.eval_split)
        note = f"{min(cfg.eval_bpd_images, len(eval_data))} held-out images ({cfg.eval_split} split)"
    except TrainingInputError:  # no such split: measure on the training images, and say so
        eval_data = data
        note = f"{min(cfg.eval_bpd_images, len(data))} training images (no {cfg.eval_split!r} split)"
    _check(
        eval_data.images.shape[1:] == data.images.shape[1:],
        "the held-out images do not have the training images' shape",
    )
    return eval_data, note


def validate_config(cfg: TrainingConfig) -> TrainingPlan:
    """Check every option and input, load the data and build the model and scheduler, writing nothing.

    Only ``output_dir`` is created when missing (to prove it writable). ``cfg`` itself is not changed.

    Raises:
        `TrainingInputError` (a ``ValueError``) or `FileNotFoundError`: with the reason, in one line.
    """
    corruption, preset, resolved = _check_options(cfg)
    cfg = dataclasses.replace(cfg, model_config=dict(cfg.model_config), **resolved)

    output_dir = Path(cfg.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    resume_dir = None
    if cfg.resume_from_checkpoint is not None:
        try:
            resume_dir = resolve_checkpoint(cfg.resume_from_checkpoint, checkpoints_dir)
        except ValueError as err:
            raise TrainingInputError(f"--resume_from_checkpoint: {err}") from err
    _check_output_dir(cfg, output_dir, checkpoints_dir)
    hub_token = None
    if cfg.push_to_hub:
        try:
            hub_token = check_push_arguments(cfg.hub_model_id, cfg.hub_token, cfg.hub_private)
        except (ValueError, TypeError) as err:
            raise TrainingInputError(f"--push_to_hub: {err}") from err

    # A resolution the model cannot halve often enough fails before any image is decoded.
    model_cfg = {**preset.config, **cfg.model_config}
    factor = 2 ** (len(model_cfg.get("channel_mult", (1,))) - 1)
    if cfg.resolution is not None:
        _user_error(check_int, "--resolution", cfg.resolution, 1)
        _check(
            cfg.resolution % factor == 0,
            f"--resolution {cfg.resolution} is not divisible by {factor}: the model {cfg.model_preset!r} halves the "
            f"resolution {factor.bit_length() - 1} times (channel_mult {tuple(model_cfg.get('channel_mult', ()))})",
        )
    data = _load_data(cfg, "train")
    cfg = dataclasses.replace(cfg, resolution=_check_data(cfg, data, factor))
    cfg = dataclasses.replace(cfg, **corruption.resolve_with_data(cfg, data))
    eval_data, eval_note = _eval_data(cfg, data)

    overrides = dict(cfg.model_config, in_channels=data.num_channels, sample_size=cfg.resolution)
    if cfg.class_conditional:
        overrides["num_class_embeds"] = data.num_classes
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the same initial weights on every process and every run
            model = from_preset(cfg.model_preset, **overrides)
    except (ValueError, TypeError) as err:
        raise TrainingInputError(f"--model_preset {cfg.model_preset!r} with --model_config: {err}") from err
    if resume_dir is not None:
        _check_resume(cfg, resume_dir)
    scheduler = corruption.build_scheduler(cfg, data, resume_dir)
    return TrainingPlan(
        config=cfg,
        corruption=corruption,
        data=data,
        eval_data=eval_data,
        eval_note=eval_note,
        model=model,
        scheduler=scheduler,
        output_dir=output_dir,
        checkpoints_dir=checkpoints_dir,
        resume_dir=resume_dir,
        hub_token=hub_token,
    )
