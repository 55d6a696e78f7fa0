"""`sde-diffusers evaluate` and the sampler registry behind it, on tiny untrained models and the digits data.

The models are untrained (their samples are noise), so the numbers are not checked for quality; what is checked:
the report's keys and their consistency (NFE accounting against the model's own call count, metric ranges), exact
reproducibility given the seed, that the seed matters, and clear errors before any sampling for bad input.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import sde_diffusers
from sde_diffusers.cli import main
from sde_diffusers.evaluation import sampling as sampling_module
from sde_diffusers.evaluation.sampling import SAMPLERS, available_samplers, draw_samples, plan_sampling
from sde_diffusers.models import from_preset
from sde_diffusers.pipelines import ScoreSdePipeline
from sde_diffusers.schedulers import VESDEScheduler, VPSDEScheduler

# digits: 8x8 images, a 64-dimensional feature space, 360 held-out images; FID needs more than 64 samples.
N = 70
FAST = ["--bpd-rtol", "1e-2", "--bpd-atol", "1e-2", "--kid-subsets", "5", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two intra-op threads on a shared, oversubscribed 2-core machine are 10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _exported_pipeline(monkeypatch):
    # The saved shim imports `sde_diffusers.ScoreSdePipeline`; make sure it resolves whatever the export state.
    monkeypatch.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)


def _tiny(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return from_preset(preset, sample_size=8, init_scale=1.0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)
        ve = root / "ve"
        ScoreSdePipeline(unet=_tiny("ncsnpp-tiny"), scheduler=VESDEScheduler(sigma_max=5.0)).save_pretrained(ve)
        vp = root / "vp"
        ScoreSdePipeline(unet=_tiny("ddpmpp-tiny"), scheduler=VPSDEScheduler()).save_pretrained(vp)
    return {"ve": str(ve), "vp": str(vp)}


def _evaluate(model_dir, out, *extra) -> dict:
    code = main(["evaluate", model_dir, "--data", "digits", "--out", str(out), *FAST, *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_report_keys_and_consistency(model_dirs, tmp_path, capsys):
    report = _evaluate(
        model_dirs["ve"],
        tmp_path / "r.json",
        "--sampler",
        "pc",
        "--nfe",
        "6",
        "--num-samples",
        str(N),
        "--batch-size",
        "35",
        "--bpd-images",
        "2",
    )
    assert {
        "model_dir",
        "sde",
        "sampler",
        "steps",
        "nfe",
        "nfe_per_sample",
        "num_samples",
        "metrics",
        "sampler_settings",
        "reference",
        "feature_extractor",
        "bits_per_dim",
        "timing",
        "environment",
    } <= set(report)
    assert report["sde"] == "ve" and report["sampler"] == "pc"
    # PC with one corrector step: two calls per step, 6 NFE = 3 steps, for each of the two batches.
    assert report["steps"] == 3 and report["nfe"] == 6 and report["nfe_per_sample"] == 6
    m = report["metrics"]
    assert set(m) == {"fid", "kid", "kid_std", "precision", "recall", "bits_per_dim", "bits_per_dim_stderr"}
    assert m["fid"] > 0 and math.isfinite(m["kid"]) and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert math.isfinite(m["bits_per_dim"]) and report["bits_per_dim"]["num_images"] == 2
    # digits at the model's native 8x8: 360 held-out images on 17 levels, the digits classifier's features
    assert report["reference"]["num_images"] == 360 and report["bits_per_dim"]["num_levels"] == 17
    assert report["feature_extractor"] == {**report["feature_extractor"], "name": "digits", "feature_dim": 64}
    assert report["sampler_settings"]["predictor"] == "reverse_diffusion"
    assert report["sampler_settings"]["corrector"] == "langevin"
    table = capsys.readouterr().out
    assert "FID" in table and "bits/dim" in table and "NFE per image" in table


def test_seed_determinism(model_dirs, tmp_path):
    args = ["--sampler", "reverse_diffusion", "--nfe", "3", "--num-samples", str(N), "--bpd-images", "0"]
    a = _evaluate(model_dirs["vp"], tmp_path / "a.json", *args, "--seed", "3")
    b = _evaluate(model_dirs["vp"], tmp_path / "b.json", *args, "--seed", "3")
    c = _evaluate(model_dirs["vp"], tmp_path / "c.json", *args, "--seed", "4")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["fid"] != c["metrics"]["fid"]
    assert a["bits_per_dim"] is None and a["metrics"]["bits_per_dim"] is None


def test_draw_samples_reproducible_and_common_prior(model_dirs):
    pipe = ScoreSdePipeline.from_pretrained(model_dirs["vp"])
    one = draw_samples(pipe, "ancestral", 5, nfe=3, batch_size=2, seed=7)
    two = draw_samples(pipe, "ancestral", 5, nfe=3, batch_size=2, seed=7)
    assert one.images.shape == (5, 1, 8, 8) and torch.equal(one.images, two.images)
    assert one.images.min() >= 0 and one.images.max() <= 1
    # Every sampler draws the same prior for the same seed: two ODE solvers started there end close together,
    # far closer than one solver started from another seed's prior.
    heun = draw_samples(pipe, "ode_heun", 4, nfe=39, seed=1).images
    euler = draw_samples(pipe, "ode_euler", 4, nfe=40, seed=1).images
    other = draw_samples(pipe, "ode_euler", 4, nfe=40, seed=2).images
    assert (heun - euler).abs().mean() < 0.2 * (other - euler).abs().mean()


@pytest.mark.parametrize("sde", ["ve", "vp"])
def test_every_sampler_counts_its_model_calls(model_dirs, sde):
    pipe = ScoreSdePipeline.from_pretrained(model_dirs[sde])
    names = available_samplers(pipe)
    expected = set(SAMPLERS) if sde == "vp" else set(SAMPLERS) - {"ddim", "dpm_solver"}
    assert set(names) == expected
    for name in names:
        info = SAMPLERS[name]
        budget = {"tolerance": 0.3} if info.adaptive else {"nfe": 5}
        out = draw_samples(pipe, name, 3, batch_size=2, seed=0, **budget)
        assert out.images.shape == (3, 1, 8, 8) and torch.isfinite(out.images).all(), name
        # the model's forward hook counts every batched call: it must equal what the sampler reports
        assert out.model_calls == sum(out.nfe_per_batch) and len(out.nfe_per_batch) == 2, name
        if not info.adaptive:
            plan = plan_sampling(pipe, name, nfe=5)
            assert out.nfe == plan.nfe <= 5 and out.steps == plan.steps, name
        else:
            assert out.nfe_per_sample <= out.nfe


def test_plain_diffusers_pipeline_folder(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    report = _evaluate(
        str(tmp_path / "ddpm"),
        tmp_path / "r.json",
        "--sampler",
        "dpm_solver",
        "--nfe",
        "4",
        "--num-samples",
        str(N),
        "--bpd-images",
        "0",
    )
    assert report["sde"] == "vp" and report["nfe"] == 4 and math.isfinite(report["metrics"]["fid"])


def test_image_folder_reference(model_dirs, tmp_path, capsys):
    from PIL import Image

    from sde_diffusers.evaluation import load_builtin

    images, _ = load_builtin("digits", split="test")
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, x in enumerate(images[:100]):
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    args = [
        "--data",
        str(folder),
        "--sampler",
        "ode_euler",
        "--nfe",
        "2",
        "--num-samples",
        str(N),
        "--bpd-images",
        "0",
        *FAST,
    ]
    assert main(["evaluate", model_dirs["ve"], *args]) == 2
    assert "--feature-extractor" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["evaluate", model_dirs["ve"], *args, "--feature-extractor", "digits", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["reference"]["num_images"] == 100


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors, before any sampling
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started although the input was invalid")

    monkeypatch.setattr(sampling_module, "draw_samples", refuse)


def _args(model_dir, *extra):
    return ["evaluate", str(model_dir), "--data", "digits", "--num-samples", str(N), *FAST, *extra]


def _refused(argv, pattern, capsys):
    """The command line ends with status 2 and one line, ``error: ...``, matching ``pattern``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err


def test_missing_model_dir(tmp_path, no_sampling, capsys):
    _refused(_args(tmp_path / "nope", "--sampler", "pc"), "is not a folder", capsys)
    (tmp_path / "empty").mkdir()
    _refused(_args(tmp_path / "empty", "--sampler", "pc"), "model_index.json", capsys)


def test_unknown_sampler(model_dirs, capsys, no_sampling):
    with pytest.raises(SystemExit) as info:
        main(_args(model_dirs["ve"], "--sampler", "heun2000"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'heun2000'" in err and "ode_heun" in err


def test_sampler_not_for_this_sde(model_dirs, no_sampling, capsys):
    _refused(
        _args(model_dirs["ve"], "--sampler", "ddim"), "'ddim' applies to vp models, but this model's SDE is ve", capsys
    )


def test_wrong_budget_kind(model_dirs, no_sampling, capsys):
    _refused(
        _args(model_dirs["ve"], "--sampler", "ode_adaptive", "--nfe", "10"),
        "adaptive: set its cost with tolerance",
        capsys,
    )
    _refused(
        _args(model_dirs["ve"], "--sampler", "pc", "--tolerance", "0.01"),
        "fixed step count: set its cost with nfe",
        capsys,
    )
    _refused(
        _args(model_dirs["ve"], "--sampler", "pc", "--nfe", "1"),
        r"nfe for sampler 'pc' must be an integer >= 2, got 1",
        capsys,
    )


def test_too_few_samples_for_fid(model_dirs, no_sampling, capsys):
    # the Fréchet distance's own refusal (64-dimensional digits features need more than 64 samples)
    argv = ["evaluate", model_dirs["ve"], "--data", "digits", "--sampler", "pc", "--num-samples", "40", *FAST]
    _refused(argv, "too small for a FID.*covariance needs more samples than feature dim", capsys)


def test_bad_numbers(model_dirs, no_sampling, capsys):
    _refused(
        _args(model_dirs["ve"], "--sampler", "pc", "--batch-size", "0"),
        "`--batch-size` must be an integer >= 1",
        capsys,
    )
    _refused(
        _args(model_dirs["ve"], "--sampler", "pc", "--bpd-images", "1000"),
        "--bpd-images 1000 exceeds the 360 reference images",
        capsys,
    )
    _refused(
        _args(model_dirs["ve"], "--sampler", "pc", "--split", "validation"),
        "split for 'digits' must be 'train' or 'test'",
        capsys,
    )


# ---------------------------------------------------------------------------------------------------------
# The data path: reference images as the trainer sees them, one resize path for real and generated images
# ---------------------------------------------------------------------------------------------------------
def test_reference_matches_trainer_data():
    from sde_diffusers.data import load_image_data
    from sde_diffusers.evaluation.quality import load_reference

    ref = load_reference("mnist", split="test", resolution=16, channels=1)
    trainer = load_image_data(dataset_name="mnist", split="test", resolution=16)
    assert torch.equal(ref.images, trainer.images) and ref.images.shape == (2000, 1, 16, 16)
    assert ref.num_levels == 256
    digits = load_reference("digits", split="test", resolution=8, channels=1)
    assert digits.num_levels == 17 and digits.images.shape == (360, 1, 8, 8)


def test_extractor_input_geometry():
    from sde_diffusers.evaluation import load_feature_extractor
    from sde_diffusers.evaluation.quality import extractor_input, quantize_8bit

    mnist = load_feature_extractor("mnist")
    x = torch.rand(3, 1, 16, 16)
    up = extractor_input(x, mnist)
    assert up.shape == (3, 1, 28, 28) and up.min() >= 0 and up.max() <= 1
    # a constant image stays constant through the bilinear resize
    assert torch.allclose(extractor_input(torch.full((1, 1, 16, 16), 0.25), mnist), torch.tensor(0.25))
    assert extractor_input(torch.rand(2, 1, 28, 28), mnist).shape == (2, 1, 28, 28)
    assert extractor_input(torch.rand(2, 3, 16, 16), mnist).shape == (2, 1, 28, 28)  # RGB -> luma
    q = quantize_8bit(torch.tensor([0.0, 0.5, 1.2, -0.1]))
    assert torch.equal(q * 255, torch.tensor([0.0, 128.0, 255.0, 0.0]))
