"""The trainer: learning, exact resume after SIGKILL, two-process DDP, export, Hub round trip, bad inputs.

Runs use the tiny DDPM++ on the 8x8 digits with small batches on one thread, so each in-process run takes a
second or two; subprocess runs (SIGKILL, torchrun) pay an interpreter start each.
"""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
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
    config_from_args,
    list_checkpoints,
    main,
    read_trainer_state,
    resolve_checkpoint,
    train,
    validate_config,
)
from sde_diffusers.training import checkpointing as ckpt
from sde_diffusers.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_score_sde.py"
UNET = "unet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


tiny = tiny_config


def cli_args(cfg: TrainingConfig) -> list[str]:
    args = []
    for key, value in cfg.to_dict().items():
        default = getattr(TrainingConfig(), key)
        if value == default:
            continue
        if isinstance(value, bool) and key in (
            "overwrite_output_dir",
            "push_to_hub",
            "hub_private",
            "use_cpu",
        ):
            args += [f"--{key}"] if value else []
        elif isinstance(value, dict):
            args += [f"--{key}", json.dumps(value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole session (torchrun's workers too)."""
    proc = subprocess.Popen(
        cmd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def weights(path) -> dict:
    return load_file(str(path))


def assert_same(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed tiny run with checkpoints, an exported pipeline and a measured bits/dim."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finished")
    cfg = tiny(
        out,
        max_train_steps=6,
        checkpointing_steps=3,
        save_final_checkpoint=True,
        eval_bpd_images=4,
        eval_bpd_tolerance=1e-3,
        report_to="tensorboard",
    )
    return cfg, train(cfg)


# ---- learning --------------------------------------------------------------------------------------------
def test_one_step_changes_the_weights_and_lowers_the_loss_on_a_fixed_batch(tmp_path):
    plan = validate_config(tiny(tmp_path, use_ema=False, lr_warmup_steps=0))
    trainer = Trainer(plan)
    trainer._setup()
    batch = trainer._micro_batch()
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    with torch.no_grad():
        loss_before = float(trainer._loss(*batch))
    step_loss = float(trainer._train_step([batch]))
    with torch.no_grad():
        loss_after = float(trainer._loss(*batch))
    changed = [k for k, v in trainer.raw_model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one optimizer step left every weight unchanged"
    assert step_loss == pytest.approx(loss_before, rel=1e-6)
    assert loss_after < loss_before


def test_validation_resolves_defaults_into_the_plan_without_changing_the_config(tmp_path):
    cfg = tiny(tmp_path, model_preset="ncsnpp-tiny", loss="smld")
    before = dataclasses.asdict(cfg)
    plan = validate_config(cfg)
    assert dataclasses.asdict(cfg) == before and cfg.sde is None and cfg.reduce_mean is None
    # The preset's SDE, score_sde's reduction for VE, the data's size and the largest pairwise distance.
    resolved = plan.config
    assert (resolved.sde, resolved.reduce_mean, resolved.resolution) == ("ve", False, 8)
    assert 5.0 < resolved.sigma_max < 16.0 and plan.scheduler.config.sigma_max == resolved.sigma_max
    assert plan.corruption.name == "gaussian" and plan.sde is plan.scheduler.sde


def test_a_short_run_on_digits_learns(tmp_path):
    result = train(
        tiny(
            tmp_path,
            train_batch_size=64,
            max_train_steps=120,
            learning_rate=2e-3,
            lr_warmup_steps=20,
            logging_steps=20,
        )
    )
    # The untrained DDPM++ outputs zero epsilon: the VP loss (mean over pixels) starts at E|z|^2 = 1.
    assert result.initial_loss == pytest.approx(1.0, abs=0.15)
    assert result.final_loss < 0.5 * result.initial_loss, result.loss_history
    assert result.global_step == 120 and len(result.loss_history) == 6


@pytest.mark.parametrize(
    "overrides",
    [
        dict(model_preset="ncsnpp-tiny", sde="ve", loss="smld"),
        dict(sde="subvp", likelihood_weighting=True, gradient_accumulation_steps=2),
        dict(sde="vp", loss="ddpm", class_conditional=True, random_flip=True),
    ],
    ids=["ve-smld", "subvp-likelihood-accumulation", "vp-ddpm-class-conditional"],
)
def test_every_sde_and_loss_trains_and_exports(tmp_path, overrides):
    from sde_diffusers.pipelines import ScoreSdePipeline

    result = train(tiny(tmp_path, **overrides))
    assert np.isfinite(result.final_loss) and result.global_step == 4
    pipe = ScoreSdePipeline.from_pretrained(result.pipeline_dir)
    state = json.loads((tmp_path / "train_summary.json").read_text())["config"]
    assert state["sde"] == overrides["sde"]
    kwargs = {"class_labels": [0, 9]} if overrides.get("class_conditional") else {}
    images = pipe(batch_size=2, num_inference_steps=2, output_type="pt", **kwargs).images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    if overrides.get("sde") == "ve":
        # sigma_max defaults to the largest distance between two training images in [-1, 1].
        assert 5.0 < pipe.scheduler.config.sigma_max < 2 * 8.0
    if overrides.get("class_conditional"):
        assert pipe.unet.config.num_class_embeds == 10


# ---- export ----------------------------------------------------------------------------------------------
def test_the_exported_folder_loads_both_ways_with_the_ema_weights(finished_run):
    from diffusers import DiffusionPipeline

    from sde_diffusers.pipelines import ScoreSdePipeline

    cfg, result = finished_run
    folder = Path(result.pipeline_dir)
    ours = ScoreSdePipeline.from_pretrained(folder)
    plain = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(plain).__name__ == "ScoreSdePipeline" and type(ours) is ScoreSdePipeline
    exported = weights(folder / UNET)
    assert_same(exported, {k: v.contiguous() for k, v in plain.unet.state_dict().items()})
    assert_same(exported, {k: v.contiguous() for k, v in ours.unet.state_dict().items()})
    # The exported weights are the EMA weights of the final checkpoint, not the raw training weights.
    final = Path(cfg.output_dir) / "checkpoints" / "checkpoint-00000006"
    ema = weights(final / "ema.safetensors")
    raw = weights(final / UNET)
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(exported[k], raw[k]) for k in ema)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    assert not {"decay", "optimization_step", "shadow_params"} & set(unet_config)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = ours(batch_size=2, num_inference_steps=3, generator=g1, output_type="pt").images
    b = plain(batch_size=2, num_inference_steps=3, generator=g2, output_type="pt").images
    assert torch.equal(a, b)
    card = (folder / "README.md").read_text()
    for text in (
        "DDPMppModel",
        "VP SDE",
        "digits",
        "| Training steps | 6 |",
        "samples.png",
        "apache-2.0",
        "song2021scorebased",
        "trust_remote_code=True",
    ):
        assert text in card, text
    assert f"{result.bits_per_dim:.3f}" in card and (folder / "samples.png").is_file()
    assert str(cfg.output_dir) not in card  # no local paths are published
    logs = list((Path(cfg.output_dir) / "logs").rglob("events.out.tfevents.*"))
    assert logs, "no TensorBoard event files"


def test_checkpoints_are_complete_and_pruned(tmp_path):
    out = tmp_path / "run"
    train(
        tiny(
            out,
            max_train_steps=6,
            checkpointing_steps=2,
            checkpoints_total_limit=2,
            save_final_checkpoint=True,
        )
    )
    found = list_checkpoints(out / "checkpoints")
    assert [p.name for p in found] == ["checkpoint-00000004", "checkpoint-00000006"]
    assert resolve_checkpoint("latest", out / "checkpoints") == found[-1]
    state = read_trainer_state(found[-1])
    assert state["global_step"] == 6 and state["data_position"] == 6 and state["config"]["seed"] == 0
    assert "hub_token" not in state["config"]
    from sde_diffusers.models import DDPMppModel

    model = DDPMppModel.from_pretrained(found[-1] / "unet")
    assert model.config.sample_size == 8


# ---- exact resume ----------------------------------------------------------------------------------------
def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "run"
    real_save = Accelerator.save_state
    calls = []

    def failing_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            Path(output_dir, "optimizer.bin").write_bytes(b"half")
            raise OSError("disk full (simulated)")
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", failing_save)
    with pytest.raises(OSError, match="simulated"):
        train(tiny(out, max_train_steps=6, checkpointing_steps=2))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000002"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "checkpoint-00000002"
    assert not (out / "checkpoints" / "checkpoint-00000004").exists()
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    resumed = train(tiny(out, max_train_steps=6, checkpointing_steps=2, resume_from_checkpoint="latest"))
    assert resumed.global_step == 6 and resumed.resumed_from.endswith("checkpoint-00000002")
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    steps = 80
    common = dict(max_train_steps=steps, checkpointing_steps=5, save_final_checkpoint=True, logging_steps=5)
    reference = train(tiny(tmp_path / "reference", **common))
    victim_cfg = tiny(tmp_path / "victim", **common)
    log = open(tmp_path / "victim.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *cli_args(victim_cfg)],
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    latest = tmp_path / "victim" / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    try:
        # Kill it once it has written a few checkpoints (it may be in the middle of writing the next one).
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file() and latest.read_text().strip() >= "checkpoint-00000010":
                break
            time.sleep(0.005)
        ended = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not ended, f"the trainer ended before it could be killed: {(tmp_path / 'victim.log').read_text()}"
    assert proc.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "victim" / "checkpoints"
    done = list_checkpoints(checkpoints)
    assert done and len(done) < steps // 5
    # Every checkpoint folder is complete and readable; `latest` names one of them.
    for path in checkpoints.glob("checkpoint-*"):
        state = read_trainer_state(path)
        for name in state["files"]:
            if name.endswith(".safetensors"):
                load_file(str(path / name))
    assert resolve_checkpoint("latest", checkpoints) == done[-1]
    killed_at = read_trainer_state(done[-1])["global_step"]
    assert 10 <= killed_at < steps

    resumed = run_bounded(
        [sys.executable, str(SCRIPT), *cli_args(victim_cfg), "--resume_from_checkpoint", "latest"],
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = f"checkpoint-{steps:08d}"
    ours, theirs = checkpoints / final, Path(reference.output_dir) / "checkpoints" / final
    assert_same(weights(ours / UNET), weights(theirs / UNET))
    assert_same(weights(ours / "ema.safetensors"), weights(theirs / "ema.safetensors"))
    a, b = read_trainer_state(ours), read_trainer_state(theirs)
    assert a["loss_history"] == b["loss_history"] and a["ema"] == b["ema"] and a["data_position"] == steps
    assert_same(weights(Path(reference.pipeline_dir) / UNET), weights(checkpoints.parent / "pipeline" / UNET))


# ---- two CPU processes -------------------------------------------------------------------------------------
def test_two_cpu_processes_average_gradients_like_one_process_with_the_whole_batch(tmp_path):
    two = tiny(tmp_path / "ddp", train_batch_size=8, max_train_steps=5, save_final_checkpoint=True)
    run = run_bounded(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            *cli_args(two),
        ],
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(set(summary["param_digests"])) == 1, "the two processes ended with different weights"
    one = train(tiny(tmp_path / "single", train_batch_size=16, max_train_steps=5, save_final_checkpoint=True))
    ckpt_two = tmp_path / "ddp" / "checkpoints" / "checkpoint-00000005"
    ckpt_one = Path(one.output_dir) / "checkpoints" / "checkpoint-00000005"
    # Same global batch, time and noise draws: the DDP average of two half-batch gradients is the full-batch
    # gradient, so the weights agree up to summation order.
    assert_same(weights(ckpt_two / UNET), weights(ckpt_one / UNET), atol=1e-5)
    assert_same(weights(ckpt_two / "ema.safetensors"), weights(ckpt_one / "ema.safetensors"), atol=1e-5)
    assert read_trainer_state(ckpt_two)["world_size"] == 2
    # The two-process checkpoint loads into a one-process run, which continues from it.
    cont = train(tiny(tmp_path / "ddp", train_batch_size=8, max_train_steps=6, resume_from_checkpoint=str(ckpt_two)))
    assert cont.global_step == 6 and cont.resumed_from == str(ckpt_two)


# ---- Hub ---------------------------------------------------------------------------------------------------
def test_push_to_the_hub_and_load_with_plain_diffusers(tmp_path, local_hub, local_hub_server):
    from diffusers import DiffusionPipeline

    from sde_diffusers.pipelines import ScoreSdePipeline

    result = train(tiny(tmp_path, push_to_hub=True, hub_model_id="user/tiny-digits", hub_token=local_hub.token))
    assert local_hub_server.repo_exists("user/tiny-digits")
    cache = tmp_path / "cache"
    plain = DiffusionPipeline.from_pretrained("user/tiny-digits", trust_remote_code=True, cache_dir=cache)
    ours = ScoreSdePipeline.from_pretrained("user/tiny-digits", cache_dir=cache)
    exported = weights(Path(result.pipeline_dir) / UNET)
    for pipe in (plain, ours):
        assert_same(exported, {k: v.contiguous() for k, v in pipe.unet.state_dict().items()})
    local = ScoreSdePipeline.from_pretrained(result.pipeline_dir)
    images = [
        p(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="pt").images
        for p in (plain, local)
    ]
    assert torch.equal(images[0], images[1])
    from huggingface_hub import hf_hub_download

    card = Path(hf_hub_download("user/tiny-digits", "README.md", cache_dir=cache)).read_text()
    assert "user/tiny-digits" in card and "| Training steps | 4 |" in card
    assert hf_hub_download("user/tiny-digits", "samples.png", cache_dir=cache)
    assert local_hub.token not in card and local_hub.token not in (tmp_path / "train_summary.json").read_text()


# ---- bad input ---------------------------------------------------------------------------------------------
def _folder(path: Path, sizes=((8, 8),), modes=("L",)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, (size, mode) in enumerate(zip(sizes, modes, strict=True)):
        channels = {"L": (), "RGB": (3,)}[mode]
        Image.fromarray(np.full((*size, *channels), 40 * i, np.uint8), mode=mode).save(path / f"{i}.png")
    return path


BAD_INPUTS = {
    "missing data dir": (
        lambda tmp: dict(dataset_name=None, train_data_dir=str(tmp / "missing")),
        FileNotFoundError,
        "does not exist",
    ),
    "empty folder": (
        lambda tmp: dict(dataset_name=None, train_data_dir=str((tmp / "empty").mkdir() or tmp / "empty")),
        TrainingInputError,
        "no image files",
    ),
    "mixed sizes": (
        lambda tmp: dict(dataset_name=None, train_data_dir=str(_folder(tmp / "s", ((8, 8), (4, 4)), "LL"))),
        TrainingInputError,
        "different sizes",
    ),
    "mixed modes": (
        lambda tmp: dict(dataset_name=None, train_data_dir=str(_folder(tmp / "m", ((8, 8),) * 2, ("L", "RGB")))),
        TrainingInputError,
        "different modes",
    ),
    "resolution not divisible": (lambda tmp: dict(resolution=10), TrainingInputError, "not divisible by 4"),
    "native size not divisible": (
        lambda tmp: dict(dataset_name=None, train_data_dir=str(_folder(tmp / "n", ((6, 6),) * 2, "LL"))),
        TrainingInputError,
        "not divisible by 4",
    ),
    "class-conditional without labels": (
        lambda tmp: dict(
            dataset_name=None,
            class_conditional=True,
            train_data_dir=str(_folder(tmp / "c", ((8, 8),) * 2, "LL")),
        ),
        TrainingInputError,
        "needs class labels",
    ),
    "resume path that is not a checkpoint": (
        lambda tmp: dict(resume_from_checkpoint=str((tmp / "x").mkdir() or tmp / "x")),
        TrainingInputError,
        "not a checkpoint",
    ),
    "resume path that does not exist": (
        lambda tmp: dict(resume_from_checkpoint=str(tmp / "nothing")),
        TrainingInputError,
        "not a checkpoint",
    ),
    "preset for another SDE": (
        lambda tmp: dict(model_preset="ncsnpp-tiny", sde="vp"),
        TrainingInputError,
        "is for the ve",
    ),
    "discrete loss of another SDE": (lambda tmp: dict(loss="smld"), TrainingInputError, "needs --sde ve"),
    "push without a model id": (
        lambda tmp: dict(push_to_hub=True),
        TrainingInputError,
        "needs --hub_model_id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_anything_is_written(case, tmp_path, finished_run):
    cfg, _ = finished_run
    out = Path(cfg.output_dir)
    before = snapshot(out)
    make, error, message = BAD_INPUTS[case]
    overrides = make(tmp_path)
    with pytest.raises(error, match=message):
        train(tiny(out, resume_from_checkpoint=overrides.pop("resume_from_checkpoint", "latest"), **overrides))
    assert snapshot(out) == before


def test_an_unwritable_output_dir_fails_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(TrainingInputError, match="not writable"):
        train(tiny(blocker / "out"))
    assert blocker.read_text() == "a file, not a folder"


def test_a_push_without_a_token_fails_before_training(tmp_path, monkeypatch, finished_run, local_hub_server):
    cfg, _ = finished_run
    out = Path(cfg.output_dir)
    before = snapshot(out)
    requests = len(local_hub_server.write_requests())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(TrainingInputError, match="access token"):
        train(tiny(out, resume_from_checkpoint="latest", push_to_hub=True, hub_model_id="user/never"))
    assert snapshot(out) == before and len(local_hub_server.write_requests()) == requests


def test_existing_checkpoints_need_resume_or_overwrite(finished_run, tmp_path):
    cfg, _ = finished_run
    out = Path(cfg.output_dir)
    before = snapshot(out)
    with pytest.raises(TrainingInputError, match="already holds checkpoints"):
        train(tiny(out))
    with pytest.raises(TrainingInputError, match="other settings.*train_batch_size"):
        train(tiny(out, resume_from_checkpoint="latest", train_batch_size=8))
    assert snapshot(out) == before


# ---- command line ------------------------------------------------------------------------------------------
def test_cli_reports_input_errors_and_reads_config_files(tmp_path, capsys):
    assert main(["--dataset_name", "digits", "--output_dir", str(tmp_path / "o"), "--resolution", "6"]) == 2
    assert "not divisible" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"_comment": "x", "dataset_name": "mnist", "max_train_steps": 7, "sde": "subvp"}))
    cfg = config_from_args(argv=["--config", str(config), "--max_train_steps", "9"])
    assert (cfg.dataset_name, cfg.max_train_steps, cfg.sde) == ("mnist", 9, "subvp")
    config.write_text(json.dumps({"max_steps": 7}))
    with pytest.raises(TrainingInputError, match="unknown options"):
        config_from_args(argv=["--config", str(config)])
    from sde_diffusers.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--dataset_name", "digits", "--sde", "ve", "--model_preset", "ncsnpp-tiny"]
    )
    assert config_from_args(args).sde == "ve"


def test_shipped_configs_are_valid():
    files = sorted((REPO / "training" / "configs").glob("*.json"))
    assert {f.stem for f in files} >= {"mnist_ve", "mnist_vp", "mnist_subvp"}
    sizes = {}
    for path in files:
        cfg = config_from_args(argv=["--config", str(path)])
        assert cfg.dataset_name == "mnist"
        from sde_diffusers.models import get_preset

        preset = get_preset(cfg.model_preset)
        sizes.setdefault(path.stem.endswith("_cpu"), []).append({**preset.config, **cfg.model_config}["base_channels"])
    assert all(len(set(v)) == 1 for v in sizes.values()), "VE, VP and sub-VP configs should be the same size"


# ---- checkpoint helpers ------------------------------------------------------------------------------------
def test_checkpoint_helpers(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    assert ckpt.resolve_checkpoint("latest", root) is None
    for step in (1, 2, 3):
        staging = ckpt.staging_dir(root, step)
        staging.mkdir()
        with pytest.raises(ValueError, match="has no trainer_state.json"):
            ckpt.commit_checkpoint(staging, root, step)
        (staging / "w").write_text(str(step))
        (staging / ckpt.STATE_FILE).write_text(json.dumps({"format": ckpt.CHECKPOINT_FORMAT, "files": ["w"]}))
        ckpt.commit_checkpoint(staging, root, step)
    assert (root / "latest").read_text().strip() == "checkpoint-00000003"
    (root / "latest").write_text("checkpoint-00000002\n")  # latest need not be the newest
    assert ckpt.prune_checkpoints(root, 1) == [root / "checkpoint-00000001", root / "checkpoint-00000003"]
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-00000002"]
    (root / "latest").unlink()
    assert ckpt.resolve_checkpoint("latest", root).name == "checkpoint-00000002"
    with pytest.raises(ValueError, match="incomplete"):
        (root / "checkpoint-00000002" / "w").unlink()
        ckpt.read_trainer_state(root / "checkpoint-00000002")
    ckpt.clean_staging(root)
    assert not list(root.glob(".tmp-*"))


# ---- the demo and the other launchers ----------------------------------------------------------------------
def test_the_demo_trains_samples_and_reports(tmp_path, capsys):
    from sde_diffusers import demo

    demo.main(
        [
            "--steps",
            "12",
            "--sample-steps",
            "4",
            "--fid-samples",
            "80",
            "--bpd-images",
            "8",
            "--num-samples",
            "50",
            "--exact-steps",
            "10",
            "--output-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    for text in (
        "samplers against an exact score",
        "trained 12 steps",
        "bits/dim",
        "full-covariance Gaussian",
        "domain FID",
        str(tmp_path / "digits_samples.png"),
    ):
        assert text in out, text
    with Image.open(tmp_path / "digits_samples.png") as grid:
        assert grid.size[0] > 8 * 64  # 8x8 tiles of 8x8 digits enlarged to 64 px, framed
    # The Gaussian baseline is a proper density: its held-out bits/dim is finite and below 8-bit uniform.
    from sde_diffusers.data import load_image_data

    bpd = demo.gaussian_baseline_bits_per_dim(
        load_image_data("digits").images, load_image_data("digits", split="test").images
    )
    assert 0 < bpd < 8


@pytest.mark.slow
def test_accelerate_launch_runs_the_script(tmp_path):
    cfg = tiny(tmp_path / "acc", save_final_checkpoint=True)
    run = run_bounded(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            *cli_args(cfg),
        ],
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert read_trainer_state(tmp_path / "acc" / "checkpoints" / "checkpoint-00000004")["world_size"] == 1


def test_the_cli_subcommand_trains(tmp_path):
    from sde_diffusers.cli import main as cli_main

    cfg = tiny(tmp_path / "cli")
    assert cli_main(["train", *cli_args(cfg)]) == 0
    assert (tmp_path / "cli" / "pipeline" / "model_index.json").is_file()
