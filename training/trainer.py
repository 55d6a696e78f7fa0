"""The training loop: ``accelerate`` set-up, micro-batches, optimizer steps, EMA, crash-safe checkpoints, exact resume.

Reproducibility: all training randomness (data order, flips, training times and noise) is drawn for the *global*
batch from generators that every process seeds alike, and each process takes its slice. A run therefore gives the
same result (up to floating-point summation order) on any number of processes with the same global batch, and a
resumed run continues bit for bit (same step, optimizer, EMA, learning rate, data position, generator and RNG
states). What depends on ``--corruption`` (times, loss, scheduler, what a checkpoint carries) is asked of the
strategy in ``plan.corruption``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, gather_object, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sde_diffusers.data import to_model_range

from .checkpointing import (
    CHECKPOINT_FORMAT,
    STATE_FILE,
    clean_staging,
    commit_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    staging_dir,
    write_text_atomic,
)
from .config import TrainingConfig, TrainingInputError, TrainingResult
from .export import EMAWeights, bits_per_dim, export_pipeline, push_to_hub, sample_grid, write_summary
from .plan import TrainingPlan, validate_config, world_size

__all__ = ["Trainer", "train"]

logger = logging.getLogger("sde_diffusers.training")

_CHECKPOINT_VERSION = 1
_UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def train(config: TrainingConfig) -> TrainingResult:
    """Validate ``config``, train, checkpoint, export the EMA pipeline and optionally push it to the Hub.

    Every input error is raised before anything is written (see :func:`~sde_diffusers.training.validate_config`).

    Args:
        config (`TrainingConfig`): the options.

    Returns:
        `TrainingResult`.
    """
    return Trainer(validate_config(config)).run()


class _BatchStream:
    """Indices of successive global micro-batches: a fresh permutation of the data set every epoch.

    The order depends only on ``seed`` and the position, so it resumes exactly and is the same on every process.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int, device: torch.device) -> None:
        self.num_examples, self.global_batch, self.seed, self.device = num_examples, global_batch, seed, device
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


class Trainer:
    """Runs a :class:`~sde_diffusers.training.plan.TrainingPlan`: ``Trainer(validate_config(cfg)).run()``."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.corruption = plan.corruption
        self.initial_loss: float | None = None
        self.loss_history: list = []

    # -- setup --------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, plan = self.cfg, self.plan
        accelerator = Accelerator(
            # Several processes without a GPU: accelerate only forms a (gloo) MULTI_CPU world when told `cpu`.
            cpu=cfg.use_cpu or (world_size() > 1 and not torch.cuda.is_available()),
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
        if accelerator.num_processes != world_size():
            raise TrainingInputError(
                f"the launcher announced {world_size()} processes but accelerate runs {accelerator.num_processes}"
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
            cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_train_steps
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.raw_model = accelerator.unwrap_model(self.model)
        accelerator.register_for_checkpointing(self.lr_scheduler)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)
        self.ema = EMAModel(self.raw_model.parameters(), decay=cfg.ema_decay, foreach=True) if cfg.use_ema else None

        data = plan.data
        # Small data sets live on the device: a batch is one index operation.
        self.images = data.images.to(self.device) if data.images.numel() < 2**30 else data.images
        self.labels = (
            data.labels.to(self.images.device) if (cfg.class_conditional and data.labels is not None) else None
        )
        self.global_batch = cfg.train_batch_size * self.world
        self.stream = _BatchStream(len(data), self.global_batch, cfg.seed, self.images.device)
        # Training times, noise and flips for the global batch: the same generator on every process.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.global_step = 0
        self.window, self.loss_count = None, 0

    def _save_model_hook(self, models: list, weights: list, output_dir: str) -> None:
        # Save the unwrapped model in Diffusers format (loadable with from_pretrained, independent of DDP).
        if self.accelerator.is_main_process:
            self.raw_model.save_pretrained(os.path.join(output_dir, "unet"))
        weights.clear()

    def _load_model_hook(self, models: list, input_dir: str) -> None:
        self.raw_model.load_state_dict(load_file(os.path.join(input_dir, _UNET_WEIGHTS), device="cpu"))
        models.clear()

    # -- checkpoints --------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> Path | None:
        cfg, acc, plan = self.cfg, self.accelerator, self.plan
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
                _UNET_WEIGHTS,
                "unet/config.json",
                "optimizer.bin",
                "random_states_0.pkl",
                "generator.safetensors",
            ]
            save_file({"state": self.generator.get_state().cpu()}, str(staging / "generator.safetensors"))
            files += self.corruption.save_with_checkpoint(plan.scheduler, staging)
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
        state = read_trainer_state(path)
        if state.get("world_size") != self.world:
            logger.warning(
                "checkpoint %s was written by %s processes, resuming on %s: the data order and training noise "
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
    def _loss(self, x: torch.Tensor, y: torch.Tensor | None, times: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.corruption.loss(self.cfg, self.plan.scheduler, self.model, self.raw_model, x, y, times, noise)

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        cfg, g, gen, dev = self.cfg, self.global_batch, self.generator, self.device
        idx = self.stream.next()
        times = self.corruption.sample_times(cfg, self.plan.scheduler, g, gen, dev)
        noise = torch.randn((g, *self.images.shape[1:]), generator=gen, device=dev)
        flip = torch.rand(g, generator=gen, device=dev) < 0.5 if cfg.random_flip else None
        mine = slice(self.rank * cfg.train_batch_size, (self.rank + 1) * cfg.train_batch_size)
        local = idx[mine]
        x = to_model_range(self.images[local].to(dev, non_blocking=True))
        if flip is not None:
            x = torch.where(flip[mine].view(-1, 1, 1, 1), x.flip(-1), x)
        y = self.labels[local].to(dev) if self.labels is not None else None
        return x, y, times[mine], noise[mine]

    def _train_step(self, batches: list | None = None) -> torch.Tensor:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches (drawn, or given in ``batches``)."""
        cfg, acc = self.cfg, self.accelerator
        total = torch.zeros((), device=self.device)
        for i in range(cfg.gradient_accumulation_steps):
            x, y, times, noise = self._micro_batch() if batches is None else batches[i]
            with acc.accumulate(self.model):
                loss = self._loss(x, y, times, noise)
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
    def _log_samples(self) -> Image.Image | None:
        acc = self.accelerator
        if not acc.is_main_process:
            return None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with EMAWeights(self.ema, self.raw_model) as model:
                grid = sample_grid(model, self.plan, self.cfg.seed + 3)
        folder = self.plan.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"step-{self.global_step:08d}.png")
        if self.cfg.report_to == "tensorboard":
            acc.get_tracker("tensorboard").log_images(
                {"samples": np.asarray(grid.convert("RGB"))[None]}, step=self.global_step, dataformats="NHWC"
            )
        return grid

    # -- main loop ----------------------------------------------------------------------------------------
    def _start(self) -> str | None:
        """Clean up after a crash, apply ``--overwrite_output_dir``, resume; the checkpoint resumed from."""
        cfg, plan, acc = self.cfg, self.plan, self.accelerator
        if acc.is_main_process:
            clean_staging(plan.checkpoints_dir)
            if plan.resume_dir is None and cfg.overwrite_output_dir:
                for old in list_checkpoints(plan.checkpoints_dir):
                    shutil.rmtree(old)
                (plan.checkpoints_dir / "latest").unlink(missing_ok=True)
        acc.wait_for_everyone()
        if plan.resume_dir is not None:
            self._load_checkpoint(plan.resume_dir)
            return str(plan.resume_dir)
        if cfg.resume_from_checkpoint == "latest":
            logger.info("no checkpoint in %s yet: starting a new run", plan.checkpoints_dir)
        return None

    def run(self) -> TrainingResult:
        """Train to ``max_train_steps``, checkpointing and sampling on the way, then export; the result."""
        cfg, plan = self.cfg, self.plan
        self._setup()
        acc = self.accelerator
        resumed_from = self._start()
        if cfg.report_to != "none":
            hparams = {
                k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                for k, v in cfg.to_dict(public=True).items()
            }
            acc.init_trackers("score_sde", config=hparams)
        logger.info(
            "training %s (%s, %.2fM parameters) with %s on %s: %d processes x %d images x %d accumulation, "
            "%d steps, mixed precision %s",
            cfg.model_preset,
            type(self.raw_model).__name__,
            sum(p.numel() for p in self.raw_model.parameters()) / 1e6,
            self.corruption.describe(cfg),
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
            loss = self._train_step()
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
                self._log_samples()
            if (cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0) or (
                cfg.save_final_checkpoint and self.global_step == cfg.max_train_steps
            ):
                self._save_checkpoint()
        progress.close()
        acc.wait_for_everyone()
        return self._finish(resumed_from, timed_steps / timed_seconds if timed_seconds > 0 else None)

    def _finish(self, resumed_from: str | None, steps_per_second: float | None) -> TrainingResult:
        acc = self.accelerator
        result = TrainingResult(
            output_dir=str(self.plan.output_dir),
            global_step=self.global_step,
            initial_loss=self.initial_loss,
            final_loss=self.loss_history[-1][1] if self.loss_history else None,
            loss_history=list(self.loss_history),
            steps_per_second=steps_per_second,
            world_size=self.world,
            param_digests=list(gather_object([_params_digest(self.raw_model)])),
            resumed_from=resumed_from,
        )
        if acc.is_main_process:
            self._export(result)
        acc.wait_for_everyone()
        acc.end_training()
        return result

    def _export(self, result: TrainingResult) -> None:
        cfg, plan = self.cfg, self.plan
        grid = self._log_samples()
        bpd_text = None
        note = self.corruption.bits_per_dim_note()
        if note is not None:
            logger.info("bits/dim: %s", note)
        with EMAWeights(self.ema, self.raw_model) as model:
            if cfg.eval_bpd_images:
                logger.info("measuring bits/dim on %s", plan.eval_note)
                mean, stderr = bits_per_dim(model, plan, self.device)
                result.bits_per_dim, result.bits_per_dim_stderr = mean, stderr
                bpd_text = (
                    f"{mean:.3f} ± {stderr:.3f} on {plan.eval_note}: uniform dequantization, "
                    f"probability-flow ODE (RK45, rtol = atol = {cfg.eval_bpd_tolerance:g})"
                )
                self.accelerator.log({"bits_per_dim": mean}, step=self.global_step)
                logger.info("bits/dim %.3f +- %.3f", mean, stderr)
            folder = export_pipeline(plan, model, grid, result, bpd_text)
        result.pipeline_dir = str(folder)
        result.samples_path = str(folder / "samples.png")
        logger.info("exported the %s weights to %s", "EMA" if self.ema is not None else "final", folder)
        if cfg.push_to_hub:
            result.hub_commit_url = push_to_hub(plan, folder, result)
            logger.info("pushed to %s", cfg.hub_model_id)
        write_summary(plan, result)
