"""Log-likelihood, bits/dim and encode/decode through the probability-flow ODE, against closed forms.

Every perturbed marginal of Gaussian (mixture) data is a Gaussian mixture, so ``log p_t`` and the score are exact
(``sde_diffusers.toy``). The ODE likelihood is ``log pi(z) + int div f``; it equals ``log p_eps(x)`` up to the
prior mismatch ``log pi(z) - log p_T(z)`` (``p_T`` is not exactly the prior), which is negligible for zero-mean
data and is accounted for exactly where the data is not centred.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from scipy.integrate import solve_ivp

from sde_diffusers.likelihood import (
    _augmented_fn,
    decode,
    dequantization_offset_bits,
    encode,
    log_likelihood,
    resolve_score_fn,
    sde_from_scheduler_config,
)
from sde_diffusers.parameterization import make_score_fn
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE
from sde_diffusers.toy import ExactScoreModel, GaussianMixture

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# zero-mean data: the prior mismatch is O(|x|^2 / sigma_max^2) (VE) or O(m(T)) (VP), far below 1e-3 bits/dim
GAUSS = GaussianMixture.gaussian(torch.zeros(4), torch.tensor([0.5, 0.3, 0.8, 0.4]))
_W = torch.tensor([0.3, 0.7])
_MU = torch.tensor([0.7, -0.4, 0.3, 0.5])
MIX = GaussianMixture(
    torch.stack([_MU, -_MU * _W[0] / _W[1]]), torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.25, 0.3, 0.35, 0.2]]), _W
)


def bits(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * LN2)


@pytest.mark.parametrize("sde_type", SDES)
@pytest.mark.parametrize("dist", [GAUSS, MIX], ids=["gaussian", "mixture"])
def test_exact_trace_gives_the_true_log_density(sde_type, dist):
    sde = SDES[sde_type]()
    x = dist.sample(24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = log_likelihood(dist.score_fn(sde), sde, x, trace="exact", offset_bits=0)  # reference rtol=atol=1e-5
    # the ODE starts at t = eps: the density there is the data's convolved with N(0, s(eps)^2) (s = 0.01 for VE)
    true = dist.log_prob(x, torch.full((24,), 1e-5, dtype=torch.float64), sde)
    err = bits(out.log_likelihood - true, 4)
    assert err.abs().max() < 1e-3
    torch.testing.assert_close(out.bits_per_dim, -bits(out.log_likelihood, 4))
    torch.testing.assert_close(out.log_likelihood, out.prior_logp + out.delta_logp)


@pytest.mark.parametrize("sde_type", SDES)
def test_solver_error_is_far_below_the_tolerance_of_the_claim(sde_type):
    """Off-centre data: the ODE value is exactly log p_eps(x) + log pi(z) - log p_T(z); check that identity."""
    sde = SDES[sde_type]()
    dist = GaussianMixture(MIX.means + 0.8, MIX.stds, MIX.weights)
    x = dist.sample(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = log_likelihood(dist.score_fn(sde), sde, x, trace="exact", offset_bits=0)
    eps, T = (torch.full((16,), v, dtype=torch.float64) for v in (1e-5, sde.T))
    target = dist.log_prob(x, eps, sde) + sde.prior_logp(out.z) - dist.log_prob(out.z, T, sde)
    assert bits(out.log_likelihood - target, 4).abs().max() < 2e-4


@pytest.mark.parametrize("trace", ["rademacher", "gaussian"])
def test_hutchinson_estimates_are_unbiased(trace):
    sde = VPSDE()
    x = MIX.sample(1, generator=torch.Generator().manual_seed(2), dtype=torch.float64).expand(400, 4)
    exact = log_likelihood(MIX.score_fn(sde), sde, x[:1], trace="exact", offset_bits=0).log_likelihood
    est = log_likelihood(
        MIX.score_fn(sde), sde, x, trace=trace, generator=torch.Generator().manual_seed(3), offset_bits=0
    ).log_likelihood  # one independent probe per copy of x
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 1e-3  # the estimator is random; otherwise the check below would be vacuous
    assert abs(est.mean() - exact[0]) < 3 * se
    # more probes per evaluation: variance falls like 1 / num_probes
    est8 = log_likelihood(
        MIX.score_fn(sde), sde, x[:200], trace=trace, num_probes=8, generator=torch.Generator().manual_seed(4)
    ).log_likelihood
    assert est8.var() < est.var() / 3


def test_explicit_probes_and_generator_reproducibility():
    sde = VESDE()
    x = MIX.sample(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = log_likelihood(MIX.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0))
    b = log_likelihood(MIX.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=0, atol=0)
    probes = torch.randint(0, 2, (1, 8, 4), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    c = log_likelihood(MIX.score_fn(sde), sde, x, probes=probes)
    torch.testing.assert_close(a.log_likelihood, c.log_likelihood, rtol=0, atol=0)


def test_batch_step_control_is_the_reference_scipy_solve():
    """step_control='batch' runs the reference method (solve_ivp RK45 on the flattened batch) exactly."""
    sde = VPSDE()
    x = MIX.sample(6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    probes = torch.randint(0, 2, (1, 6, 4), generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    ours = log_likelihood(MIX.score_fn(sde), sde, x, probes=probes, step_control="batch", offset_bits=0)

    fn = _augmented_fn(MIX.score_fn(sde), sde, x.shape, probes, 64)

    def np_fn(t, y):
        out = fn(torch.full((6,), t, dtype=torch.float64), torch.from_numpy(y.reshape(6, 5)))
        return out.numpy().ravel()

    y0 = np.concatenate([x.numpy(), np.zeros((6, 1))], axis=1).ravel()
    ref = solve_ivp(np_fn, (1e-5, 1.0), y0, method="RK45", rtol=1e-5, atol=1e-5)
    y = torch.from_numpy(ref.y[:, -1].reshape(6, 5))
    ref_ll = sde.prior_logp(y[:, :4]) + y[:, 4]
    assert ours.nfe == ref.nfev
    torch.testing.assert_close(ours.log_likelihood, ref_ll, rtol=1e-10, atol=1e-10)


def test_one_forward_pass_per_evaluation_and_the_same_divergence_as_two():
    """The drift and its divergence come from one forward pass (the reference runs the network twice)."""
    sde = VPSDE()
    calls = [0]

    def score_fn(x, t):
        calls[0] += 1
        return MIX.score(x, t, sde)

    x = MIX.sample(5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    probes = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = _augmented_fn(score_fn, sde, x.shape, probes, 64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    out = fn(t, torch.cat([x, torch.zeros(5, 1, dtype=torch.float64)], 1))
    assert calls[0] == 1
    drift_fn = lambda xx: sde.reverse(MIX.score_fn(sde), probability_flow=True).sde(xx, t)[0]  # noqa: E731
    jac = torch.autograd.functional.jacobian(lambda xx: drift_fn(xx).sum(0), x)  # jac[i, b, j] = d f_bi / d x_bj
    quad = torch.einsum("kbi,ibj,kbj->kb", probes, jac, probes).mean(0)
    torch.testing.assert_close(out[:, :4], drift_fn(x))
    torch.testing.assert_close(out[:, 4], quad)


@pytest.mark.parametrize("sde_type", SDES)
def test_decode_inverts_encode(sde_type):
    sde = SDES[sde_type]()
    x = MIX.sample(16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    enc = encode(MIX.score_fn(sde), sde, x)
    dec = decode(MIX.score_fn(sde), sde, enc.sample)
    torch.testing.assert_close(dec.sample, x, rtol=0, atol=5e-4)
    assert enc.nfe > 0 and dec.nfe > 0
    z, nfe = encode(MIX.score_fn(sde), sde, x, return_dict=False, rtol=1e-7, atol=1e-7)
    x_back, _ = decode(MIX.score_fn(sde), sde, z, return_dict=False, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-5)
    # encodings are latent samples of the prior: for VP their std is ~1
    if sde_type == "vp":
        many = encode(
            MIX.score_fn(sde),
            sde,
            MIX.sample(2000, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
        )
        assert abs(many.sample.std() - 1.0) < 0.05


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_model_with_a_ddpm_scheduler_config(prediction_type):
    """A Diffusers ModelMixin predicting epsilon/v/x0 in the DDPM timestep scale, SDE from DDPMScheduler's config."""
    means = torch.stack([_MU, -_MU * _W[0] / _W[1]]).reshape(2, 1, 2, 2)
    stds = MIX.stds.reshape(2, 1, 2, 2)
    model = ExactScoreModel(means.tolist(), stds.tolist(), _W.tolist(), sde_type="vp", prediction_type=prediction_type)
    config = DDPMScheduler(prediction_type=prediction_type).config
    x = MIX.sample(8, generator=torch.Generator().manual_seed(10), dtype=torch.float64).reshape(8, 1, 2, 2)
    out = log_likelihood(model, None, x, trace="exact", scheduler_config=config, offset_bits=0)
    assert bits(out.log_likelihood - MIX.log_prob(x.reshape(8, 4)), 4).abs().max() < 1e-3
    # the scheduler object itself works too
    out2 = log_likelihood(
        model, None, x, trace="exact", scheduler_config=DDIMScheduler.from_config(config), offset_bits=0
    )
    torch.testing.assert_close(out.log_likelihood, out2.log_likelihood)


def test_tiny_unet2dmodel_runs_end_to_end():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.train()
    x = (torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 255.0) * 2 - 1
    out = log_likelihood(
        unet,
        None,
        x,
        scheduler_config=DDPMScheduler().config,
        rtol=1e-2,
        atol=1e-2,
        dequantize=True,
        num_dequant=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert unet.training  # evaluated in eval mode, then restored
    assert out.bits_per_dim.shape == (3,) and torch.isfinite(out.bits_per_dim).all()
    assert out.z.shape == x.shape and out.nfe > 0
    score_fn, sde = resolve_score_fn(unet, None, scheduler_config=DDPMScheduler().config)
    assert isinstance(sde, VPSDE) and sde.beta_min == pytest.approx(0.1) and sde.beta_max == pytest.approx(20.0)
    with torch.no_grad():
        t = torch.full((3,), 0.5)
        # a DDPM config describes a model trained on the discrete chain (sde_diffusers.scheduler_sde)
        torch.testing.assert_close(score_fn(x, t), make_score_fn(unet, sde, "epsilon", "discrete_index")(x, t))


def test_our_models_declare_their_output_and_timestep():
    """A DDPM++ model says it predicts epsilon at t (N - 1): that wins over a scheduler config's v_prediction."""
    from sde_diffusers.models import from_preset

    torch.manual_seed(0)
    model = from_preset("ddpmpp-tiny", sample_size=8).eval()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    kw = dict(method="heun", num_steps=2, probes=torch.ones(1, 2, 1, 8, 8))
    auto = log_likelihood(model, None, x, scheduler_config=DDPMScheduler(prediction_type="v_prediction").config, **kw)
    manual = log_likelihood(make_score_fn(model, VPSDE(), "epsilon", "index"), VPSDE(), x, **kw)
    torch.testing.assert_close(auto.log_likelihood, manual.log_likelihood)


def test_bits_per_dim_offset_and_dequantization():
    assert dequantization_offset_bits((0, 1)) == 8
    assert dequantization_offset_bits((-1, 1)) == 7
    assert dequantization_offset_bits((0, 255)) == pytest.approx(8 - math.log2(255))
    assert dequantization_offset_bits((0, 1), num_levels=17) == pytest.approx(math.log2(17))
    sde = VPSDE()
    x = (torch.randint(0, 256, (4, 4), generator=torch.Generator().manual_seed(0)).double() / 255) * 2 - 1
    cont = log_likelihood(MIX.score_fn(sde), sde, x, offset_bits=0, generator=torch.Generator().manual_seed(0))
    disc = log_likelihood(MIX.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(disc.bits_per_dim, cont.bits_per_dim + 7)
    x01 = (x + 1) / 2
    deq = log_likelihood(
        MIX.score_fn(sde),
        sde,
        x01,
        data_range=(0, 1),
        dequantize=True,
        num_dequant=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert deq.offset_bits == 8
    # sklearn's digits have 17 levels (k / 16): on the 8-bit grid they are rejected, with num_levels=17 accepted
    digits = torch.randint(0, 17, (4, 4), generator=torch.Generator().manual_seed(1)).double() / 16
    with pytest.raises(ValueError, match="off that grid"):
        log_likelihood(MIX.score_fn(sde), sde, digits, data_range=(0, 1), dequantize=True)
    out17 = log_likelihood(MIX.score_fn(sde), sde, digits, data_range=(0, 1), dequantize=True, num_levels=17)
    assert out17.offset_bits == pytest.approx(math.log2(17))
    assert deq.nfe > cont.nfe  # three solves
    torch.testing.assert_close(deq.bits_per_dim, -bits(deq.log_likelihood, 4) + 8)


def test_sde_from_scheduler_configs():
    sde = sde_from_scheduler_config(DDPMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.04).config)
    assert (
        isinstance(sde, VPSDE)
        and sde.N == 500
        and sde.beta_min == pytest.approx(0.1)
        and sde.beta_max == pytest.approx(20.0)
    )
    assert isinstance(sde_from_scheduler_config({"sde_type": "subvp"}), SubVPSDE)
    ve = sde_from_scheduler_config({"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 348.0})
    assert isinstance(ve, VESDE) and ve.sigma_max == 348.0 and ve.N == 2000
    with pytest.raises(ValueError, match="beta_schedule"):
        sde_from_scheduler_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    with pytest.raises(ValueError, match="sde_type"):
        sde_from_scheduler_config({"sde_type": "edm"})


def test_bad_input():
    sde = VPSDE()
    fn = MIX.score_fn(sde)
    x = MIX.sample(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN or infinite"):
        log_likelihood(fn, sde, torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="data_range"):
        log_likelihood(fn, sde, x * 0 + 1.5, dequantize=True)
    with pytest.raises(ValueError, match="off that grid"):
        log_likelihood(fn, sde, x.clamp(-1, 1) * 0.123456, dequantize=True)
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(fn, sde, x, trace="skilling")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(fn, sde, x, method="lsoda")
    for name in ("rtol", "atol"):
        for bad in (0.0, -1e-3):
            with pytest.raises(ValueError, match=name):
                log_likelihood(fn, sde, x, **{name: bad})
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(fn, sde, x, eps=1.5)
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(fn, sde, x, num_probes=0)
    with pytest.raises(ValueError, match="dequantize=True"):
        log_likelihood(fn, sde, x, num_dequant=2)
    with pytest.raises(ValueError, match="probes must have shape"):
        log_likelihood(fn, sde, x, probes=torch.ones(2, 4))
    with pytest.raises(ValueError, match="scheduler_config"):
        log_likelihood(fn, None, x)
    with pytest.raises(ValueError, match="prediction_type"):
        log_likelihood(fn, sde, x, prediction_type="epsilon")
    with pytest.raises(TypeError, match="sde must be an SDE"):
        log_likelihood(fn, "vp", x)
    with pytest.raises(TypeError, match="model must be"):
        log_likelihood(42, sde, x)
    with pytest.raises(ValueError, match="must match"):
        log_likelihood(lambda xx, t: xx[:, :2], sde, x)

    class Bad(torch.nn.Module):
        def forward(self, sample, timestep):
            return sample[:, :1]

    with pytest.raises(ValueError, match="shape"):
        log_likelihood(Bad(), sde, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="must match"):
        encode(lambda xx, t: xx.sum(1), sde, x)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def _tiny_ddpm_pipeline(folder):
    from diffusers import DDPMPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


def test_cli_on_a_saved_ddpm_pipeline(tmp_path, capsys, monkeypatch):
    import json

    from PIL import Image

    from sde_diffusers.cli import main

    model_dir = _tiny_ddpm_pipeline(tmp_path / "ddpm")
    fast = ["--rtol", "1e-2", "--atol", "1e-2", "--no-progress", "--batch-size", "2"]
    report = tmp_path / "digits.json"
    assert (
        main(
            [
                "likelihood",
                str(model_dir),
                "--data",
                "digits",
                "--num-images",
                "3",
                "--output",
                str(report),
                *fast,
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    assert result["num_images"] == 3 and len(result["per_image_bits_per_dim"]) == 3
    assert result["sde"] == "VPSDE" and result["prediction_type"] == "epsilon"
    assert result["offset_bits"] == pytest.approx(math.log2(17 / 2))  # 17-level digits in [-1, 1]
    assert np.isfinite(result["bits_per_dim"]) and result["bits_per_dim_stderr"] > 0
    assert f"{result['bits_per_dim']:.4f} ± " in capsys.readouterr().out

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(images / f"{i}.png")
    assert (
        main(["likelihood", str(model_dir), "--data", str(images), "--output", str(tmp_path / "f.json"), *fast]) == 0
    )
    assert json.loads((tmp_path / "f.json").read_text())["offset_bits"] == 7

    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(images / "big.png")
    monkeypatch.setenv("SDE_DIFFUSERS_TRACEBACK", "1")  # the errors themselves, not their one-line form
    with pytest.raises(ValueError, match="different sizes"):
        main(["likelihood", str(model_dir), "--data", str(images), *fast])
    with pytest.raises(FileNotFoundError, match="digits"):
        main(["likelihood", str(model_dir), "--data", str(tmp_path / "missing"), *fast])
    with pytest.raises(ValueError, match="model takes 8x8"):
        main(["likelihood", str(model_dir), "--data", "mnist", *fast])
