"""The trainer's options: :class:`TrainingConfig`, its command line (argparse) and JSON config files.

Every option has the same name as a field of :class:`TrainingConfig` and a flag of ``train_score_sde.py`` /
``sde-diffusers train``. Which options apply depends on ``--corruption`` (see
:mod:`sde_diffusers.training.corruptions`); the others must be left at their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SDE_TYPES",
    "CORRUPTION_TYPES",
    "LOSS_TYPES",
    "SOFT_WEIGHTINGS",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "REPORT_TO",
    "RESUME_KEYS",
    "DESCRIPTION",
    "TrainingConfig",
    "TrainingResult",
    "TrainingInputError",
    "add_arguments",
    "build_parser",
    "config_from_args",
    "load_config_file",
]

SDE_TYPES = ("ve", "vp", "subvp")
# One entry per strategy of sde_diffusers.training.corruptions (checked there).
CORRUPTION_TYPES = ("gaussian", "blur")
LOSS_TYPES = ("dsm", "smld", "ddpm")
SOFT_WEIGHTINGS = ("score", "uniform")
LR_SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "none")
# Options that must agree between a checkpoint and the run resuming it (they shape the weights or the maths).
RESUME_KEYS = (
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


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"error: {parser.prog}: {message} (see --help)\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every trainer option to ``parser`` (used by the script and by ``sde-diffusers train``).

    A malformed flag then reports one line and exit status 2, like every other input error of the trainer, instead
    of argparse's usage dump of sixty options followed by the message.
    """
    parser.error = functools.partial(_one_line_error, parser)
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
        choices=SOFT_WEIGHTINGS,
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


DESCRIPTION = (
    "Train a score-based model (NCSN++ / DDPM++, Gaussian SDE) or a Soft Diffusion model (DDPM++, blur + noise) on "
    "images with accelerate."
)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's argument parser (``train_score_sde.py``)."""
    parser = argparse.ArgumentParser(prog="train_score_sde.py", description=DESCRIPTION)
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
