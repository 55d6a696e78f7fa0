"""The trainer with ``--corruption blur`` (Soft Diffusion): the loss it optimises, learning, export, exact resume
and the options it refuses.

Tiny DDPM++ on the 8x8 digits on one thread; every run is in-process and takes a few seconds.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from training_helpers import tiny_config

from sde_diffusers.training import (
    TrainingConfig,
    TrainingInputError,
    list_checkpoints,
    main,
    read_trainer_state,
    train,
    validate_config,
)
from sde_diffusers.training.trainer import Trainer

UNET = "unet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(output_dir, **overrides) -> TrainingConfig:
    values = dict(corruption="blur", learning_rate=2e-3, num_inference_steps=5)
    values.update(overrides)
    return tiny_config(output_dir, **values)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A blur run long enough to learn, with a final checkpoint and an exported pipeline."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("soft")
    cfg = tiny(
        out,
        train_batch_size=32,
        max_train_steps=60,
        lr_warmup_steps=10,
        logging_steps=10,
        save_final_checkpoint=True,
        sample_every=30,
    )
    return cfg, train(cfg)


# ---- the loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["score", "uniform"])
def test_the_step_loss_is_soft_score_matching_on_the_fitted_schedule(tmp_path, weighting):
    plan = validate_config(tiny(tmp_path, soft_weighting=weighting, use_ema=False, lr_warmup_steps=0))
    scheduler = plan.scheduler
    # The schedule is fitted to the data: W2-spaced levels (not the default geometric path) and the colour prior.
    assert scheduler.config.blur_sigmas is not None and len(scheduler.config.blur_sigmas) == 1000
    assert scheduler.config.prior_mean is not None and scheduler.config.image_size == [8, 8]
    trainer = Trainer(plan)
    trainer._setup()
    x, y, t, noise = batch = trainer._micro_batch()
    assert y is None and float(t.min()) >= 0.0 and float(t.max()) <= 1.0

    with torch.no_grad():
        loss_before = float(trainer._loss(*batch))
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    step_loss = float(trainer._train_step([batch]))
    assert step_loss == pytest.approx(loss_before, rel=1e-6)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.raw_model.state_dict().items())

    # Independently (after the step: the freshly initialised output layer is ~0 whatever the input): x_t from the
    # scheduler at model timesteps t * 999, the x_0 prediction compared after blurring, weighted.
    steps = t * (scheduler.config.num_train_timesteps - 1)
    with torch.no_grad():
        x_t = scheduler.add_noise(x, noise, steps)
        residual = trainer.raw_model(x_t, steps).sample - x
        per_sample = scheduler.corruption.blur(residual, t).pow(2).flatten(1).mean(1)
        weight = scheduler.corruption.noise_std(t).pow(-2) if weighting == "score" else torch.ones_like(t)
        expected = float((weight * per_sample).mean())
        loss_after = float(trainer._loss(*batch))
    assert loss_after == pytest.approx(expected, rel=1e-5)
    assert loss_after < loss_before


def test_a_short_blur_run_learns(finished_run):
    _, result = finished_run
    assert result.global_step == 60 and len(result.loss_history) == 6
    assert result.final_loss < 0.2 * result.loss_history[0][1], result.loss_history
    assert result.bits_per_dim is None  # not defined for blur corruption


# ---- export --------------------------------------------------------------------------------------------------
def test_the_export_is_a_soft_diffusion_pipeline_that_loads_both_ways(finished_run):
    from diffusers import DiffusionPipeline

    from sde_diffusers.pipelines import SoftDiffusionPipeline
    from sde_diffusers.schedulers import SoftDiffusionScheduler

    cfg, result = finished_run
    folder = Path(result.pipeline_dir)
    ours = SoftDiffusionPipeline.from_pretrained(folder)
    plain = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(ours) is SoftDiffusionPipeline and type(plain).__name__ == "SoftDiffusionPipeline"
    assert isinstance(ours.scheduler, SoftDiffusionScheduler)
    # The exported weights are the EMA weights of the final checkpoint; the scheduler is the fitted one.
    final = Path(cfg.output_dir) / "checkpoints" / "checkpoint-00000060"
    exported = load_file(str(folder / UNET))
    assert_same(exported, load_file(str(final / "ema.safetensors")))
    assert any(not torch.equal(exported[k], v) for k, v in load_file(str(final / UNET)).items())
    saved = json.loads((final / "scheduler" / "scheduler_config.json").read_text())
    for key in ("blur_sigmas", "noise_stds", "prior_mean", "prior_cov"):
        assert ours.scheduler.config[key] == plain.scheduler.config[key] == saved[key], key
    images = [
        p(batch_size=3, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt").images
        for p in (ours, plain)
    ]
    assert images[0].shape == (3, 1, 8, 8) and torch.isfinite(images[0]).all()
    assert float(images[0].min()) >= 0.0 and float(images[0].max()) <= 1.0
    assert torch.equal(images[0], images[1])

    card = (folder / "README.md").read_text()
    for text in (
        "soft-diffusion",
        "SoftDiffusionPipeline",
        "DDPMppModel",
        "Wasserstein-2",
        "digits",
        "| Training steps | 60 |",
        "Bits/dim | not defined for blur",
        "daras2022soft",
        "samples.png",
    ):
        assert text in card, text
    assert str(cfg.output_dir) not in card and '"beta_max"' not in card and '"sde"' not in card
    assert (folder / "samples.png").is_file()
    assert (Path(cfg.output_dir) / "samples" / "step-00000030.png").is_file()  # the periodic grid


# ---- exact resume ----------------------------------------------------------------------------------------------
class _Crash(Exception):
    pass


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    common = dict(
        max_train_steps=8,
        checkpointing_steps=4,
        save_final_checkpoint=True,
        random_flip=True,
        lr_scheduler="cosine",
    )
    reference = train(tiny(tmp_path / "reference", **common))

    real_save = Trainer._save_checkpoint

    def save_then_crash(self):
        path = real_save(self)
        if self.global_step == 4:
            raise _Crash("killed after the step-4 checkpoint")
        return path

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(tiny(tmp_path / "victim", **common))
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)
    checkpoints = tmp_path / "victim" / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-00000004"]
    assert "scheduler/scheduler_config.json" in read_trainer_state(checkpoints / "checkpoint-00000004")["files"]

    resumed = train(tiny(tmp_path / "victim", resume_from_checkpoint="latest", **common))
    assert resumed.resumed_from.endswith("checkpoint-00000004") and resumed.global_step == 8
    ours, theirs = (
        checkpoints / "checkpoint-00000008",
        Path(reference.output_dir) / "checkpoints" / "checkpoint-00000008",
    )
    for name in (UNET, "ema.safetensors", "generator.safetensors"):
        assert_same(load_file(str(ours / name)), load_file(str(theirs / name)))
    a, b = read_trainer_state(ours), read_trainer_state(theirs)
    assert a["loss_history"] == b["loss_history"] and a["ema"] == b["ema"] and a["data_position"] == 8
    assert (ours / "scheduler" / "scheduler_config.json").read_text() == (
        theirs / "scheduler" / "scheduler_config.json"
    ).read_text()
    assert_same(load_file(str(Path(resumed.pipeline_dir) / UNET)), load_file(str(Path(reference.pipeline_dir) / UNET)))


def test_a_resumed_run_reads_the_schedule_from_its_checkpoint(finished_run, tmp_path):
    cfg, _ = finished_run
    out = Path(cfg.output_dir)
    latest = out / "checkpoints" / "checkpoint-00000060"
    fitted = validate_config(replace(cfg, output_dir=str(tmp_path / "fresh"))).scheduler.config
    resumed = validate_config(replace(cfg, max_train_steps=61, resume_from_checkpoint="latest")).scheduler.config
    saved = json.loads((latest / "scheduler" / "scheduler_config.json").read_text())
    for key in ("blur_sigmas", "noise_stds", "prior_mean", "prior_cov", "image_size", "num_train_timesteps"):
        assert resumed[key] == saved[key] == fitted[key], key  # and the fit itself is deterministic
    # What is read is the checkpoint's schedule, not a new fit: an edited copy comes back as edited.
    copy = tmp_path / "copy" / latest.name
    shutil.copytree(latest, copy)
    edited = dict(saved, noise_stds=[1.5 * s for s in saved["noise_stds"]])
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(edited))
    plan = validate_config(replace(cfg, output_dir=str(tmp_path / "other"), resume_from_checkpoint=str(copy)))
    assert plan.scheduler.config.noise_stds == edited["noise_stds"] != fitted["noise_stds"]
    with pytest.raises(TrainingInputError, match="other settings.*corruption"):
        validate_config(replace(cfg, corruption="gaussian", resume_from_checkpoint="latest"))
    with pytest.raises(TrainingInputError, match="other settings.*soft_weighting"):
        validate_config(replace(cfg, soft_weighting="uniform", resume_from_checkpoint="latest"))


# ---- bad combinations ------------------------------------------------------------------------------------------
BAD = {
    "discrete smld loss": (dict(loss="smld"), "--loss smld is a discrete loss of the Gaussian SDEs"),
    "discrete ddpm loss": (dict(loss="ddpm"), "--loss ddpm is a discrete loss"),
    "likelihood weighting": (dict(likelihood_weighting=True), "--likelihood_weighting .* does not apply"),
    "an sde": (dict(sde="vp"), "--sde vp does not apply to --corruption blur"),
    "an ncsn++ preset": (dict(model_preset="ncsnpp-tiny"), "needs a DDPM\\+\\+ preset"),
    "class-conditional": (dict(class_conditional=True), "SoftDiffusionPipeline is unconditional"),
    "bits/dim": (dict(eval_bpd_images=4), "bits/dim is not defined for --corruption blur"),
    "a PC predictor": (
        dict(predictor="euler_maruyama", snr=0.1),
        "--predictor/--snr configure the predictor",
    ),
    "more sampling steps than levels": (
        dict(num_train_timesteps=10, num_inference_steps=11),
        "--num_inference_steps \\(11\\) must be <= --num_train_timesteps \\(10\\)",
    ),
    "soft weighting without blur": (
        dict(corruption="gaussian", soft_weighting="uniform"),
        "--soft_weighting applies to --corruption blur only",
    ),
    "unknown corruption": (dict(corruption="motion"), "--corruption must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_combinations_fail_before_anything_is_written(case, tmp_path):
    overrides, message = BAD[case]
    out = tmp_path / "out"
    with pytest.raises(TrainingInputError, match=message):
        train(tiny(out, **overrides))
    assert not out.exists()


def test_a_schedule_that_cannot_be_fitted_fails_clearly(tmp_path):
    # One training image: the starting colour prior needs a covariance, i.e. at least two images.
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 90, np.uint8), mode="L").save(folder / "0.png")
    with pytest.raises(TrainingInputError, match=r"--corruption blur: cannot fit the corruption schedule.*batch >= 2"):
        train(tiny(tmp_path / "out", dataset_name=None, train_data_dir=str(folder), train_batch_size=1))
    assert not list((tmp_path / "out").rglob("*"))


def test_cli_blur_errors_are_one_line_and_the_subcommand_knows_the_flag(tmp_path, capsys):
    assert (
        main(
            [
                "--dataset_name",
                "digits",
                "--corruption",
                "blur",
                "--loss",
                "ddpm",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --loss ddpm") and err.count("\n") == 1
    from sde_diffusers.cli import build_parser
    from sde_diffusers.training import config_from_args

    args = build_parser().parse_args(
        ["train", "--dataset_name", "digits", "--corruption", "blur", "--soft_weighting", "uniform"]
    )
    cfg = config_from_args(args)
    assert (cfg.corruption, cfg.soft_weighting, cfg.sde) == ("blur", "uniform", None)


@pytest.mark.parametrize("name", ["mnist_soft", "mnist_soft_cpu"])
def test_the_shipped_soft_diffusion_configs_validate(name, tmp_path):
    from sde_diffusers.training import config_from_args

    config = Path(__file__).resolve().parents[1] / "training" / "configs" / f"{name}.json"
    plan = validate_config(config_from_args(argv=["--config", str(config), "--output_dir", str(tmp_path)]))
    assert plan.config.corruption == "blur" and plan.config.sde is None
    assert plan.scheduler.config.image_size == [28, 28] and type(plan.model).__name__ == "DDPMppModel"
