"""Train a score-based model (NCSN++ / DDPM++) on images with continuous-time denoising score matching.

``--corruption blur`` trains a Soft Diffusion model instead (Daras et al. 2022): a DDPM++ network predicts ``x_0``
of the blur + noise corruption ``x_t = C_t x_0 + s_t eta``, the levels are fitted to the training images
(:meth:`~sde_diffusers.schedulers.SoftDiffusionScheduler.from_data`, spaced evenly in Wasserstein-2 distance), the
loss is Soft Score Matching (:func:`~sde_diffusers.losses.soft_score_matching_loss`) and the export is a
:class:`~sde_diffusers.pipelines.SoftDiffusionPipeline`.

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

Reproducibility: all training randomness (data order, flips, diffusion times and noise) is drawn for the *global*
batch from generators that every process seeds alike, and each process takes its slice. A run therefore gives
the same result (up to floating-point summation order) on any number of processes with the same global batch,
and ``--resume_from_checkpoint`` continues bit for bit (same step, optimizer, EMA, learning rate, data position,
generator and RNG states).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sde_diffusers.training.checkpointing import (
    CHECKPOINT_FORMAT,
    STATE_FILE,
    clean_staging,
    commit_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    resolve_checkpoint,
    staging_dir,
    write_text_atomic,
)

__all__ = [
    "SDE_TYPES",
    "CORRUPTION_TYPES",
    "LOSS_TYPES",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "TrainingConfig",
    "TrainingResult",
    "TrainingInputError",
    "add_arguments",
    "build_parser",
    "config_from_args",
    "load_config_file",
    "validate_config",
    "train",
    "main",
]

logger = logging.getLogger("sde_diffusers.training")

SDE_TYPES = ("ve", "vp", "subvp")
CORRUPTION_TYPES = ("gaussian", "blur")
LOSS_TYPES = ("dsm", "smld", "ddpm")
LR_SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "none")
_CHECKPOINT_VERSION = 1
# Config keys that must agree between a checkpoint and the run resuming it (they shape the weights or the maths).
_RESUME_KEYS = (
    "model_preset",
    "model_config",
    "class_conditional",
    "sde",
    "num_train_timesteps",
    "sigma_min",
    "sigma_max",
    "beta_min",
    "beta_max",
    "loss",
    "likelihood_weighting",
    "reduce_mean",
    "train_eps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "resolution",
    "use_ema",
    "ema_decay",
    "seed",
    "random_flip",
    "corruption",
    "soft_weighting",
)
# Never written to checkpoints, logs or model cards.
_SECRET_KEYS = ("hub_token",)


class TrainingInputError(ValueError):
    """A training option or input is invalid; raised before anything is written."""


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Every option of the trainer (the CLI flags have the same names). See ``--help`` for each one."""

    # data
    dataset_name: str | None = None
    train_data_dir: str | None = None
    dataset_config_name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    resolution: int | None = None
    resize_mode: str = "resize"
    center_crop: bool = True
    random_flip: bool = False
    image_mode: str | None = None
    # model
    model_preset: str = "ddpmpp-tiny"
    model_config: dict = field(default_factory=dict)
    class_conditional: bool = False
    # SDE and loss
    corruption: str = "gaussian"
    sde: str | None = None
    num_train_timesteps: int = 1000
    sigma_min: float = 0.01
    sigma_max: float | None = None
    beta_min: float = 0.1
    beta_max: float = 20.0
    loss: str = "dsm"
    likelihood_weighting: bool = False
    reduce_mean: bool | None = None
    train_eps: float = 1e-5
    soft_weighting: str = "score"
    # optimisation
    train_batch_size: int = 64
    max_train_steps: int = 1000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    use_ema: bool = True
    ema_decay: float = 0.9999
    mixed_precision: str = "auto"
    use_cpu: bool = False
    seed: int = 0
    # output, logging, checkpoints
    output_dir: str = "score-sde-model"
    overwrite_output_dir: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    save_final_checkpoint: bool = True
    resume_from_checkpoint: str | None = None
    logging_steps: int = 10
    report_to: str = "tensorboard"
    progress_bar: bool = True
    # sampling and evaluation
    sample_every: int = 0
    num_sample_images: int = 16
    num_inference_steps: int = 500
    predictor: str | None = None
    corrector: str | None = None
    snr: float | None = None
    eval_bpd_images: int = 0
    eval_split: str = "test"
    eval_bpd_tolerance: float = 1e-5
    # Hub
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    hub_private: bool = False
    license: str = "apache-2.0"

    def to_dict(self, public: bool = False) -> dict[str, Any]:
        """The options as a dict; ``public=True`` drops secrets and local paths (for logs and model cards)."""
        values = dataclasses.asdict(self)
        for key in _SECRET_KEYS:
            values.pop(key, None)
        if public:
            for key in ("output_dir", "resume_from_checkpoint", "overwrite_output_dir"):
                values.pop(key, None)
            if values.get("train_data_dir"):
                values["train_data_dir"] = os.path.basename(os.path.normpath(values["train_data_dir"]))
        return values


@dataclass
class TrainingResult:
    """What :func:`train` returns (also written, without the history, to ``<output_dir>/train_summary.json``).

    Args:
        output_dir (`str`): the run's folder.
        pipeline_dir (`str`, *optional*): the exported pipeline (main process only).
        global_step (`int`): optimizer steps done.
        initial_loss (`float`, *optional*): the loss of the first step of this run (``None`` when resumed past it).
        final_loss (`float`, *optional*): mean loss over the last logging window.
        loss_history (`list`): ``(step, mean loss since the previous entry)``.
        bits_per_dim (`float`, *optional*): mean held-out bits/dim of the EMA model, if measured.
        bits_per_dim_stderr (`float`, *optional*): its standard error.
        samples_path (`str`, *optional*): the final sample grid.
        steps_per_second (`float`, *optional*): optimizer steps per second, excluding the first step and any
            sampling, checkpointing or evaluation.
        world_size (`int`): number of processes.
        param_digests (`list[str]`): a hash of the trained weights on each process (all equal under DDP).
        resumed_from (`str`, *optional*): the checkpoint the run continued from.
        hub_commit_url (`str`, *optional*): the commit of the Hub upload.
    """

    output_dir: str
    pipeline_dir: str | None = None
    global_step: int = 0
    initial_loss: float | None = None
    final_loss: float | None = None
    loss_history: list = field(default_factory=list)
    bits_per_dim: float | None = None
    bits_per_dim_stderr: float | None = None
    samples_path: str | None = None
    steps_per_second: float | None = None
    world_size: int = 1
    param_digests: list = field(default_factory=list)
    resumed_from: str | None = None
    hub_commit_url: str | None = None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(convert):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "auto", "") else convert(text)

    parse.__name__ = convert.__name__
    return parse


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every trainer option to ``parser`` (used by the script and by ``sde-diffusers train``)."""
    d = TrainingConfig()
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON file of options (keys are these flags without '--'); flags given on the command "
        "line override it. Examples in training/configs/.",
    )
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name",
        default=None,
        help="'digits' (scikit-learn, built in), 'mnist' (the shipped MNIST test images) or a Hub dataset id",
    )
    g.add_argument(
        "--train_data_dir",
        default=None,
        help="local image folder (datasets 'imagefolder'; class subfolders give labels)",
    )
    g.add_argument("--dataset_config_name", default=None, help="configuration of a Hub dataset")
    g.add_argument("--image_column", default=None, help="image column (default: the first Image feature)")
    g.add_argument("--label_column", default=None, help="label column (default: the first ClassLabel feature)")
    g.add_argument(
        "--resolution",
        type=_optional(int),
        default=d.resolution,
        help="square training size; default: the images' own (common, square) size",
    )
    g.add_argument(
        "--resize_mode",
        choices=("resize", "pad"),
        default=d.resize_mode,
        help="reach --resolution by bicubic resizing or by zero padding",
    )
    g.add_argument(
        "--center_crop",
        type=_bool,
        default=d.center_crop,
        help="when resizing non-square images keep the aspect ratio and crop the centre (else stretch)",
    )
    g.add_argument("--random_flip", type=_bool, default=d.random_flip, help="random horizontal flips")
    g.add_argument("--image_mode", choices=("L", "RGB"), default=None, help="convert every image to this mode")
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_preset",
        default=d.model_preset,
        help="a preset of sde_diffusers.models (ncsnpp-*, ddpmpp-*: see list_presets())",
    )
    g.add_argument(
        "--model_config",
        type=_json_object,
        default={},
        help="JSON overrides of the preset config, e.g. '{\"base_channels\": 32}'",
    )
    g.add_argument(
        "--class_conditional",
        type=_bool,
        default=d.class_conditional,
        help="condition the model on the data's class labels",
    )
    g = parser.add_argument_group("SDE and loss")
    g.add_argument(
        "--corruption",
        choices=CORRUPTION_TYPES,
        default=d.corruption,
        help="gaussian: score SDE (--sde); blur: Soft Diffusion (DCT blur + small noise fitted to the "
        "data, DDPM++ predicting x_0, Soft Score Matching, SoftDiffusionPipeline export)",
    )
    g.add_argument("--sde", choices=SDE_TYPES, default=None, help="default: the preset's first SDE")
    g.add_argument(
        "--num_train_timesteps",
        type=int,
        default=d.num_train_timesteps,
        help="N of the SDE (discretisation of samplers and discrete losses)",
    )
    g.add_argument("--sigma_min", type=float, default=d.sigma_min, help="VE: smallest noise level")
    g.add_argument(
        "--sigma_max",
        type=_optional(float),
        default=None,
        help="VE: largest noise level; default: the largest distance between two training images "
        "(Song & Ermon 2020, technique 1)",
    )
    g.add_argument("--beta_min", type=float, default=d.beta_min, help="VP / sub-VP: beta(0)")
    g.add_argument("--beta_max", type=float, default=d.beta_max, help="VP / sub-VP: beta(1)")
    g.add_argument(
        "--loss",
        choices=LOSS_TYPES,
        default=d.loss,
        help="dsm: continuous denoising score matching; smld (VE) / ddpm (VP): the discrete losses",
    )
    g.add_argument(
        "--likelihood_weighting",
        type=_bool,
        default=d.likelihood_weighting,
        help="dsm: weight by g(t)^2 (maximum-likelihood training)",
    )
    g.add_argument(
        "--reduce_mean",
        type=_optional(_bool),
        default=None,
        help="mean (true) or half sum (false) over pixels; default false for VE, true for VP/sub-VP",
    )
    g.add_argument("--train_eps", type=float, default=d.train_eps, help="dsm: t ~ U(train_eps, 1)")
    g.add_argument(
        "--soft_weighting",
        choices=("score", "uniform"),
        default=d.soft_weighting,
        help="--corruption blur: Soft Score Matching weight 1 / s_t^2 (score) or 1 (uniform)",
    )
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=d.train_batch_size, help="batch size per process")
    g.add_argument("--max_train_steps", type=int, default=d.max_train_steps, help="optimizer steps")
    g.add_argument("--gradient_accumulation_steps", type=int, default=d.gradient_accumulation_steps)
    g.add_argument("--learning_rate", type=float, default=d.learning_rate)
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=d.lr_scheduler)
    g.add_argument("--lr_warmup_steps", type=int, default=d.lr_warmup_steps)
    g.add_argument("--adam_beta1", type=float, default=d.adam_beta1)
    g.add_argument("--adam_beta2", type=float, default=d.adam_beta2)
    g.add_argument("--adam_weight_decay", type=float, default=d.adam_weight_decay)
    g.add_argument("--adam_epsilon", type=float, default=d.adam_epsilon)
    g.add_argument(
        "--max_grad_norm",
        type=_optional(float),
        default=d.max_grad_norm,
        help="gradient clipping norm ('none' disables)",
    )
    g.add_argument("--use_ema", type=_bool, default=d.use_ema, help="keep an EMA of the weights and export it")
    g.add_argument(
        "--ema_decay",
        type=float,
        default=d.ema_decay,
        help="largest EMA decay (Diffusers' EMAModel warm-up (1 + n) / (10 + n) below it)",
    )
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        default=d.mixed_precision,
        help="auto: bf16 (or fp16) on a GPU, none on CPU; an `accelerate launch` setting wins",
    )
    g.add_argument("--use_cpu", action="store_true", help="train on the CPU even if a GPU is present")
    g.add_argument("--seed", type=int, default=d.seed)
    g = parser.add_argument_group("output, logging and checkpoints")
    g.add_argument("--output_dir", default=d.output_dir)
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="delete checkpoints of an earlier run in --output_dir instead of refusing to start",
    )
    g.add_argument(
        "--checkpointing_steps",
        type=int,
        default=d.checkpointing_steps,
        help="save a checkpoint every N steps (0: only at the end)",
    )
    g.add_argument(
        "--checkpoints_total_limit",
        type=_optional(int),
        default=None,
        help="keep at most this many checkpoints",
    )
    g.add_argument("--save_final_checkpoint", type=_bool, default=d.save_final_checkpoint)
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest checkpoint in --output_dir, or a fresh start if none) or a path",
    )
    g.add_argument("--logging_steps", type=int, default=d.logging_steps)
    g.add_argument("--report_to", choices=REPORT_TO, default=d.report_to)
    g.add_argument("--progress_bar", type=_bool, default=d.progress_bar)
    g = parser.add_argument_group("sampling and evaluation")
    g.add_argument(
        "--sample_every",
        type=int,
        default=d.sample_every,
        help="log a sample grid every N steps (0: only the final grid)",
    )
    g.add_argument("--num_sample_images", type=int, default=d.num_sample_images)
    g.add_argument(
        "--num_inference_steps",
        type=int,
        default=d.num_inference_steps,
        help="predictor steps of the PC sampler for sample grids",
    )
    g.add_argument("--predictor", default=None, help="predictor saved in the exported scheduler")
    g.add_argument("--corrector", default=None, help="corrector saved in the exported scheduler")
    g.add_argument("--snr", type=_optional(float), default=None, help="Langevin corrector signal-to-noise ratio")
    g.add_argument(
        "--eval_bpd_images",
        type=int,
        default=d.eval_bpd_images,
        help="measure bits/dim of the final EMA model on this many held-out images (0: skip)",
    )
    g.add_argument("--eval_split", default=d.eval_split, help="held-out split for bits/dim")
    g.add_argument(
        "--eval_bpd_tolerance",
        type=float,
        default=d.eval_bpd_tolerance,
        help="rtol = atol of the probability-flow ODE solve",
    )
    g = parser.add_argument_group("Hugging Face Hub")
    g.add_argument("--push_to_hub", action="store_true", help="upload the exported pipeline with its model card")
    g.add_argument("--hub_model_id", default=None, help="'user/name' of the model repo")
    g.add_argument("--hub_token", default=None, help="access token (default: HF_TOKEN or the saved login)")
    g.add_argument("--hub_private", action="store_true")
    g.add_argument("--license", default=d.license, help="licence id for the model card")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_score_sde.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a JSON config file; unknown keys raise ``TrainingInputError``."""
    try:
        with open(path, encoding="utf-8") as fh:
            values = json.load(fh)
    except OSError as err:
        raise TrainingInputError(f"--config {str(path)!r} cannot be read: {err}") from err
    except json.JSONDecodeError as err:
        raise TrainingInputError(f"--config {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise TrainingInputError(f"--config {str(path)!r} must hold a JSON object of options")
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # "_comment" keys
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingInputError(f"--config {str(path)!r} has unknown options {unknown}")
    return values


def config_from_args(args: argparse.Namespace | None = None, argv: list[str] | None = None) -> TrainingConfig:
    """Build a :class:`TrainingConfig` from parsed arguments (or ``argv``), applying ``--config`` first.

    Values given on the command line win over the config file, which wins over the defaults.
    """
    parser = build_parser()
    if args is None:
        args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("config", "command")}
    config_path = getattr(args, "config", None)
    if config_path:
        from_file = load_config_file(config_path)
        defaults = vars(parser.parse_args([]))
        for key, value in from_file.items():
            # A command-line flag left at its default does not override the file.
            if values.get(key) == defaults.get(key):
                values[key] = value
    return TrainingConfig(**values)


# ---------------------------------------------------------------------------------------------------------
# Validation: everything that can be checked is checked before the first file is written
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    config: TrainingConfig
    data: Any
    eval_data: Any
    eval_note: str
    model: torch.nn.Module
    scheduler: Any
    sde: Any
    output_dir: Path
    checkpoints_dir: Path
    resume_dir: Path | None
    hub_token: str | None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingInputError(message)


def _check_int(name: str, value: Any, minimum: int) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}",
    )


def _check_float(
    name: str, value: Any, low: float | None = None, high: float | None = None, open_low: bool = True
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high
    bounds = f" in {'(' if open_low else '['}{low}, {high if high is not None else 'inf'})" if low is not None else ""
    _check(ok, f"{name} must be a finite number{bounds}, got {value!r}")


def _check_options(cfg: TrainingConfig) -> None:
    from sde_diffusers.models import get_preset

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
        preset.model_class in ("NCSNppModel", "DDPMppModel"),
        f"--model_preset {cfg.model_preset!r} builds a {preset.model_class}, not a score network",
    )
    _check(isinstance(cfg.model_config, dict), "--model_config must be a JSON object")
    managed = sorted({"in_channels", "sample_size", "num_class_embeds"} & set(cfg.model_config))
    _check(
        not managed,
        f"--model_config must not set {managed}: they follow the data (--resolution, "
        "--image_mode, --class_conditional)",
    )
    _check(
        cfg.corruption in CORRUPTION_TYPES,
        f"--corruption must be one of {CORRUPTION_TYPES}, got {cfg.corruption!r}",
    )
    if cfg.corruption == "blur":
        _check_blur_options(cfg, preset)
    else:
        _check(cfg.soft_weighting == "score", "--soft_weighting applies to --corruption blur only")
        if cfg.sde is None:
            cfg.sde = preset.sde_types[0]
        _check(cfg.sde in SDE_TYPES, f"--sde must be one of {SDE_TYPES}, got {cfg.sde!r}")
        _check(
            cfg.sde in preset.sde_types,
            f"--model_preset {cfg.model_preset!r} is for the {'/'.join(preset.sde_types)} SDE, not {cfg.sde!r}; "
            f"use an {'ncsnpp' if cfg.sde == 've' else 'ddpmpp'}-* preset",
        )
        _check(cfg.loss in LOSS_TYPES, f"--loss must be one of {LOSS_TYPES}, got {cfg.loss!r}")
        _check(cfg.loss != "smld" or cfg.sde == "ve", "--loss smld (NCSN's discrete loss) needs --sde ve")
        _check(cfg.loss != "ddpm" or cfg.sde == "vp", "--loss ddpm (the discrete DDPM loss) needs --sde vp")
        _check(
            not cfg.likelihood_weighting or cfg.loss == "dsm",
            "--likelihood_weighting applies to --loss dsm only",
        )
        if cfg.reduce_mean is None:
            cfg.reduce_mean = cfg.sde != "ve"  # score_sde's configs: sum for VE, mean for VP / sub-VP
    _check_int("--num_train_timesteps", cfg.num_train_timesteps, 2)
    _check_float("--sigma_min", cfg.sigma_min, 0.0)
    if cfg.sigma_max is not None:
        _check_float("--sigma_max", cfg.sigma_max, cfg.sigma_min)
    _check_float("--beta_min", cfg.beta_min, 0.0)
    _check_float("--beta_max", cfg.beta_max, cfg.beta_min)
    _check_float("--train_eps", cfg.train_eps, 0.0, 1.0)
    _check_int("--train_batch_size", cfg.train_batch_size, 1)
    _check_int("--max_train_steps", cfg.max_train_steps, 1)
    _check_int("--gradient_accumulation_steps", cfg.gradient_accumulation_steps, 1)
    _check_float("--learning_rate", cfg.learning_rate, 0.0)
    _check(cfg.lr_scheduler in LR_SCHEDULERS, f"--lr_scheduler must be one of {LR_SCHEDULERS}")
    _check_int("--lr_warmup_steps", cfg.lr_warmup_steps, 0)
    _check_float("--adam_beta1", cfg.adam_beta1, 0.0, 1.0, open_low=False)
    _check_float("--adam_beta2", cfg.adam_beta2, 0.0, 1.0, open_low=False)
    _check_float("--adam_weight_decay", cfg.adam_weight_decay, 0.0, open_low=False)
    _check_float("--adam_epsilon", cfg.adam_epsilon, 0.0)
    if cfg.max_grad_norm is not None:
        _check_float("--max_grad_norm", cfg.max_grad_norm, 0.0)
    _check_float("--ema_decay", cfg.ema_decay, 0.0, 1.0, open_low=False)
    _check(cfg.mixed_precision in MIXED_PRECISION, f"--mixed_precision must be one of {MIXED_PRECISION}")
    _check(
        cfg.mixed_precision != "fp16" or (torch.cuda.is_available() and not cfg.use_cpu),
        "--mixed_precision fp16 needs a CUDA GPU; use 'no' (or 'bf16') on this machine",
    )
    _check_int("--seed", cfg.seed, 0)
    _check_int("--checkpointing_steps", cfg.checkpointing_steps, 0)
    if cfg.checkpoints_total_limit is not None:
        _check_int("--checkpoints_total_limit", cfg.checkpoints_total_limit, 1)
    _check_int("--logging_steps", cfg.logging_steps, 1)
    _check(cfg.report_to in REPORT_TO, f"--report_to must be one of {REPORT_TO}")
    _check_int("--sample_every", cfg.sample_every, 0)
    _check_int("--num_sample_images", cfg.num_sample_images, 1)
    _check_int("--num_inference_steps", cfg.num_inference_steps, 1)
    _check(
        cfg.corruption != "blur" or cfg.num_inference_steps <= cfg.num_train_timesteps,
        f"--num_inference_steps ({cfg.num_inference_steps}) must be <= --num_train_timesteps "
        f"({cfg.num_train_timesteps}) with --corruption blur (the sampler visits a subset of the trained levels)",
    )
    _check_int("--eval_bpd_images", cfg.eval_bpd_images, 0)
    _check_float("--eval_bpd_tolerance", cfg.eval_bpd_tolerance, 0.0, 1.0)
    _check(
        isinstance(cfg.output_dir, (str, os.PathLike)) and str(cfg.output_dir) != "",
        "--output_dir must be a path",
    )
    if cfg.push_to_hub:
        _check(bool(cfg.hub_model_id), "--push_to_hub needs --hub_model_id user/name")
    else:
        _check(cfg.hub_token is None, "--hub_token is only used with --push_to_hub")


def _check_blur_options(cfg: TrainingConfig, preset) -> None:
    """``--corruption blur``: refuse the options of Gaussian SDE training that mean nothing for blur + noise."""
    _check(
        preset.model_class == "DDPMppModel",
        f"--corruption blur needs a DDPM++ preset (ddpmpp-*): the network predicts x_0 from the t * (N - 1) "
        f"timestep, while {cfg.model_preset!r} builds an {preset.model_class}, which takes the noise level and "
        "divides its output by it (a score parameterisation)",
    )
    _check(
        cfg.sde is None,
        f"--sde {cfg.sde} does not apply to --corruption blur: its corruption is the blur + noise "
        "schedule fitted to the training images, not an SDE; leave --sde out",
    )
    _check(
        cfg.loss == "dsm",
        f"--loss {cfg.loss} is a discrete loss of the Gaussian SDEs; --corruption blur trains "
        "with Soft Score Matching (leave --loss out; --soft_weighting picks its weight)",
    )
    _check(
        not cfg.likelihood_weighting,
        "--likelihood_weighting (the g(t)^2 weight of an SDE) does not apply to --corruption blur; use "
        "--soft_weighting score (1 / s_t^2) or uniform",
    )
    _check(
        cfg.soft_weighting in ("score", "uniform"),
        f"--soft_weighting must be 'score' or 'uniform', got {cfg.soft_weighting!r}",
    )
    _check(
        not cfg.class_conditional,
        "--class_conditional is not supported with --corruption blur (SoftDiffusionPipeline is unconditional)",
    )
    given = [f"--{k}" for k in ("predictor", "corrector", "snr") if getattr(cfg, k) is not None]
    _check(
        not given,
        f"{'/'.join(given)} configure the predictor-corrector sampler of the Gaussian SDEs; "
        "--corruption blur exports a SoftDiffusionScheduler (the momentum sampler)",
    )
    _check(
        not cfg.eval_bpd_images,
        "--eval_bpd_images: bits/dim is not defined for --corruption blur (it integrates the probability-flow "
        "ODE of a Gaussian-noise SDE, and blur + noise corruption has none); leave it at 0",
    )
    if cfg.reduce_mean is None:
        cfg.reduce_mean = True  # mean over pixels: the loss is on the scale of a per-pixel squared error


def _build_soft_scheduler(cfg: TrainingConfig, data, resume_dir: Path | None):
    """The Soft Diffusion levels and starting prior: from the checkpoint when resuming, else fitted to the data.

    A resumed run reads the schedule its weights were trained with (saved with every checkpoint), so it
    continues exactly even if the fit would now give other numbers. The fit uses up to 2,000 evenly spaced
    training images (deterministic: the same images on every process and every run).
    """
    from sde_diffusers.schedulers import SoftDiffusionScheduler

    if resume_dir is not None and (resume_dir / "scheduler").is_dir():
        return SoftDiffusionScheduler.from_pretrained(str(resume_dir / "scheduler"))
    idx = torch.linspace(0, len(data) - 1, min(2000, len(data))).round().long()
    images, _ = data.batch(idx, dtype=torch.float64)
    try:
        return SoftDiffusionScheduler.from_data(images, num_train_timesteps=cfg.num_train_timesteps)
    except (ValueError, TypeError) as err:
        raise TrainingInputError(f"--corruption blur: cannot fit the corruption schedule to the data: {err}") from err


def _build_scheduler(cfg: TrainingConfig):
    from sde_diffusers.schedulers import SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler

    sampling = {k: getattr(cfg, k) for k in ("predictor", "corrector", "snr") if getattr(cfg, k) is not None}
    n = cfg.num_train_timesteps
    try:
        if cfg.sde == "ve":
            return VESDEScheduler(num_train_timesteps=n, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, **sampling)
        cls = VPSDEScheduler if cfg.sde == "vp" else SubVPSDEScheduler
        # The scheduler keeps DDPM-style betas: beta_min = N * beta_start, beta_max = N * beta_end.
        return cls(num_train_timesteps=n, beta_start=cfg.beta_min / n, beta_end=cfg.beta_max / n, **sampling)
    except (ValueError, TypeError) as err:
        raise TrainingInputError(f"invalid sampler options (--predictor/--corrector/--snr): {err}") from err


def _max_pairwise_distance(data, limit: int = 2000) -> float:
    """Largest L2 distance between two training images in [-1, 1] (Song & Ermon 2020's sigma_max rule)."""
    idx = torch.linspace(0, len(data) - 1, min(limit, len(data))).round().long()
    x, _ = data.batch(idx)
    flat = x.reshape(len(idx), -1).double()
    return float(torch.cdist(flat, flat).max())


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
    state = read_trainer_state(resume_dir)
    saved = state.get("config", {})
    differ = [k for k in _RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {getattr(cfg, k)!r}" for k in differ)
        raise TrainingInputError(
            f"checkpoint {str(resume_dir)!r} was trained with other settings ({details}); resume with the same "
            "options (or start a new --output_dir)"
        )


def validate_config(cfg: TrainingConfig) -> _Plan:
    """Check every option and input, load the data and build the model and scheduler, writing nothing.

    Only ``output_dir`` is created when missing (to prove it writable). Raises ``TrainingInputError``
    (a ``ValueError``) or ``FileNotFoundError`` with the reason.
    """
    from sde_diffusers.data import load_image_data
    from sde_diffusers.models import from_preset, get_preset

    cfg = dataclasses.replace(cfg, model_config=dict(cfg.model_config))
    _check_options(cfg)

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
        from sde_diffusers.hub_utils import check_push_arguments

        try:
            hub_token = check_push_arguments(cfg.hub_model_id, cfg.hub_token, cfg.hub_private)
        except (ValueError, TypeError) as err:
            raise TrainingInputError(f"--push_to_hub: {err}") from err

    # Data (read only). A resolution that the model cannot halve often enough fails before any decoding.
    preset = get_preset(cfg.model_preset)
    model_cfg = {**preset.config, **cfg.model_config}
    factor = 2 ** (len(model_cfg.get("channel_mult", (1,))) - 1)
    if cfg.resolution is not None:
        _check_int("--resolution", cfg.resolution, 1)
        _check(
            cfg.resolution % factor == 0,
            f"--resolution {cfg.resolution} is not divisible by {factor}: the model "
            f"{cfg.model_preset!r} halves the resolution {factor.bit_length() - 1} times "
            f"(channel_mult {tuple(model_cfg.get('channel_mult', ()))})",
        )
    data_kwargs = dict(
        resolution=cfg.resolution,
        resize_mode=cfg.resize_mode,
        center_crop=cfg.center_crop,
        image_mode=cfg.image_mode,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        dataset_config_name=cfg.dataset_config_name,
    )
    try:
        data = load_image_data(cfg.dataset_name, cfg.train_data_dir, split="train", **data_kwargs)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--train_data_dir: {err}") from err
    except ValueError as err:
        raise TrainingInputError(str(err)) from err
    height, width = data.resolution
    _check(height == width, f"the training images are {height}x{width}; pass --resolution to make them square")
    _check(
        height % factor == 0,
        f"the training images are {height}x{width}, not divisible by {factor}: the model {cfg.model_preset!r} "
        f"halves the resolution {factor.bit_length() - 1} times; pass --resolution (e.g. "
        f"{factor * max(1, round(height / factor))})",
    )
    if cfg.resolution is None:
        cfg.resolution = height
    if cfg.class_conditional:
        _check(
            data.labels is not None,
            f"--class_conditional needs class labels, but {data.description} has none (use class subfolders, "
            "a label column, or a built-in data set)",
        )
    global_batch = cfg.train_batch_size * _world_size()
    _check(
        global_batch <= len(data),
        f"the global batch ({cfg.train_batch_size} per process x {_world_size()} processes) is larger than the "
        f"data set ({len(data)} images)",
    )

    if cfg.sde == "ve" and cfg.sigma_max is None:
        # Song & Ermon (2020), technique 1: sigma_max at least the largest distance between training points.
        cfg.sigma_max = float(f"{_max_pairwise_distance(data):.4g}")

    eval_data, eval_note = None, ""
    if cfg.eval_bpd_images:
        try:
            eval_data = load_image_data(cfg.dataset_name, cfg.train_data_dir, split=cfg.eval_split, **data_kwargs)
            eval_note = f"{min(cfg.eval_bpd_images, len(eval_data))} held-out images ({cfg.eval_split} split)"
        except ValueError:
            eval_data = data
            eval_note = f"{min(cfg.eval_bpd_images, len(data))} training images (no {cfg.eval_split!r} split)"
        _check(
            eval_data.images.shape[1:] == data.images.shape[1:],
            "the held-out images do not have the training images' shape",
        )

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
    scheduler = _build_soft_scheduler(cfg, data, resume_dir) if cfg.corruption == "blur" else _build_scheduler(cfg)
    return _Plan(
        cfg,
        data,
        eval_data,
        eval_note,
        model,
        scheduler,
        getattr(scheduler, "sde", None),
        output_dir,
        checkpoints_dir,
        resume_dir,
        hub_token,
    )


def _world_size() -> int:
    # Before the Accelerator exists: what the launcher (torchrun, accelerate launch) announces.
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------
class _BatchStream:
    """Indices of successive global micro-batches: a fresh permutation of the data set every epoch.

    The order depends only on ``seed`` and the position, so it resumes exactly and is the same on every process.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int, device: torch.device) -> None:
        self.num_examples, self.global_batch, self.seed, self.device = (
            num_examples,
            global_batch,
            seed,
            device,
        )
        self.per_epoch = num_examples // global_batch
        self.position = 0
        self._epoch, self._perm = -1, None

    def next(self) -> torch.Tensor:
        epoch, k = divmod(self.position, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_examples, generator=gen).to(self.device)
            self._epoch = epoch
        self.position += 1
        return self._perm[k * self.global_batch : (k + 1) * self.global_batch]


def _set_logging(is_main: bool) -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)


def _mixed_precision(cfg: TrainingConfig) -> str | None:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # `accelerate launch --mixed_precision ...` / `accelerate config` decide
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _params_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _grid_shape(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def _pipeline_class(cfg: TrainingConfig):
    from sde_diffusers.pipelines import ScoreSdePipeline, SoftDiffusionPipeline

    return SoftDiffusionPipeline if cfg.corruption == "blur" else ScoreSdePipeline


def _sample_grid(model, scheduler, cfg: TrainingConfig, num_classes: int | None, seed: int):
    """A grid (PIL image) of ``num_sample_images`` samples from ``model`` (its current weights): PC sampling, or the
    momentum sampler for ``--corruption blur``."""
    from diffusers.utils import make_image_grid

    pipeline = _pipeline_class(cfg)(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {}
    if num_classes is not None:
        kwargs["class_labels"] = torch.arange(cfg.num_sample_images) % num_classes
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = pipeline(
                batch_size=cfg.num_sample_images,
                num_inference_steps=cfg.num_inference_steps,
                generator=generator,
                output_type="pil",
                **kwargs,
            ).images
    finally:
        model.train(was_training)
    # Small images are enlarged (nearest neighbour) and framed in grey so that tiles touching their edges (digits)
    # stay apart in the grid.
    from PIL import Image, ImageOps

    scale = max(1, 64 // images[0].width)
    images = [
        ImageOps.expand(
            im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST),
            border=max(1, scale // 4),
            fill=128,
        )
        for im in images
    ]
    rows, cols = _grid_shape(len(images))
    return make_image_grid(images, rows=rows, cols=cols)


class _EMAWeights:
    """Context manager: the model holds the EMA weights inside, its training weights again after."""

    def __init__(self, ema, model: torch.nn.Module) -> None:
        self.ema, self.model = ema, model

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc) -> None:
        if self.ema is not None:
            self.ema.restore(self.model.parameters())


def _bits_per_dim(model, plan: _Plan, cfg: TrainingConfig, device) -> tuple[float, float]:
    from sde_diffusers.likelihood import log_likelihood

    data = plan.eval_data
    count = min(cfg.eval_bpd_images, len(data))
    idx = torch.linspace(0, len(data) - 1, count).round().long()
    x, y = data.batch(idx, device=device)
    kwargs = {"model_kwargs": {"class_labels": y}} if cfg.class_conditional else {}
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    out = log_likelihood(
        model,
        plan.sde,
        x,
        dequantize=True,
        data_range=(-1.0, 1.0),
        num_levels=256,
        generator=generator,
        rtol=cfg.eval_bpd_tolerance,
        atol=cfg.eval_bpd_tolerance,
        prediction_type=model.prediction_type,
        time_input=model.time_input,
        **kwargs,
    )
    bpd = out.bits_per_dim.double().cpu()
    stderr = float(bpd.std() / math.sqrt(count)) if count > 1 else float("nan")
    return float(bpd.mean()), stderr


def _model_card_fields(plan: _Plan, cfg: TrainingConfig, model, result: TrainingResult, bpd_text: str | None):
    n_params = sum(p.numel() for p in model.parameters())
    c, h, w = plan.data.images.shape[1:]
    arch = (
        f"`{type(model).__name__}` (preset `{cfg.model_preset}`), {n_params:,} parameters, {c}x{h}x{w} images"
        + (f", class-conditional ({plan.data.num_classes} classes)" if cfg.class_conditional else "")
        + (f", config overrides `{json.dumps(cfg.model_config)}`" if cfg.model_config else "")
    )
    if cfg.corruption == "blur":
        return _soft_model_card_fields(plan, cfg, arch, result)
    sde_name = {"ve": "VE", "vp": "VP", "subvp": "sub-VP"}[cfg.sde]
    params = {k: v for k, v in plan.sde.config.items()}
    described = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    sde_text = f"{sde_name} SDE ({described})"
    loss_text = {
        "dsm": "continuous denoising score matching",
        "smld": "SMLD (NCSN) discrete loss",
        "ddpm": "DDPM discrete loss",
    }[cfg.loss]
    if cfg.likelihood_weighting:
        loss_text += " with likelihood weighting g(t)^2"
    final = "not measured" if result.final_loss is None else f"{result.final_loss:.4g} ({loss_text})"
    return dict(
        model_name=cfg.hub_model_id.split("/")[-1] if cfg.hub_model_id else f"score-sde-{cfg.sde}-{cfg.model_preset}",
        repo_id=cfg.hub_model_id or "<path to this folder>",
        pipeline_class=_pipeline_class(cfg).__name__,
        architecture=arch,
        sde=sde_text,
        dataset=plan.data.description,
        training_config=_public_config(cfg),
        steps=result.global_step,
        final_loss=final,
        bits_per_dim=bpd_text,
        sample_grid="samples.png",
        license=cfg.license,
    )


# The bits/dim entry of a Soft Diffusion model card (and log line): why there is no number.
_NO_BPD_FOR_BLUR = (
    "not defined for blur + noise corruption (bits/dim integrates the probability-flow ODE of a "
    "Gaussian-noise SDE, which this corruption process does not have)"
)


def _soft_model_card_fields(plan: _Plan, cfg: TrainingConfig, arch: str, result: TrainingResult):
    """The ``soft_diffusion`` model card's fields."""
    corruption = plan.scheduler.corruption
    blur, noise = corruption.blur_sigmas, corruption.noise_stds
    weight = {"score": "1 / s_t^2", "uniform": "1"}[cfg.soft_weighting]
    corruption_text = (
        f"DCT Gaussian blur {float(blur[0]):.3g} to {float(blur[-1]):.3g} px and noise std {float(noise[0]):.3g} "
        f"to {float(noise[-1]):.3g}, {len(blur)} levels spaced evenly in Wasserstein-2 distance (fitted to the "
        f"training images); Soft Score Matching with weight {weight}; `{plan.scheduler.config.sampler}` sampler"
    )
    final = "not measured" if result.final_loss is None else f"{result.final_loss:.4g} (Soft Score Matching)"
    return dict(
        model_name=cfg.hub_model_id.split("/")[-1] if cfg.hub_model_id else f"soft-diffusion-{cfg.model_preset}",
        repo_id=cfg.hub_model_id or "<path to this folder>",
        pipeline_class=_pipeline_class(cfg).__name__,
        architecture=arch,
        corruption=corruption_text,
        dataset=plan.data.description,
        training_config=_public_config(cfg),
        steps=result.global_step,
        final_loss=final,
        bits_per_dim=_NO_BPD_FOR_BLUR,
        sample_grid="samples.png",
        license=cfg.license,
    )


def _public_config(cfg: TrainingConfig) -> dict[str, Any]:
    """The options worth publishing: no secrets, no local paths, no parameters of the other SDE family."""
    values = cfg.to_dict(public=True)
    unused = ("beta_min", "beta_max") if cfg.sde == "ve" else ("sigma_min", "sigma_max")
    if cfg.corruption == "blur":  # no SDE at all
        unused = (
            "sde",
            "sigma_min",
            "sigma_max",
            "beta_min",
            "beta_max",
            "loss",
            "likelihood_weighting",
            "train_eps",
            "predictor",
            "corrector",
            "snr",
            "eval_bpd_images",
            "eval_split",
            "eval_bpd_tolerance",
        )
    else:
        unused += ("soft_weighting",)
    return {k: v for k, v in values.items() if k not in unused and not k.startswith(("hub_", "push_"))}


def _replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written folder into place; an existing one is moved aside first, then deleted."""
    trash = None
    if final.exists():
        trash = final.with_name(f".old-{final.name}.{os.getpid()}")
        os.replace(final, trash)
    os.replace(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def train(config: TrainingConfig) -> TrainingResult:
    """Validate ``config``, train, checkpoint, export the EMA pipeline and optionally push it to the Hub.

    Every input error is raised before anything is written (see :func:`validate_config`).

    Args:
        config (`TrainingConfig`): the options.

    Returns:
        `TrainingResult`.
    """
    plan = validate_config(config)
    cfg = plan.config
    return _Trainer(plan).run(cfg)


class _Trainer:
    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    # -- setup --------------------------------------------------------------------------------------------
    def _setup(self, cfg: TrainingConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        plan = self.plan
        accelerator = Accelerator(
            # Several processes without a GPU: accelerate only forms a (gloo) MULTI_CPU world when told `cpu`.
            cpu=cfg.use_cpu or (_world_size() > 1 and not torch.cuda.is_available()),
            mixed_precision=_mixed_precision(cfg),
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(plan.output_dir), logging_dir=str(plan.output_dir / "logs")
            ),
        )
        self.accelerator = accelerator
        _set_logging(accelerator.is_main_process)
        if accelerator.num_processes != _world_size():
            raise TrainingInputError(
                f"the launcher announced {_world_size()} processes but accelerate runs {accelerator.num_processes}"
            )
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.device = accelerator.device

        # The weights were initialised from `seed` in validate_config, identically on every process (DDP also
        # broadcasts rank 0's at `prepare`); per-process RNG (dropout) gets a per-process seed.
        set_seed(cfg.seed, device_specific=True)
        model = plan.model
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        # Stepped by hand once per optimizer step (a prepared scheduler steps once per process).
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.max_train_steps,
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.raw_model = accelerator.unwrap_model(self.model)
        accelerator.register_for_checkpointing(self.lr_scheduler)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)
        self.ema = None
        if cfg.use_ema:
            self.ema = EMAModel(self.raw_model.parameters(), decay=cfg.ema_decay, foreach=True)

        data = plan.data
        # Small data sets live on the device: a batch is one index operation.
        self.images = data.images.to(self.device) if data.images.numel() < 2**30 else data.images
        self.labels = (
            data.labels.to(self.images.device) if (cfg.class_conditional and data.labels is not None) else None
        )
        self.global_batch = cfg.train_batch_size * self.world
        self.stream = _BatchStream(len(data), self.global_batch, cfg.seed, self.images.device)
        # Diffusion times, noise and flips for the global batch: the same generator on every process.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.global_step = 0
        self.window, self.loss_count = None, 0

    def _save_model_hook(self, models, weights, output_dir) -> None:
        # Save the unwrapped model in Diffusers format (loadable with from_pretrained, independent of DDP).
        if self.accelerator.is_main_process:
            self.raw_model.save_pretrained(os.path.join(output_dir, "unet"))
        weights.clear()

    def _load_model_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        state = load_file(os.path.join(input_dir, "unet", "diffusion_pytorch_model.safetensors"), device="cpu")
        self.raw_model.load_state_dict(state)
        models.clear()

    # -- checkpoints --------------------------------------------------------------------------------------
    def _save_checkpoint(self, cfg: TrainingConfig) -> Path | None:
        from safetensors.torch import save_file

        acc, plan = self.accelerator, self.plan
        staging = staging_dir(plan.checkpoints_dir, self.global_step)
        if acc.is_main_process:
            plan.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        final = None
        if acc.is_main_process:
            files = [
                "unet/diffusion_pytorch_model.safetensors",
                "unet/config.json",
                "optimizer.bin",
                "random_states_0.pkl",
                "generator.safetensors",
            ]
            save_file({"state": self.generator.get_state().cpu()}, str(staging / "generator.safetensors"))
            if cfg.corruption == "blur":
                # The fitted levels and prior the weights are trained for: a resumed run reads them back.
                plan.scheduler.save_pretrained(str(staging / "scheduler"))
                files.append("scheduler/scheduler_config.json")
            ema_meta = None
            if self.ema is not None:
                names = [n for n, _ in self.raw_model.named_parameters()]
                save_file(
                    {n: p.detach().cpu().contiguous() for n, p in zip(names, self.ema.shadow_params, strict=True)},
                    str(staging / "ema.safetensors"),
                )
                ema_meta = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
                files.append("ema.safetensors")
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": _CHECKPOINT_VERSION,
                "global_step": self.global_step,
                "data_position": self.stream.position,
                "world_size": self.world,
                "loss_sum": 0.0 if self.window is None else float(self.window),
                "loss_count": self.loss_count,
                "initial_loss": self.initial_loss,
                "loss_history": self.loss_history,
                "ema": ema_meta,
                "files": files,
                "config": cfg.to_dict(),
            }
            # Written last: a staging folder without it is never committed (commit_checkpoint re-reads it).
            write_text_atomic(staging / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        acc.wait_for_everyone()  # every process has written its RNG state
        if acc.is_main_process:
            final = commit_checkpoint(staging, plan.checkpoints_dir, self.global_step)
            for removed in prune_checkpoints(plan.checkpoints_dir, cfg.checkpoints_total_limit):
                logger.info("removed old checkpoint %s", removed.name)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = read_trainer_state(path)
        if state.get("world_size") != self.world:
            logger.warning(
                "checkpoint %s was written by %s processes, resuming on %s: the data order and diffusion noise "
                "continue exactly, per-process RNG (dropout) does not",
                path,
                state.get("world_size"),
                self.world,
            )
        self.accelerator.load_state(str(path))
        self.global_step = int(state["global_step"])
        self.stream.position = int(state["data_position"])
        self.loss_count = int(state["loss_count"])
        self.window = torch.tensor(float(state["loss_sum"]), device=self.device) if self.loss_count else None
        self.initial_loss = state.get("initial_loss")
        self.loss_history = [tuple(x) for x in state.get("loss_history", [])]
        self.generator.set_state(load_file(str(path / "generator.safetensors"))["state"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise TrainingInputError(f"checkpoint {str(path)!r} has no EMA weights but --use_ema is on")
            shadow = load_file(str(path / "ema.safetensors"), device=str(self.device))
            names = [n for n, _ in self.raw_model.named_parameters()]
            self.ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
        logger.info("resumed from %s at step %d", path, self.global_step)

    # -- one optimizer step -------------------------------------------------------------------------------
    def _loss(self, cfg: TrainingConfig, x, y, times, noise):
        from sde_diffusers.losses import (
            ddpm_loss,
            denoising_score_matching_loss,
            smld_loss,
            soft_score_matching_loss,
        )
        from sde_diffusers.parameterization import make_score_fn

        if cfg.corruption == "blur":
            # The network output is x_0's estimate; it sees t on the scheduler's t * (N - 1) timestep scale.
            return soft_score_matching_loss(
                self.model,
                x,
                self.plan.scheduler,
                t=times,
                noise=noise,
                weighting=cfg.soft_weighting,
                reduce_mean=cfg.reduce_mean,
            )
        kwargs = {"class_labels": y} if y is not None else {}
        sde, model = self.plan.sde, self.model
        if cfg.loss == "ddpm":
            return ddpm_loss(model, sde, x, reduce_mean=cfg.reduce_mean, timesteps=times, noise=noise, **kwargs)
        score_fn = make_score_fn(model, sde, self.raw_model.prediction_type, self.raw_model.time_input, **kwargs)
        if cfg.loss == "smld":
            return smld_loss(score_fn, sde, x, reduce_mean=cfg.reduce_mean, timesteps=times, noise=noise)
        return denoising_score_matching_loss(
            score_fn,
            sde,
            x,
            eps=cfg.train_eps,
            reduce_mean=cfg.reduce_mean,
            likelihood_weighting=cfg.likelihood_weighting,
            t=times,
            noise=noise,
        )

    def _micro_batch(self, cfg: TrainingConfig):
        from sde_diffusers.losses import sample_time

        g, gen, dev = self.global_batch, self.generator, self.device
        idx = self.stream.next()
        if cfg.corruption == "blur":
            times = torch.rand(g, generator=gen, device=dev)  # t ~ U(0, 1): the least corrupted level has noise too
        elif cfg.loss == "dsm":
            times = sample_time(self.plan.sde, g, cfg.train_eps, generator=gen, device=dev)
        else:
            times = torch.randint(0, cfg.num_train_timesteps, (g,), generator=gen, device=dev)
        shape = (g, *self.images.shape[1:])
        noise = torch.randn(shape, generator=gen, device=dev)
        flip = torch.rand(g, generator=gen, device=dev) < 0.5 if cfg.random_flip else None
        mine = slice(self.rank * cfg.train_batch_size, (self.rank + 1) * cfg.train_batch_size)
        local = idx[mine]
        x = self.images[local].to(dev, non_blocking=True).float() / 127.5 - 1.0
        if flip is not None:
            x = torch.where(flip[mine].view(-1, 1, 1, 1), x.flip(-1), x)
        y = self.labels[local].to(dev) if self.labels is not None else None
        return x, y, times[mine], noise[mine]

    def _train_step(self, cfg: TrainingConfig, batches: list | None = None) -> torch.Tensor:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches (drawn, or given in ``batches``)."""
        acc = self.accelerator
        total = torch.zeros((), device=self.device)
        for i in range(cfg.gradient_accumulation_steps):
            x, y, times, noise = self._micro_batch(cfg) if batches is None else batches[i]
            with acc.accumulate(self.model):
                loss = self._loss(cfg, x, y, times, noise)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total = total + loss.detach()
        if not acc.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped the update
            self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        return total / cfg.gradient_accumulation_steps

    # -- periodic work ------------------------------------------------------------------------------------
    def _log_samples(self, cfg: TrainingConfig):
        acc = self.accelerator
        if not acc.is_main_process:
            return None
        num_classes = self.plan.data.num_classes if cfg.class_conditional else None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with _EMAWeights(self.ema, self.raw_model) as model:
                grid = _sample_grid(model, self.plan.scheduler, cfg, num_classes, cfg.seed + 3)
        folder = self.plan.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.global_step:08d}.png"
        grid.save(path)
        if cfg.report_to == "tensorboard":
            import numpy as np

            acc.get_tracker("tensorboard").log_images(
                {"samples": np.asarray(grid.convert("RGB"))[None]}, step=self.global_step, dataformats="NHWC"
            )
        return grid

    # -- main loop ----------------------------------------------------------------------------------------
    def run(self, cfg: TrainingConfig) -> TrainingResult:
        from tqdm.auto import tqdm

        plan = self.plan
        self.initial_loss = None
        self.loss_history: list = []
        self._setup(cfg)
        acc = self.accelerator
        if acc.is_main_process:
            clean_staging(plan.checkpoints_dir)
            if plan.resume_dir is None and cfg.overwrite_output_dir:
                for old in list_checkpoints(plan.checkpoints_dir):
                    shutil.rmtree(old)
                (plan.checkpoints_dir / "latest").unlink(missing_ok=True)
        acc.wait_for_everyone()
        resumed_from = None
        if plan.resume_dir is not None:
            self._load_checkpoint(plan.resume_dir)
            resumed_from = str(plan.resume_dir)
        elif cfg.resume_from_checkpoint == "latest":
            logger.info("no checkpoint in %s yet: starting a new run", plan.checkpoints_dir)

        if cfg.report_to != "none":
            hparams = {
                k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                for k, v in cfg.to_dict(public=True).items()
            }
            acc.init_trackers("score_sde", config=hparams)
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        objective = (
            f"the {cfg.sde} SDE"
            if cfg.corruption == "gaussian"
            else f"blur + noise corruption ({cfg.num_train_timesteps} W2-spaced levels, Soft Score Matching)"
        )
        logger.info(
            "training %s (%s, %.2fM parameters) with %s on %s: %d processes x %d images x %d accumulation, "
            "%d steps, mixed precision %s",
            cfg.model_preset,
            type(self.raw_model).__name__,
            n_params / 1e6,
            objective,
            plan.data.description,
            self.world,
            cfg.train_batch_size,
            cfg.gradient_accumulation_steps,
            cfg.max_train_steps,
            acc.mixed_precision,
        )
        progress = tqdm(
            total=cfg.max_train_steps,
            initial=self.global_step,
            desc="steps",
            disable=not (cfg.progress_bar and acc.is_main_process),
            dynamic_ncols=True,
        )
        timed_steps, timed_seconds = 0, 0.0
        first = True
        while self.global_step < cfg.max_train_steps:
            start = time.perf_counter()
            loss = self._train_step(cfg)
            self.global_step += 1
            if self.initial_loss is None:
                self.initial_loss = float(acc.reduce(loss, "mean"))
            # Summed on the device; read (one host sync) only when logged.
            self.window = loss if self.window is None else self.window + loss
            self.loss_count += 1
            progress.update(1)
            if self.global_step % cfg.logging_steps == 0 or self.global_step == cfg.max_train_steps:
                mean = float(acc.reduce(self.window / self.loss_count, "mean"))
                self.window, self.loss_count = None, 0
                self.loss_history.append((self.global_step, mean))
                acc.log({"loss": mean, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step)
                progress.set_postfix(loss=f"{mean:.4g}")
            if not first:  # the first step (allocation, warm-up) is not timed
                timed_steps += 1
                timed_seconds += time.perf_counter() - start
            first = False
            if (
                cfg.sample_every
                and self.global_step % cfg.sample_every == 0
                and self.global_step < cfg.max_train_steps
            ):
                self._log_samples(cfg)
            if (cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0) or (
                cfg.save_final_checkpoint and self.global_step == cfg.max_train_steps
            ):
                self._save_checkpoint(cfg)
        progress.close()
        acc.wait_for_everyone()
        return self._finish(cfg, resumed_from, timed_steps / timed_seconds if timed_seconds > 0 else None)

    def _finish(self, cfg: TrainingConfig, resumed_from: str | None, steps_per_second: float | None):
        from accelerate.utils import gather_object

        acc, plan = self.accelerator, self.plan
        digests = gather_object([_params_digest(self.raw_model)])
        result = TrainingResult(
            output_dir=str(plan.output_dir),
            global_step=self.global_step,
            initial_loss=self.initial_loss,
            final_loss=self.loss_history[-1][1] if self.loss_history else None,
            loss_history=list(self.loss_history),
            steps_per_second=steps_per_second,
            world_size=self.world,
            param_digests=list(digests),
            resumed_from=resumed_from,
        )
        if acc.is_main_process:
            self._export(cfg, result)
        acc.wait_for_everyone()
        acc.end_training()
        return result

    def _export(self, cfg: TrainingConfig, result: TrainingResult) -> None:
        from sde_diffusers.hub_utils import push_pipeline_to_hub, save_model_card

        plan = self.plan
        grid = self._log_samples(cfg)
        bpd_text = None
        if cfg.corruption == "blur":
            logger.info("bits/dim: %s", _NO_BPD_FOR_BLUR)
        with _EMAWeights(self.ema, self.raw_model) as model:
            if cfg.eval_bpd_images:
                logger.info("measuring bits/dim on %s", plan.eval_note)
                mean, stderr = _bits_per_dim(model, plan, cfg, self.device)
                result.bits_per_dim, result.bits_per_dim_stderr = mean, stderr
                bpd_text = (
                    f"{mean:.3f} ± {stderr:.3f} on {plan.eval_note}: uniform dequantization, "
                    f"probability-flow ODE (RK45, rtol = atol = {cfg.eval_bpd_tolerance:g})"
                )
                self.accelerator.log({"bits_per_dim": mean}, step=self.global_step)
                logger.info("bits/dim %.3f +- %.3f", mean, stderr)
            staging = plan.output_dir / ".tmp-pipeline"
            if staging.exists():
                shutil.rmtree(staging)
            pipeline = _pipeline_class(cfg)(unet=model, scheduler=plan.scheduler)
            pipeline.save_pretrained(str(staging))
            grid.save(staging / "samples.png")
            template = "soft_diffusion" if cfg.corruption == "blur" else "score_sde"
            save_model_card(staging, template, **_model_card_fields(plan, cfg, model, result, bpd_text))
        final = plan.output_dir / "pipeline"
        _replace_dir(staging, final)
        result.pipeline_dir = str(final)
        result.samples_path = str(final / "samples.png")
        logger.info("exported the %s weights to %s", "EMA" if self.ema is not None else "final", final)
        if cfg.push_to_hub:
            commit = push_pipeline_to_hub(
                final,
                cfg.hub_model_id,
                token=plan.hub_token,
                private=cfg.hub_private,
                commit_message=f"sde-diffusers: {cfg.model_preset}, "
                f"{'soft diffusion' if cfg.sde is None else cfg.sde + ' SDE'}, "
                f"{result.global_step} steps",
            )
            result.hub_commit_url = getattr(commit, "commit_url", None)
            logger.info("pushed to %s", cfg.hub_model_id)
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "loss_history"}
        summary["config"] = cfg.to_dict()
        write_text_atomic(plan.output_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def run_from_args(args: argparse.Namespace) -> int:
    """Run the trainer from parsed arguments; input errors print one line and return 2."""
    try:
        result = train(config_from_args(args))
    except (TrainingInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.pipeline_dir:
        line = (
            f"done: {result.global_step} steps, final loss {result.final_loss:.4g}"
            if result.final_loss is not None
            else f"done: {result.global_step} steps"
        )
        if result.bits_per_dim is not None:
            line += f", {result.bits_per_dim:.3f} bits/dim"
        print(f"{line}; pipeline in {result.pipeline_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    from sde_diffusers.training.train_score_sde import main as _main  # one copy of the classes, not two

    sys.exit(_main())
