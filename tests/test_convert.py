"""Official score_sde_pytorch checkpoints: conversion against the official network's outputs and scores.

The fixtures in tests/data/score_sde_checkpoints were written by the official code (random weights, shrunk sizes);
`reference.npz` holds the official EMA network's raw output (`model_output`) and `get_score_fn(...)` (`score`) on
fixed inputs. Layout checks for the full-size released configs are in test_convert_layouts.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sde_diffusers import ScoreSdePipeline, convert_score_sde_checkpoint
from sde_diffusers.cli import main as cli_main
from sde_diffusers.convert import (
    SCORE_SDE_CONFIGS,
    UNSUPPORTED_CONFIGS,
    load_score_sde_checkpoint,
    official_parameter_names,
    plan_score_sde_conversion,
)
from sde_diffusers.parameterization import make_score_fn

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "score_sde_checkpoints"
FIXTURES = sorted(p.name for p in DATA.iterdir() if p.is_dir())


def _fixture(name):
    folder = DATA / name
    ref = {k: torch.from_numpy(np.asarray(v)) for k, v in np.load(folder / "reference.npz").items()}
    return folder / "checkpoint_1.pth", folder / "config.json", ref


@pytest.fixture(scope="module")
def converted():
    """Every fixture converted once (EMA weights)."""
    return {name: convert_score_sde_checkpoint(*_fixture(name)[:2]) for name in FIXTURES}


def _ours(ref):
    """Our input and the factor between our score and the official one: x -> 2 x - 1 for [0, 1] models."""
    if bool(ref["data_centered"]):
        return ref["x"], 1.0
    return 2 * ref["x"] - 1, 0.5


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_fixtures_cover_every_kind_of_network():
    assert len(FIXTURES) == 6
    kinds = {(plan_score_sde_conversion(DATA / n / "config.json").network, n.split("_")[0]) for n in FIXTURES}
    assert kinds == {("ncsnpp", "ve"), ("ncsnpp", "vp"), ("ncsnpp", "subvp"), ("ddpm", "subvp")}


@pytest.mark.parametrize("name", FIXTURES)
def test_network_output_equals_the_official_one(name, converted):
    _, _, ref = _fixture(name)
    pipe = converted[name]
    x, factor = _ours(ref)
    labels = ref["labels"]
    # Our network's timestep: sigma in our (doubled) units for continuous VE, the official label otherwise.
    timestep = labels / factor if pipe.unet.time_input == "sigma" else labels.double()
    with torch.no_grad():
        out = pipe.unet(x, timestep.float()).sample
    # A score network's raw output is the score: ours is the official one over 2 for [0, 1] models.
    expected = ref["model_output"] * (factor if pipe.unet.prediction_type == "score" else 1.0)
    assert _rel(out, expected) < 1e-5


@pytest.mark.parametrize("name", FIXTURES)
def test_score_equals_the_official_get_score_fn(name, converted):
    _, _, ref = _fixture(name)
    pipe = converted[name]
    x, factor = _ours(ref)
    unet = pipe.unet
    score_fn = make_score_fn(unet, pipe.scheduler.sde, unet.prediction_type, unet.time_input)
    with torch.no_grad():
        score = score_fn(x, ref["t"])
    # score_ours(2 x - 1, t) = score_official(x, t) / 2 for the [0, 1] models.
    assert _rel(score, factor * ref["score"]) < 1e-4


def test_the_time_inputs_are_the_official_score_functions(converted):
    expected = {
        "ve_cifar10_ncsnpp": "reversed_index",
        "ve_cifar10_ncsnpp_continuous": "sigma",
        "vp_cifar10_ddpmpp_continuous": "index",
        "vp_cifar10_ncsnpp_continuous": "index",
        "subvp_cifar10_ddpmpp_deep_continuous": "index",
        "subvp_cifar10_ddpm_continuous": "index",
    }
    assert {name: pipe.unet.time_input for name, pipe in converted.items()} == expected
    assert plan_score_sde_conversion("vp/cifar10_ddpmpp").model_config["time_input"] == "discrete_index"


def test_ve_models_on_unit_range_data_get_doubled_noise_levels(converted):
    pipe = converted["ve_cifar10_ncsnpp_continuous"]
    config = json.loads((DATA / "ve_cifar10_ncsnpp_continuous" / "config.json").read_text())
    sde = pipe.scheduler.sde
    assert sde.sigma_min == pytest.approx(2 * config["model"]["sigma_min"])
    assert sde.sigma_max == pytest.approx(2 * config["model"]["sigma_max"])
    assert pipe.unet.config.sigma_embedding_scale == 0.5
    # A centred VP model keeps its SDE.
    vp = converted["vp_cifar10_ddpmpp_continuous"].scheduler.sde
    assert (vp.beta_min, vp.beta_max, vp.N) == pytest.approx((0.1, 20.0, 1000))


@pytest.mark.parametrize(
    "name,scheduler,options",
    [
        (
            "ve_cifar10_ncsnpp_continuous",
            "VESDEScheduler",
            dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_corrector_steps=1),
        ),
        ("vp_cifar10_ddpmpp_continuous", "VPSDEScheduler", dict(predictor="euler_maruyama", corrector="none")),
        ("subvp_cifar10_ddpm_continuous", "SubVPSDEScheduler", dict(predictor="euler_maruyama", corrector="none")),
    ],
)
def test_scheduler_carries_the_configs_sampler(name, scheduler, options, converted):
    pipe = converted[name]
    assert type(pipe.scheduler).__name__ == scheduler
    for key, value in options.items():
        assert pipe.scheduler.config[key] == value, key
    assert pipe.scheduler.config.sampling_eps == (1e-5 if name.startswith("ve") else 1e-3)
    assert pipe.scheduler.config.num_train_timesteps == 1000
    ancestral = plan_score_sde_conversion("vp/ddpm/cifar10")
    assert ancestral.scheduler_config["predictor"] == "ancestral"


def test_the_parameter_order_is_the_checkpoints_own(converted):
    """The EMA's shadow_params follow the official registration order; the checkpoint's `model` dict has it too."""
    for name in FIXTURES:
        checkpoint = load_score_sde_checkpoint(DATA / name / "checkpoint_1.pth")
        plan = plan_score_sde_conversion(DATA / name / "config.json")
        official = [k.removeprefix("module.") for k in checkpoint["model"]]
        official = [k for k in official if k != "sigmas"]
        assert list(official_parameter_names(converted[name].unet, plan.fourier)) == official, name


@pytest.mark.parametrize("name", ["ve_cifar10_ncsnpp_continuous", "subvp_cifar10_ddpm_continuous"])
def test_raw_weights_only_when_asked(name, converted):
    checkpoint_path, config, ref = _fixture(name)
    raw = convert_score_sde_checkpoint(checkpoint_path, config, use_ema=False)
    checkpoint = load_score_sde_checkpoint(checkpoint_path)
    names = official_parameter_names(raw.unet, plan_score_sde_conversion(config).fourier)
    ema_state, raw_state = converted[name].unet.state_dict(), raw.unet.state_dict()
    shadow = iter(checkpoint["ema"]["shadow_params"])
    for official, ours in names.items():
        source = checkpoint["model"][f"module.{official}"]
        ema = source if official.endswith(".W") and "NIN" not in official else next(shadow)
        if "NIN_" in official and official.endswith(".W"):
            source, ema = source.t(), ema.t()
        assert torch.equal(raw_state[ours].reshape(source.shape), source), ours
        assert torch.equal(ema_state[ours].reshape(ema.shape), ema), ours
    # The reference outputs are the EMA network's: the raw weights give something else.
    x, factor = _ours(ref)
    timestep = ref["labels"] / factor if raw.unet.time_input == "sigma" else ref["labels"].double()
    with torch.no_grad():
        out = raw.unet(x, timestep.float()).sample
    expected = ref["model_output"] * (factor if raw.unet.prediction_type == "score" else 1.0)
    assert _rel(out, expected) > 1e-2


def test_float64_runs_in_float64_end_to_end(converted):
    for name in ("ve_cifar10_ncsnpp_continuous", "vp_cifar10_ddpmpp_continuous", "ve_cifar10_ncsnpp"):
        _, _, ref = _fixture(name)
        pipe = converted[name]
        unet64 = type(pipe.unet).from_config(pipe.unet.config).double().eval()
        unet64.load_state_dict(pipe.unet.state_dict())
        dtypes = set()
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, seen=dtypes: seen.add(out.dtype))
            for m in unet64.modules()
            if m is not unet64 and not list(m.children())
        ]
        x, factor = _ours(ref)
        sde = pipe.scheduler.sde
        with torch.no_grad():
            score64 = make_score_fn(unet64, sde, unet64.prediction_type, unet64.time_input)(
                x.double(), ref["t"].double()
            )
        for hook in hooks:
            hook.remove()
        assert dtypes == {torch.float64}, (name, dtypes)
        assert score64.dtype == torch.float64
        # float64 agrees with the official float32 computation to float32 accuracy.
        assert _rel(score64, factor * ref["score"]) < 1e-4


def test_time_embeddings_follow_the_input_dtype(converted):
    unet = converted["ve_cifar10_ncsnpp_continuous"].unet
    sigma = torch.tensor([0.0123456789012345, 77.7], dtype=torch.float64)
    emb = unet.fourier_proj(torch.log(sigma))
    assert emb.dtype == torch.float64
    w = unet.fourier_proj.W.double()
    torch.testing.assert_close(emb[:, : w.numel()], torch.sin(torch.log(sigma)[:, None] * w * 2 * np.pi))


# ---- saving, loading, the CLI -----------------------------------------------------------------------------
def test_cli_converts_to_a_pipeline_folder_that_loads(tmp_path):
    checkpoint, config, ref = _fixture("ve_cifar10_ncsnpp_continuous")
    out = tmp_path / "converted"
    assert cli_main(["convert", str(checkpoint), "--config", str(config), "--output-dir", str(out)]) == 0
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "checkpoint_1.pth" in card and "score_sde_pytorch" in card and "exponential moving average" in card
    pipe = ScoreSdePipeline.from_pretrained(out)
    assert pipe.unet.time_input == "sigma" and type(pipe.scheduler).__name__ == "VESDEScheduler"
    assert pipe.scheduler.sde.sigma_max == 100.0  # [0, 1] data, doubled on [-1, 1]
    x, factor = _ours(ref)
    score_fn = make_score_fn(pipe.unet, pipe.scheduler.sde, pipe.unet.prediction_type, pipe.unet.time_input)
    with torch.no_grad():
        assert _rel(score_fn(x, ref["t"]), factor * ref["score"]) < 1e-4

    raw = tmp_path / "raw"
    assert (
        cli_main(["convert", str(checkpoint), "--config", str(config), "--output-dir", str(raw), "--raw-weights"]) == 0
    )
    assert "raw training weights" in (raw / "README.md").read_text()
    raw_pipe = ScoreSdePipeline.from_pretrained(raw)
    differ = [k for k, v in raw_pipe.unet.state_dict().items() if not torch.equal(v, pipe.unet.state_dict()[k])]
    assert differ


def test_cli_by_config_name_and_console_script(tmp_path):
    """A released config name works as well as the JSON (the fixture is shrunk, so only its own JSON matches)."""
    checkpoint, _, _ = _fixture("vp_cifar10_ddpmpp_continuous")
    exe = shutil.which("sde-diffusers", path=os.path.dirname(sys.executable))
    assert exe is not None
    result = subprocess.run(
        [
            exe,
            "convert",
            str(checkpoint),
            "--config",
            "vp/cifar10_ddpmpp_continuous",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: ") and "does not match config 'vp/cifar10_ddpmpp_continuous'" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_push_to_hub(tmp_path, local_hub, local_hub_server):
    checkpoint, config, _ = _fixture("subvp_cifar10_ddpm_continuous")
    out = tmp_path / "pushed"
    repo = "user/converted-subvp-ddpm"
    assert (
        cli_main(
            ["convert", str(checkpoint), "--config", str(config), "--output-dir", str(out), "--push-to-hub", repo]
        )
        == 0
    )
    assert local_hub_server.repo_exists(repo)
    loaded = ScoreSdePipeline.from_pretrained(repo)
    local = ScoreSdePipeline.from_pretrained(out)
    for key, value in local.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value)
    assert f'"{repo}"' in (out / "README.md").read_text()


def test_push_without_a_token_fails_before_writing(tmp_path, monkeypatch, local_hub):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    checkpoint, config, _ = _fixture("subvp_cifar10_ddpm_continuous")
    out = tmp_path / "never"
    code = cli_main(
        ["convert", str(checkpoint), "--config", str(config), "--output-dir", str(out), "--push-to-hub", "u/r"]
    )
    assert code == 2 and not out.exists()


# ---- bad input: a clear error before anything is written ---------------------------------------------------
def _run_cli(tmp_path, checkpoint, config, capsys):
    out = tmp_path / "out"
    code = cli_main(["convert", str(checkpoint), "--config", str(config), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    return err


def test_wrong_config_for_the_checkpoint(tmp_path, capsys):
    checkpoint, _, _ = _fixture("ve_cifar10_ncsnpp_continuous")
    err = _run_cli(tmp_path, checkpoint, DATA / "vp_cifar10_ddpmpp_continuous" / "config.json", capsys)
    assert "does not match config" in err and "missing" in err


def test_a_shape_mismatch_is_named(tmp_path, capsys):
    checkpoint, config, _ = _fixture("vp_cifar10_ddpmpp_continuous")
    cfg = json.loads(Path(config).read_text())
    cfg["model"]["nf"] = 16
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    err = _run_cli(tmp_path, checkpoint, tmp_path / "c.json", capsys)
    assert "shape mismatch for parameter all_modules.0.weight" in err


def test_noise_levels_tell_configs_with_the_same_network_apart(tmp_path, capsys):
    checkpoint, config, _ = _fixture("ve_cifar10_ncsnpp_continuous")
    cfg = json.loads(Path(config).read_text())
    cfg["model"]["sigma_max"] = 90.0
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    err = _run_cli(tmp_path, checkpoint, tmp_path / "c.json", capsys)
    assert "noise levels (1000 levels from 50 to 0.01) differ" in err


def test_missing_keys_and_a_missing_ema(tmp_path):
    checkpoint_path, config, _ = _fixture("vp_cifar10_ncsnpp_continuous")
    checkpoint = load_score_sde_checkpoint(checkpoint_path)
    broken = dict(checkpoint, model={k: v for k, v in checkpoint["model"].items() if "all_modules.5." not in k})
    with pytest.raises(ValueError, match="missing all_modules.5.Conv2d_0.bias, all_modules.5.Conv2d_0.weight\\)"):
        convert_score_sde_checkpoint(broken, config)
    short = dict(checkpoint, ema=dict(checkpoint["ema"], shadow_params=checkpoint["ema"]["shadow_params"][:-1]))
    with pytest.raises(ValueError, match="EMA holds 215 tensors but config .* has 216"):
        convert_score_sde_checkpoint(short, config)
    with pytest.raises(ValueError, match="no EMA weights.*use_ema=False"):
        convert_score_sde_checkpoint({"model": checkpoint["model"]}, config)
    convert_score_sde_checkpoint({"model": checkpoint["model"]}, config, use_ema=False)  # raw weights alone are fine
    with pytest.raises(ValueError, match="not a score_sde checkpoint"):
        convert_score_sde_checkpoint({"state_dict": {"a": torch.zeros(1)}}, config)


def test_cli_missing_keys_and_no_ema_write_nothing(tmp_path, capsys):
    """The CLI never falls back to the raw weights: without an EMA it stops unless --raw-weights is given."""
    checkpoint_path, config, _ = _fixture("vp_cifar10_ncsnpp_continuous")
    checkpoint = load_score_sde_checkpoint(checkpoint_path)
    no_ema = tmp_path / "no_ema.pth"
    torch.save({"model": checkpoint["model"], "step": checkpoint.get("step", 0)}, no_ema)
    assert "no EMA weights" in _run_cli(tmp_path, no_ema, config, capsys)
    out = tmp_path / "raw"
    assert cli_main(["convert", str(no_ema), "--config", str(config), "--output-dir", str(out), "--raw-weights"]) == 0
    assert "raw training weights" in (out / "README.md").read_text()
    broken = tmp_path / "broken.pth"
    model = {k: v for k, v in checkpoint["model"].items() if "all_modules.5." not in k}
    torch.save(dict(checkpoint, model=model), broken)
    assert "missing all_modules.5.Conv2d_0.bias" in _run_cli(tmp_path, broken, config, capsys)


class _NeedsCode:
    """A pickled object that only code can rebuild."""

    def __init__(self):
        self.weights = torch.zeros(2)


def test_a_pickle_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint_1.pth"
    torch.save({"model": {"module.all_modules.0.weight": torch.zeros(1)}, "extra": _NeedsCode()}, path)
    with pytest.raises(ValueError, match="need code to unpickle \\(test_convert._NeedsCode\\)"):
        load_score_sde_checkpoint(path)
    err = _run_cli(tmp_path, path, DATA / "vp_cifar10_ncsnpp_continuous" / "config.json", capsys)
    assert "never runs code" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "not a readable PyTorch checkpoint" in _run_cli(
        tmp_path, tmp_path / "junk.pth", "vp/cifar10_ddpmpp", capsys
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_score_sde_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize(
    "config,match",
    [
        ("ve/ncsnv2/cifar10", "NCSNv2"),
        ("ve/ncsn/celeba_124", "NCSN,"),
        ("vp/ddpm/cifar10_unconditional", "model.conditional = False"),
        ("ve/cifar10_ncsnpp_typo", "unknown score_sde config 've/cifar10_ncsnpp_typo'"),
    ],
)
def test_configs_that_cannot_be_represented_are_refused(config, match, tmp_path, capsys):
    checkpoint, _, _ = _fixture("ve_cifar10_ncsnpp")
    with pytest.raises(ValueError, match=match):
        plan_score_sde_conversion(config)
    assert match.split(" ")[0].strip(",") in _run_cli(tmp_path, checkpoint, config, capsys)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c["model"].update(name="ncsnv2"), "model.name = 'ncsnv2'"),
        (lambda c: c["model"].update(nonlinearity="elu"), "model.nonlinearity = 'elu'"),
        (lambda c: c["model"].update(scale_by_sigma=False), "scale_by_sigma = False"),
        (lambda c: c["training"].update(continuous=False), "Fourier embedding with training.continuous = False"),
        (lambda c: c["training"].update(sde="vpsde"), "VP model with model.scale_by_sigma = True"),
        (lambda c: c["sampling"].update(predictor="leapfrog"), "sampling.predictor = 'leapfrog'"),
        (lambda c: c.pop("training"), "lacks the section\\(s\\) \\['training'\\]"),
        (lambda c: c["model"].pop("nf"), "has no model.nf"),
        (lambda c: c["model"].update(nf="8"), "model.nf must be a int"),
    ],
)
def test_json_configs_are_checked(edit, match):
    cfg = json.loads((DATA / "ve_cifar10_ncsnpp_continuous" / "config.json").read_text())
    edit(cfg)
    with pytest.raises(ValueError, match=match):
        plan_score_sde_conversion(cfg)


def test_vp_models_on_unit_range_data_are_refused():
    cfg = json.loads((DATA / "vp_cifar10_ddpmpp_continuous" / "config.json").read_text())
    cfg["data"]["centered"] = False
    with pytest.raises(ValueError, match="centring cannot be folded into a VP-type SDE"):
        plan_score_sde_conversion(cfg)
    cfg = json.loads((DATA / "vp_cifar10_ddpmpp_continuous" / "config.json").read_text())
    cfg["model"]["num_scales"] = 2000
    with pytest.raises(ValueError, match="t \\* 999"):
        plan_score_sde_conversion(cfg)


def test_the_table_and_its_refusals():
    assert len(SCORE_SDE_CONFIGS) == 27
    for name in ("ve/cifar10_ncsnpp_deep_continuous", "vp/ddpm/cifar10", "subvp/cifar10_ddpmpp_deep_continuous"):
        assert name in SCORE_SDE_CONFIGS
    assert plan_score_sde_conversion("vp/cifar10_ddpm").name == "vp/ddpm/cifar10"
    assert plan_score_sde_conversion("configs/ve/ffhq_1024_ncsnpp_continuous.py").name == "ve/ffhq_ncsnpp_continuous"
    assert all(isinstance(reason, str) and reason for reason in UNSUPPORTED_CONFIGS.values())


def test_converted_pipelines_sample_with_the_networks_own_time_input(converted):
    """The scheduler hands each network its own timestep: noise-level indices for discrete SMLD, sigma otherwise."""
    for name in ("ve_cifar10_ncsnpp", "ve_cifar10_ncsnpp_continuous", "subvp_cifar10_ddpm_continuous"):
        pipe = converted[name]
        seen = []
        handle = pipe.unet.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[1].reshape(-1)))
        try:
            out = pipe(
                batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt"
            )
        finally:
            handle.remove()
        assert out.images.shape == (2, 3, 16, 16) and torch.isfinite(out.images).all()
        steps = torch.cat(seen)
        if pipe.unet.time_input == "reversed_index":
            assert torch.equal(steps, steps.round()) and steps.min() >= 0 and steps.max() <= 999
            assert steps[0] == 0  # the first level is sigma_max
        elif pipe.unet.time_input == "sigma":
            assert steps.max() == pytest.approx(pipe.scheduler.sde.sigma_max)
