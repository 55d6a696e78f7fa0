"""NCSN++ / DDPM++ / noise-conditional classifier: shapes, conventions, closed-form layers, save/load, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.unets.unet_2d import UNet2DOutput

from sde_diffusers.models import (
    PRESETS,
    DDPMppModel,
    NCSNppModel,
    NoiseConditionalClassifier,
    from_preset,
    get_preset,
    list_presets,
    preset_num_parameters,
)
from sde_diffusers.models.layers import (
    FIRConv2d,
    GaussianFourierProjection,
    fir_downsample_2d,
    fir_kernel_2d,
    fir_upsample_2d,
    num_groups_for,
    sinusoidal_embedding,
)
from sde_diffusers.parameterization import make_score_fn
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE

torch.set_num_threads(1)

SCORE_MODELS = [("ncsnpp-tiny", NCSNppModel), ("ddpmpp-tiny", DDPMppModel)]


def _timestep(cls, batch, generator=None):
    """A valid timestep for the class: sigma in (0.01, 50) for NCSN++, t * 999 for DDPM++."""
    u = torch.rand(batch, generator=generator)
    return 0.01 * 5000.0**u if cls is NCSNppModel else u * 999.0


# ---- FIR resampling and embeddings against closed forms ----------------------------------------------
def test_fir_with_box_kernel_is_nearest_upsampling_and_average_pooling():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    box = fir_kernel_2d([1, 1]).double()
    torch.testing.assert_close(fir_upsample_2d(x, box), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(fir_downsample_2d(x, box), F.avg_pool2d(x, 2))


def test_fir_1331_is_quarter_offset_linear_interpolation():
    x = torch.randn(1, 1, 1, 12, dtype=torch.float64).expand(1, 1, 12, 12).contiguous()  # varies along width
    k = fir_kernel_2d([1, 3, 3, 1]).double()
    row = x[0, 0, 0]
    up = fir_upsample_2d(x, k)[0, 0, 6]  # an interior row: vertical filter sums to one there
    i = torch.arange(1, 11)
    torch.testing.assert_close(up[2 * i], 0.25 * row[i - 1] + 0.75 * row[i])
    torch.testing.assert_close(up[2 * i + 1], 0.75 * row[i] + 0.25 * row[i + 1])
    down = fir_downsample_2d(x, k)[0, 0, 3]
    j = torch.arange(1, 5)
    torch.testing.assert_close(down[j], (row[2 * j - 1] + 3 * row[2 * j] + 3 * row[2 * j + 1] + row[2 * j + 2]) / 8)


def test_fused_fir_convolutions_match_filter_then_convolve_in_the_interior():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    k = fir_kernel_2d([1, 3, 3, 1]).double()
    up = FIRConv2d(3, 5, up=True).double()
    down = FIRConv2d(3, 5, down=True).double()
    with torch.no_grad():
        up.bias.normal_()
        down.bias.normal_()
    y = up(x)
    assert y.shape == (2, 5, 32, 32)
    ref = F.conv2d(fir_upsample_2d(x, k), up.weight, up.bias, padding=1)
    torch.testing.assert_close(y[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4])
    y = down(x)
    assert y.shape == (2, 5, 8, 8)
    ref = fir_downsample_2d(F.conv2d(x, down.weight, down.bias, padding=1), k)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2])


def test_gaussian_fourier_projection_closed_form():
    proj = GaussianFourierProjection(embedding_size=6, scale=16.0)
    x = torch.tensor([-1.5, 0.0, 2.0])
    arg = 2 * math.pi * x[:, None] * proj.W[None, :]
    torch.testing.assert_close(proj(x), torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))
    assert proj.W.std() > 4.0  # scale 16, not 1
    assert "W" in proj.state_dict() and not list(proj.parameters())  # saved, never trained


def test_sinusoidal_embedding_is_ddpm_embedding():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=1)
    torch.testing.assert_close(sinusoidal_embedding(t, 32), ref)
    assert sinusoidal_embedding(t, 7).shape == (4, 7)


def test_group_count_rule():
    assert [num_groups_for(c) for c in (1, 4, 8, 16, 64, 128, 256)] == [1, 1, 2, 4, 16, 32, 32]
    with pytest.raises(ValueError, match="not divisible"):
        num_groups_for(20, max_groups=3)


# ---- score networks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,cls", SCORE_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_shapes_for_channels_and_sizes(preset, cls, channels, size):
    model = cls.from_preset(preset, in_channels=channels, sample_size=size).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x, _timestep(cls, 2))
    assert isinstance(out, UNet2DOutput)
    assert out.sample.shape == x.shape and torch.isfinite(out.sample).all()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(progressive="output_skip", progressive_input="input_skip"),
        dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
        dict(progressive="residual", progressive_input="residual"),
        dict(resblock_type="ddpm", fir=True),
        dict(resblock_type="ddpm", fir=False, resamp_with_conv=False),
        dict(fir=False, attention_resolutions=(16, 4), mid_attention=False),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_architecture_variants_run(overrides, channels):
    model = NCSNppModel.from_preset("ncsnpp-tiny", in_channels=channels, init_scale=1.0, **overrides).eval()
    x = torch.randn(2, channels, 16, 16)
    with torch.no_grad():
        out = model(x, torch.tensor([0.1, 10.0])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def _raw_output_hook(model):
    captured = {}
    model.conv_out.register_forward_hook(lambda mod, inp, out: captured.__setitem__("raw", out.detach()))
    return captured


def test_ncsnpp_output_is_network_output_divided_by_sigma():
    model = NCSNppModel.from_preset("ncsnpp-tiny", init_scale=1.0).eval()
    captured = _raw_output_hook(model)
    sigma = torch.tensor([0.01, 0.5, 3.0, 50.0])
    with torch.no_grad():
        out = model(torch.randn(4, 1, 16, 16), sigma).sample
    torch.testing.assert_close(out, captured["raw"] / sigma.view(-1, 1, 1, 1))
    assert NCSNppModel.prediction_type == "score" and NCSNppModel.time_input == "sigma"


def test_ddpmpp_output_is_not_rescaled_and_takes_integer_timesteps():
    model = DDPMppModel.from_preset("ddpmpp-tiny", init_scale=1.0).eval()
    captured = _raw_output_hook(model)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 500, 999])).sample
        torch.testing.assert_close(out, captured["raw"])
        out_float = model(x, torch.tensor([0.0, 500.0, 999.0])).sample
        scalar = model(x, 500).sample
        vector = model(x, torch.full((3,), 500.0)).sample
    torch.testing.assert_close(out, out_float)
    torch.testing.assert_close(scalar, vector)
    assert DDPMppModel.prediction_type == "epsilon" and DDPMppModel.time_input == "index"


def test_time_conditioning_changes_the_output():
    for preset, cls in SCORE_MODELS:
        model = cls.from_preset(preset, init_scale=1.0).eval()
        x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1)
        t = torch.tensor([0.05, 20.0]) if cls is NCSNppModel else torch.tensor([10.0, 900.0])
        with torch.no_grad():
            raw = model(x, t).sample * (t.view(-1, 1, 1, 1) if cls is NCSNppModel else 1.0)
        assert (raw[0] - raw[1]).abs().max() > 1e-3


def test_make_score_fn_gives_scores_for_each_sde():
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0.3, 0.8])
    ve = VESDE()
    ncsn = NCSNppModel.from_preset("ncsnpp-tiny", init_scale=1.0).eval()
    with torch.no_grad():
        score = make_score_fn(ncsn, ve, ncsn.prediction_type, ncsn.time_input)(x, t)
        torch.testing.assert_close(score, ncsn(x, ve.sigma(t)).sample)
        ddpm = DDPMppModel.from_preset("ddpmpp-tiny", init_scale=1.0).eval()
        for sde in (VPSDE(), SubVPSDE()):
            score = make_score_fn(ddpm, sde, ddpm.prediction_type, ddpm.time_input)(x, t)
            std = sde.marginal_coeffs(t)[1].view(-1, 1, 1, 1)
            torch.testing.assert_close(score, -ddpm(x, t * 999).sample / std)


@pytest.mark.parametrize("preset,cls", SCORE_MODELS)
def test_class_conditioning(preset, cls):
    model = cls.from_preset(preset, num_class_embeds=3, init_scale=1.0).eval()
    x = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1)
    t = _timestep(cls, 1).expand(3)
    with torch.no_grad():
        out = model(x, t, class_labels=torch.tensor([0, 1, 2])).sample
        again = model(x, t, class_labels=torch.tensor([0, 0, 0])).sample
    assert (out[0] - out[1]).abs().max() > 1e-4 * out.abs().max()
    assert (out[1] - out[2]).abs().max() > 1e-4 * out.abs().max()
    torch.testing.assert_close(again[1], out[0])
    with pytest.raises(ValueError, match="class_labels"):
        model(x, t)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        model(x, t, class_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        model(x, t, class_labels=torch.tensor([0.0, 1.0, 2.0]))
    uncond = cls.from_preset(preset)
    with pytest.raises(ValueError, match="no class embedding"):
        uncond(x, t, class_labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("preset,cls", SCORE_MODELS)
def test_gradients_reach_every_parameter(preset, cls):
    model = cls.from_preset(preset, num_class_embeds=2, init_scale=1.0, attention_resolutions=(8,))
    x = torch.randn(4, 1, 16, 16)
    out = model(x, _timestep(cls, 4), class_labels=torch.tensor([0, 1, 0, 1])).sample
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not missing and not zero, (missing, zero)


@pytest.mark.parametrize(
    "preset,cls,kwargs",
    [
        ("ncsnpp-tiny", NCSNppModel, dict(num_class_embeds=4)),
        ("ddpmpp-tiny", DDPMppModel, dict(in_channels=3, progressive="output_skip")),
        ("classifier-tiny", NoiseConditionalClassifier, dict(time_embedding_type="positional")),
    ],
)
def test_save_load_round_trip(tmp_path, preset, cls, kwargs):
    model = cls.from_preset(preset, **kwargs).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = cls.from_pretrained(tmp_path).eval()
    for key, value in model.config.items():
        if not key.startswith("_"):
            assert loaded.config[key] == (list(value) if isinstance(value, tuple) else value), key
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    channels = model.config.in_channels
    x = torch.randn(2, channels, 16, 16)
    t = torch.tensor([0.5, 3.0]) if cls is not DDPMppModel else torch.tensor([5.0, 700.0])
    extra = {"class_labels": torch.tensor([1, 3])} if kwargs.get("num_class_embeds") else {}
    with torch.no_grad():
        a, b = model(x, t, return_dict=False, **extra)[0], loaded(x, t, return_dict=False, **extra)[0]
    assert torch.equal(a, b)


# ---- presets and parameter counts --------------------------------------------------------------------
def test_presets_build_the_documented_class():
    for name in list_presets():
        preset = get_preset(name)
        cls = {
            "NCSNppModel": NCSNppModel,
            "DDPMppModel": DDPMppModel,
            "NoiseConditionalClassifier": NoiseConditionalClassifier,
        }[preset.model_class]
        if "tiny" in name:
            model = from_preset(name)
            assert type(model) is cls
            assert sum(p.numel() for p in model.parameters()) == preset_num_parameters(name)
            if cls is not NoiseConditionalClassifier:
                assert model.prediction_type == preset.prediction_type and model.time_input == preset.time_input
        assert set(preset.sde_types) <= {"ve", "vp", "subvp"}
    assert get_preset("ncsnpp-cifar10").prediction_type == "score"
    assert get_preset("ddpmpp-cifar10").prediction_type == "epsilon"


def test_paper_size_parameter_counts():
    # Counted on the meta device (no memory). score_sde's CIFAR-10 NCSN++ / DDPM++ (ch 128, ch_mult
    # (1, 2, 2, 2), attention at 16) have about 62M parameters with 4 blocks and about 107M with 8.
    counts = {name: preset_num_parameters(name) for name in PRESETS if "cifar10" in name}
    assert 61e6 < counts["ncsnpp-cifar10"] < 64e6
    assert 60e6 < counts["ddpmpp-cifar10"] < 63e6
    assert 105e6 < counts["ncsnpp-deep-cifar10"] < 109e6
    assert 105e6 < counts["ddpmpp-deep-cifar10"] < 109e6
    assert 36e6 < counts["classifier-cifar10"] < 40e6  # WRN-28-10 (36.5M) plus the time embedding
    assert preset_num_parameters("ncsnpp-tiny") < 100_000 and preset_num_parameters("ddpmpp-tiny") < 100_000


@pytest.mark.slow
def test_paper_size_ncsnpp_forward():
    model = NCSNppModel.from_preset("ncsnpp-cifar10").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([1.0])).sample
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


# ---- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,match",
    [
        (
            dict(sample_size=20, channel_mult=(1, 2, 2, 2)),
            "divisible by 2\\*\\*\\(len\\(channel_mult\\) - 1\\) = 8",
        ),
        (dict(sample_size=0), "`sample_size` must be an integer >= 1"),
        (dict(base_channels=20, norm_num_groups=3), "not divisible by 3 groups"),
        (dict(attention_resolutions=(16, 5)), "attention_resolutions \\[5\\]"),
        (dict(progressive="skip"), "`progressive` must be one of"),
        (dict(progressive_input="sum"), "`progressive_input` must be one of"),
        (dict(resblock_type="resnet"), "`resblock_type` must be one of"),
        (dict(channel_mult=()), "channel_mult must be a non-empty"),
        (dict(dropout=1.5), "dropout must be in"),
        (dict(num_class_embeds=0), "`num_class_embeds` must be an integer >= 1"),
        (dict(fir_kernel=()), "fir_kernel"),
        (dict(out_channels=2, progressive="output_skip"), "out_channels == in_channels"),
        (dict(widths=3), "unknown config keys \\['widths'\\]"),
    ],
)
def test_bad_config_raises_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        NCSNppModel.from_preset("ncsnpp-tiny", **overrides)


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown model preset 'ncsnpp-cifar100'; known presets: .*ncsnpp-cifar10"):
        from_preset("ncsnpp-cifar100")
    with pytest.raises(ValueError, match="builds a DDPMppModel, not a NCSNppModel"):
        NCSNppModel.from_preset("ddpmpp-tiny")
    with pytest.raises(ValueError, match="builds a NCSNppModel, not a NoiseConditionalClassifier"):
        NoiseConditionalClassifier.from_preset("ncsnpp-tiny")


def test_bad_forward_inputs_raise_clear_errors():
    model = NCSNppModel.from_preset("ncsnpp-tiny")
    with pytest.raises(ValueError, match="shape \\(batch, 1, height, width\\)"):
        model(torch.randn(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 18, 18), 1.0)
    with pytest.raises(ValueError, match="timestep must be a scalar or have shape \\(2,\\)"):
        model(torch.randn(2, 1, 16, 16), torch.ones(3))
    with pytest.raises(TypeError, match="timestep must be a torch.Tensor or a number"):
        model(torch.randn(2, 1, 16, 16), "1.0")


# ---- noise-conditional classifier --------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_classifier_shapes(channels, size, embedding):
    clf = NoiseConditionalClassifier.from_preset(
        "classifier-tiny",
        in_channels=channels,
        sample_size=size,
        time_embedding_type=embedding,
        num_classes=7,
    ).eval()
    t = torch.tensor([0.1, 5.0]) if embedding == "fourier" else torch.tensor([3.0, 800.0])
    with torch.no_grad():
        logits = clf(torch.randn(2, channels, size, size), t).logits
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert clf.time_input == ("sigma" if embedding == "fourier" else "index")


def test_classifier_is_time_conditional_and_guidance_gradient_is_grad_log_softmax():
    clf = NoiseConditionalClassifier.from_preset("classifier-tiny").eval()
    x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1).contiguous()
    with torch.no_grad():
        logits = clf(x, torch.tensor([0.05, 30.0])).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-4
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    clf = clf.double()
    labels = torch.tensor([0, 4, 9])
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    grad = clf.log_prob_gradient(x, sigma, labels)
    assert grad.shape == x.shape and not grad.requires_grad
    # Directional finite difference of log p(y | x) for each sample.
    direction = torch.randn_like(x)
    h = 1e-5

    def logp(z):
        return F.log_softmax(clf(z, sigma).logits, dim=-1).gather(1, labels[:, None]).squeeze(1)

    with torch.no_grad():
        fd = (logp(x + h * direction) - logp(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(dim=(1, 2, 3)), fd, rtol=1e-5, atol=1e-7)


def test_classifier_bad_inputs():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        NoiseConditionalClassifier.from_preset("classifier-tiny", num_classes=1)
    with pytest.raises(ValueError, match="`time_embedding_type` must be one of"):
        NoiseConditionalClassifier.from_preset("classifier-tiny", time_embedding_type="learned")
    with pytest.raises(ValueError, match="not divisible"):
        NoiseConditionalClassifier.from_preset("classifier-tiny", base_channels=20, norm_num_groups=3)
    clf = NoiseConditionalClassifier.from_preset("classifier-tiny")
    with pytest.raises(ValueError, match="sample must have shape"):
        clf(torch.randn(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        clf.log_prob_gradient(torch.randn(2, 1, 16, 16), 1.0, torch.tensor([1, 2, 3]))
