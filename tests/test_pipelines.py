"""Score-SDE pipelines: every pipeline with every scheduler family, reproducibility, constraints, save/load, errors.

The score models are exact Gaussian-mixture scores (`ExactScoreModel`) on 4x4 images, so these tests run in seconds;
the tiny NCSN++/DDPM++ presets and the noise-conditional classifier are exercised where the network matters.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    ConfigMixin,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ModelMixin,
    UNet2DModel,
)
from diffusers.configuration_utils import register_to_config

import sde_diffusers
from sde_diffusers import ExactScoreModel, SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler
from sde_diffusers.cli import main as cli_main
from sde_diffusers.models import DDPMppModel, NCSNppModel
from sde_diffusers.pipelines import (
    ScoreSdeColorizationPipeline,
    ScoreSdeInpaintPipeline,
    ScoreSdePipeline,
    ScoreSdePipelineOutput,
    decoupled_colour_basis,
)
from sde_diffusers.pipelines.pipeline_score_sde_colorization import fit_grey_in_range, grey_level
from sde_diffusers.scheduler_sde import SchedulerSDE
from sde_diffusers.schedulers.scheduling_probability_flow import ProbabilityFlowScheduler
from sde_diffusers.toy import GaussianMixture

PIPELINES = (ScoreSdePipeline, ScoreSdeInpaintPipeline, ScoreSdeColorizationPipeline)
SIZE = 4
STEPS = 4


class ExactMixtureClassifier(ModelMixin, ConfigMixin):
    """The Bayes classifier ``p_t(k | x_t)`` of a Gaussian mixture: logits ``log w_k + log N_k(x_t)``.

    With scale 1 its guidance turns the exact mixture score into the exact score of component ``k``.
    """

    time_input = "sigma"

    @register_to_config
    def __init__(self, means: list, stds: float = 0.1, sigma_max: float = 10.0):
        super().__init__()
        self.mixture = GaussianMixture(torch.tensor(means), stds)
        self.sde = sde_diffusers.VESDE(sigma_max=sigma_max)
        self.register_to_config(num_classes=len(means))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, timestep):
        t = self.sde.sigma_to_t(torch.as_tensor(timestep, dtype=torch.float64)).reshape(-1).expand(sample.shape[0])
        logp, _, _ = self.mixture._component_logp(sample.double(), t, self.sde)
        return (logp.to(sample.dtype) + 0 * self.dummy,)


@pytest.fixture(scope="module", autouse=True)
def export_pipeline_classes():
    """The shim files import from `sde_diffusers`; export what these tests save (a no-op once the lead exports)."""
    with pytest.MonkeyPatch.context() as mp:
        for cls in (*PIPELINES, ExactMixtureClassifier):
            if getattr(sde_diffusers, cls.__name__, None) is not cls:
                mp.setattr(sde_diffusers, cls.__name__, cls, raising=False)
        yield


def mixture(channels: int, seed: int = 0, k: int = 2) -> tuple[list, float]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand((k, channels, SIZE, SIZE), generator=gen) * 1.4 - 0.7
    return means.tolist(), 0.1


def exact_model(sde_type: str, channels: int = 1, prediction_type: str | None = None) -> ExactScoreModel:
    means, stds = mixture(channels)
    kwargs = {"sigma_max": 10.0} if sde_type == "ve" else {}
    prediction = prediction_type or ("score" if sde_type == "ve" else "epsilon")
    return ExactScoreModel(means, stds, sde_type=sde_type, sde_kwargs=kwargs, prediction_type=prediction)


# Every scheduler family, with the model that goes with it. Langevin step sizes per sample keep samples independent.
SCHEDULERS = {
    "ve-pc": ("ve", lambda: VESDEScheduler(sigma_max=10.0, langevin_per_sample=True)),
    "ve-ancestral": ("ve", lambda: VESDEScheduler(sigma_max=10.0, predictor="ancestral", corrector="none")),
    "vp-pc": ("vp", lambda: VPSDEScheduler(corrector="langevin", langevin_per_sample=True)),
    "subvp-pc": ("subvp", lambda: SubVPSDEScheduler()),
    "vp-ddim": ("vp", lambda: DDIMScheduler()),
    "vp-ddpm": ("vp", lambda: DDPMScheduler()),
    "vp-dpm-solver": ("vp", lambda: DPMSolverMultistepScheduler()),
}
SCHEDULERS["ve-ode-heun"] = (
    "ve",
    lambda: ProbabilityFlowScheduler(sde_type="ve", sigma_max=10.0, solver="heun"),
)
SCHEDULERS["vp-ode-euler"] = (
    "vp",
    lambda: ProbabilityFlowScheduler.from_config(VPSDEScheduler().config, solver="euler"),
)
SCHEDULERS["subvp-ode-heun"] = ("subvp", lambda: ProbabilityFlowScheduler(sde_type="subvp", spacing="karras"))


def make_pipeline(cls, family: str, **kwargs):
    sde_type, scheduler = SCHEDULERS[family]
    channels = 3 if cls is ScoreSdeColorizationPipeline else 1
    pipe = cls(exact_model(sde_type, channels), scheduler(), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def data_image(channels: int, seed: int) -> np.ndarray:
    """A draw from the test mixture, ``(SIZE, SIZE, channels)`` in [0, 1] (an observation the model can explain)."""
    means, stds = mixture(channels)
    noise = np.random.default_rng(seed).normal(0.0, stds, (channels, SIZE, SIZE))
    return ((np.asarray(means[seed % 2]) + noise + 1) / 2).clip(0, 1).transpose(1, 2, 0).astype(np.float32)


def grey_image(seed: int = 1) -> np.ndarray:
    return data_image(3, seed).mean(-1)


def inpaint_inputs(seed: int = 1) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    pixels = (data_image(1, seed)[..., 0] * 255).round().astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2 :] = 255
    return PIL.Image.fromarray(pixels, "L"), PIL.Image.fromarray(mask, "L")


def call(pipe, steps: int = STEPS, **kwargs):
    if isinstance(pipe, ScoreSdeInpaintPipeline):
        image, mask = inpaint_inputs()
        return pipe(image, mask, num_inference_steps=steps, **kwargs)
    if isinstance(pipe, ScoreSdeColorizationPipeline):
        return pipe(grey_image(), num_inference_steps=steps, **kwargs)
    return pipe(num_inference_steps=steps, **kwargs)


def as_tensor(images) -> torch.Tensor:
    return images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))


# ---------------------------------------------------------------------------------------------------------
# Shapes, types, ranges, reproducibility
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(SCHEDULERS))
@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_every_pipeline_with_every_scheduler(cls, family):
    pipe = make_pipeline(cls, family)
    channels = 3 if cls is ScoreSdeColorizationPipeline else 1
    # 16 levels: enough for the first-order SDE samplers to land on the data.
    data = call(pipe, 16, batch_size=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    # Samples that look like the data: the mixture lives in [-0.7, 0.7] (pure noise would be clamped to 0 or 1).
    assert 0.3 < float(data.mean()) < 0.7 and float(data.std()) < 0.3
    assert float(((data == 0) | (data == 1)).float().mean()) < 0.02
    pt = call(pipe, batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert isinstance(pt, ScoreSdePipelineOutput)
    assert pt.images.shape == (2, channels, SIZE, SIZE) and pt.images.dtype == torch.float32
    assert torch.isfinite(pt.images).all() and pt.images.min() >= 0 and pt.images.max() <= 1
    assert pt.nfe == len(pipe.scheduler.timesteps)
    np_out = call(pipe, batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert isinstance(np_out, np.ndarray) and np_out.shape == (2, SIZE, SIZE, channels)
    np.testing.assert_array_equal(np_out, pt.images.permute(0, 2, 3, 1).numpy())  # same seed, same images
    pil = call(pipe, batch_size=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (SIZE, SIZE) and pil[0].mode == ("RGB" if channels == 3 else "L")
    (as_tuple,) = call(
        pipe, batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False
    )
    torch.testing.assert_close(as_tuple, pt.images, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["ve-pc", "vp-ddpm", "vp-pc"])
@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_generator_list_gives_per_sample_reproducibility(cls, family):
    pipe = make_pipeline(cls, family)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    pair = call(pipe, generator=gens(11, 12), output_type="pt").images  # batch size from the generators
    alone = call(pipe, generator=gens(12), output_type="pt").images
    reversed_pair = call(pipe, generator=gens(12, 11), output_type="pt").images
    assert pair.shape[0] == 2
    torch.testing.assert_close(pair[1:], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(reversed_pair[0], pair[1], rtol=0, atol=1e-6)
    assert not torch.allclose(pair[0], pair[1])
    different_seed = call(pipe, batch_size=2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    same_seed = call(pipe, batch_size=2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    torch.testing.assert_close(same_seed, different_seed, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["adaptive_ode", "adaptive_sde"])
@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_adaptive_samplers_run_every_pipeline(cls, sampler):
    pipe = make_pipeline(cls, "ve-pc" if sampler == "adaptive_sde" else "vp-ddim")
    options = {"rtol": 0.05} if sampler == "adaptive_sde" else {"rtol": 1e-3, "atol": 1e-3}
    kw = dict(sampler=sampler, output_type="pt", sampler_options=options)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    out = call(pipe, generator=gens(1, 2), **kw)
    assert out.images.shape[0] == 2 and out.nfe > 10 and torch.isfinite(out.images).all()
    assert float(((out.images == 0) | (out.images == 1)).float().mean()) < 0.02  # data, not clamped noise
    torch.testing.assert_close(call(pipe, generator=gens(2), **kw).images, out.images[1:], rtol=0, atol=1e-5)
    if cls is ScoreSdeInpaintPipeline:
        image, mask = inpaint_inputs()
        keep = torch.from_numpy(np.asarray(mask) == 0)
        expected = torch.from_numpy(np.asarray(image) / np.float32(255))[keep]
        assert torch.equal(out.images[:, 0][:, keep], expected.expand(2, -1))
    if cls is ScoreSdeColorizationPipeline:
        torch.testing.assert_close(
            grey_level(out.images)[:, 0], torch.from_numpy(grey_image()).expand(2, -1, -1), rtol=0, atol=2e-7
        )


def test_the_pc_loop_calls_the_model_for_corrector_and_predictor_steps():
    pipe = make_pipeline(ScoreSdePipeline, "ve-pc")
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(float(torch.as_tensor(args[1]).max())))
    steps = []
    out = pipe(
        num_inference_steps=5,
        output_type="pt",
        callback_on_step_end=lambda p, i, t, kw: steps.append((i, float(t), kw["latents"].shape)) or {},
        callback_on_step_end_tensor_inputs=["latents"],
    )
    assert out.nfe == len(calls) == len(steps) == 10  # one corrector and one predictor call per noise level
    sigmas = torch.tensor(calls)
    torch.testing.assert_close(sigmas[0::2], sigmas[1::2])  # both calls of a level see the same sigma
    assert (sigmas[0::2].diff() < 0).all() and abs(float(sigmas[0]) - 10.0) < 1e-4
    assert steps[0][2] == (1, 1, SIZE, SIZE)


def test_callback_can_replace_the_latents():
    pipe = make_pipeline(ScoreSdePipeline, "vp-ddim")

    def zero_last(p, i, t, kw):
        return {"latents": torch.zeros_like(kw["latents"])} if i == len(p.scheduler.timesteps) - 1 else {}

    out = pipe(
        num_inference_steps=3,
        output_type="pt",
        callback_on_step_end=zero_last,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    torch.testing.assert_close(out.images, torch.full_like(out.images, 0.5))


def test_denoising_at_the_end_is_an_option_of_the_scheduler():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    pipe = make_pipeline(ScoreSdePipeline, "ve-pc")
    pipe.scheduler = VESDEScheduler.from_config(pipe.scheduler.config, corrector="none")
    denoised = pipe(num_inference_steps=6, generator=gen(), output_type="pt").images
    pipe.scheduler = VESDEScheduler.from_config(pipe.scheduler.config, denoise_final=False)
    noisy = pipe(num_inference_steps=6, generator=gen(), output_type="pt").images
    # Same trajectory; only without denoising does the last reverse-diffusion step add noise (std sigma_min).
    diff = (noisy - denoised).abs()
    assert 0 < float(diff.max()) < 0.05


def test_device_and_dtype_moves():
    pipe = make_pipeline(ScoreSdePipeline, "vp-pc").to(torch.float64)
    assert pipe.unet.dtype == torch.float64
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, SIZE, SIZE)
    assert pipe.to("cpu").device.type == "cpu"


def test_tiny_networks_run_in_every_pipeline():
    torch.manual_seed(0)
    ve = NCSNppModel.from_preset("ncsnpp-tiny", sample_size=8)
    vp_rgb = DDPMppModel.from_preset("ddpmpp-tiny", sample_size=8, in_channels=3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    images = ScoreSdePipeline(ve, VESDEScheduler())(num_inference_steps=2, generator=gen(), output_type="np").images
    assert images.shape == (1, 8, 8, 1)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    pixels = np.random.default_rng(0).uniform(0, 1, (8, 8)).astype(np.float32)
    out = ScoreSdeInpaintPipeline(ve, VESDEScheduler())(
        pixels, mask, num_inference_steps=2, generator=gen(), output_type="np"
    ).images
    np.testing.assert_array_equal(out[0, ~mask, 0], pixels[~mask])
    out = ScoreSdeColorizationPipeline(vp_rgb, DDIMScheduler())(
        pixels, num_inference_steps=2, generator=gen(), output_type="pt"
    ).images
    torch.testing.assert_close(grey_level(out)[0, 0], torch.from_numpy(pixels), rtol=0, atol=1e-6)


def test_a_plain_diffusers_checkpoint_runs_unchanged_and_conditions():
    """UNet2DModel + DDPMScheduler: bit-identical to DDPMPipeline unconditionally; inpaints through its attention."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )
    scheduler = DDPMScheduler()

    def kw() -> dict:
        return dict(batch_size=2, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))

    reference = DDPMPipeline(unet, scheduler)(**kw()).images
    np.testing.assert_array_equal(ScoreSdePipeline(unet, scheduler)(**kw()).images, reference)
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True
    pixels = np.random.default_rng(0).uniform(0, 1, (8, 8)).astype(np.float32)
    out = ScoreSdeInpaintPipeline(unet, scheduler)(pixels, mask, **kw()).images
    np.testing.assert_array_equal(out[:, ~mask, 0], np.broadcast_to(pixels[~mask], (2, 32)))


# ---------------------------------------------------------------------------------------------------------
# Class conditioning
# ---------------------------------------------------------------------------------------------------------
def test_classifier_guidance_with_the_bayes_classifier_samples_one_component():
    """Scale 1 with the exact p_t(k | x) turns the mixture score into component k's score (sign and factor)."""
    means, stds = mixture(1, seed=5)
    model = ExactScoreModel(means, stds, sde_type="ve", sde_kwargs={"sigma_max": 10.0}, prediction_type="score")
    classifier = ExactMixtureClassifier(means, stds)
    pipe = ScoreSdePipeline(model, VESDEScheduler(sigma_max=10.0, corrector="none"), classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    centres = torch.tensor(means).flatten(1)

    def components(images):
        x = (2 * images - 1).flatten(1).double()
        return torch.cdist(x, centres.double()).argmin(1)

    for label in (0, 1):
        out = pipe(
            batch_size=64,
            class_labels=label,
            num_inference_steps=30,
            output_type="pt",
            generator=torch.Generator().manual_seed(label),
        )
        assert (components(out.images) == label).all()
    mixed = pipe(
        class_labels=[0, 1] * 32,
        classifier_scale=0.0,
        num_inference_steps=30,
        output_type="pt",
        generator=torch.Generator().manual_seed(2),
    )
    counts = torch.bincount(components(mixed.images), minlength=2)
    assert counts.min() >= 16  # no guidance: both components (weights 0.5 each)


def test_class_labels_reach_a_label_conditional_unet_in_every_form():
    torch.manual_seed(0)
    unet = NCSNppModel.from_preset("ncsnpp-tiny", sample_size=8, num_class_embeds=3)
    seen = []
    unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    pipe = ScoreSdePipeline(unet, VESDEScheduler(corrector="none"))
    pipe.set_progress_bar_config(disable=True)
    for labels in ([2, 0], torch.tensor([2, 0]), np.array([2, 0])):
        seen.clear()
        out = pipe(class_labels=labels, num_inference_steps=2, output_type="pt")
        assert out.images.shape[0] == 2 and seen == [[2, 0], [2, 0]]
    for labels in (1, torch.tensor(1), [1]):
        seen.clear()
        pipe(batch_size=3, class_labels=labels, num_inference_steps=1)
        assert seen == [[1, 1, 1]]


# ---------------------------------------------------------------------------------------------------------
# Constraints of the inverse problems
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["replacement", "guidance", "guidance+replacement"])
@pytest.mark.parametrize("family", ["ve-pc", "vp-dpm-solver", "subvp-pc"])
def test_inpainting_keeps_the_known_pixels(family, method):
    pipe = make_pipeline(ScoreSdeInpaintPipeline, family)
    image, mask = inpaint_inputs(seed=4)
    keep = np.asarray(mask) == 0
    for variance in ("jacobian", 0.5):
        kw = dict(
            num_inference_steps=STEPS,
            method=method,
            guidance_variance=variance,
            batch_size=3,
            generator=torch.Generator().manual_seed(0),
        )
        pil = pipe(image, mask, **kw).images
        for result in pil:
            np.testing.assert_array_equal(np.asarray(result)[keep], np.asarray(image)[keep])
        arr = pipe(image, mask.convert("RGB"), output_type="np", **kw).images  # an RGB black-and-white mask
        np.testing.assert_array_equal(
            arr[:, keep, 0], np.broadcast_to(np.asarray(image)[keep] / np.float32(255), (3, keep.sum()))
        )
        assert not np.allclose(arr[0, ~keep], arr[1, ~keep])  # the hole is sampled, not copied


def test_inpainting_accepts_every_input_kind_and_a_per_channel_mask():
    pipe = ScoreSdeInpaintPipeline(exact_model("vp", channels=3), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    rgb = data_image(3, seed=0)
    mask = np.zeros((SIZE, SIZE, 3), np.float32)
    mask[:, :, 1] = 1.0  # repaint only the green channel

    def kw():  # a fresh generator with the same seed for every call
        return dict(num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0))

    out = pipe(rgb, mask, **kw()).images[0]
    assert 0 < out[..., 1].min() and out[..., 1].max() < 1
    np.testing.assert_array_equal(out[..., [0, 2]], rgb[..., [0, 2]])
    from_torch = pipe(torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(mask).permute(2, 0, 1), **kw()).images
    np.testing.assert_array_equal(from_torch[0], out)
    from_pil = pipe(
        PIL.Image.fromarray((rgb * 255).round().astype(np.uint8)),
        PIL.Image.fromarray((mask * 255).astype(np.uint8)),
        **kw(),
    ).images[0]
    np.testing.assert_array_equal(from_pil[..., 0], (rgb[..., 0] * 255).round() / np.float32(255))
    soft = mask * 0.7
    thresholded = pipe(rgb, soft, mask_threshold=0.5, **kw()).images[0]
    np.testing.assert_array_equal(thresholded, out)
    # A batch of images with one mask, and several images give the batch size.
    batch = pipe(np.stack([rgb, rgb[::-1]]), mask, **kw()).images
    assert batch.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(batch[1][..., 0], rgb[::-1][..., 0])


@pytest.mark.parametrize("family", ["ve-pc", "vp-ddim", "vp-pc"])
@pytest.mark.parametrize("method", ["replacement", "guidance", "guidance+replacement"])
def test_colorization_keeps_the_grey_level(family, method):
    pipe = make_pipeline(ScoreSdeColorizationPipeline, family)
    grey = grey_image(seed=2)
    kw = dict(num_inference_steps=STEPS, method=method, batch_size=3, generator=torch.Generator().manual_seed(0))
    out = pipe(grey, output_type="pt", **kw).images
    torch.testing.assert_close(grey_level(out), torch.from_numpy(grey).expand(3, 1, SIZE, SIZE), rtol=0, atol=2e-7)
    assert out.min() >= 0 and out.max() <= 1
    assert float(out.std(0).mean()) > 1e-3  # the colours are sampled
    luma = (0.299, 0.587, 0.114)
    out = pipe(grey, output_type="pt", grey_weights=luma, **kw).images
    torch.testing.assert_close(
        grey_level(out, luma), torch.from_numpy(grey).expand(3, 1, SIZE, SIZE), rtol=0, atol=2e-7
    )
    pil_grey = PIL.Image.fromarray((grey * 255).round().astype(np.uint8), "L")
    pil = pipe(pil_grey, **kw).images
    for image in pil:
        assert image.mode == "RGB"
        mean = np.asarray(image, dtype=np.float64).mean(-1)
        assert np.abs(mean - np.asarray(pil_grey)).max() <= 0.5 + 1e-9  # within 8-bit rounding of each channel


def test_decoupled_colour_space_and_grey_preserving_range_fit():
    q = decoupled_colour_basis()
    torch.testing.assert_close(q @ q.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(q[0], torch.full((3,), 3**-0.5, dtype=torch.float64))
    luma = decoupled_colour_basis((0.299, 0.587, 0.114))
    torch.testing.assert_close(luma @ luma.T, torch.eye(3, dtype=torch.float64))
    colours = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.5
    grey = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    fitted = fit_grey_in_range(colours, grey)
    assert fitted.min() >= 0 and fitted.max() <= 1
    torch.testing.assert_close(grey_level(fitted), grey, rtol=0, atol=1e-6)
    inside = torch.full((1, 3, 1, 1), 0.4)
    torch.testing.assert_close(fit_grey_in_range(inside, grey_level(inside)), inside)  # nothing to fix


# ---------------------------------------------------------------------------------------------------------
# Schedulers swapped in, saving and loading
# ---------------------------------------------------------------------------------------------------------
def test_swapping_schedulers_with_from_config():
    pipe = make_pipeline(ScoreSdeInpaintPipeline, "vp-ddpm")
    image, mask = inpaint_inputs()
    kw = dict(num_inference_steps=STEPS, output_type="pt", generator=torch.Generator().manual_seed(0))
    for cls in (VPSDEScheduler, DDIMScheduler, DPMSolverMultistepScheduler, SubVPSDEScheduler, DDPMScheduler):
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        out = pipe(image, mask, **kw).images
        assert torch.isfinite(out).all()
    assert isinstance(pipe.scheduler, DDPMScheduler)
    # The continuous SDE behind a DDPM config: beta_min = N beta_start, and t = k / (N - 1) for timestep k, where
    # the model's marginal is the discrete chain's (sde_diffusers.scheduler_sde).
    view = SchedulerSDE(DDIMScheduler())
    assert view.sde.beta_min == pytest.approx(0.1) and view.sde.beta_max == pytest.approx(20.0)
    t = view.continuous(torch.tensor(0), 2, torch.zeros(2))
    torch.testing.assert_close(t, torch.zeros(2))
    alpha_bar = DDPMScheduler().alphas_cumprod
    mean_coeff, _ = view.marginal_coeffs(view.continuous(torch.tensor(499), 1, torch.zeros(1, dtype=torch.float64)))
    assert float(mean_coeff**2) == pytest.approx(float(alpha_bar[499]), rel=1e-5)


def assert_same_pipeline(loaded, reference):
    assert type(loaded) is type(reference)
    assert type(loaded.unet) is type(reference.unet) and type(loaded.scheduler) is type(reference.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(reference.scheduler.config)
    assert (loaded.classifier is None) == (reference.classifier is None)
    for a, b in zip(loaded.unet.state_dict().values(), reference.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    kw = dict(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="pt")
    ref_kw = dict(kw, generator=torch.Generator().manual_seed(7))
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(call(loaded, **kw).images, call(reference, **ref_kw).images, rtol=0, atol=0)


def saved_pipelines():
    means, stds = mixture(1)
    with_classifier = make_pipeline(ScoreSdePipeline, "ve-pc", classifier=ExactMixtureClassifier(means, stds))
    return {
        "uncond": make_pipeline(ScoreSdePipeline, "ve-pc"),
        "classifier": with_classifier,
        "inpaint": make_pipeline(ScoreSdeInpaintPipeline, "vp-dpm-solver"),
        "colorize": make_pipeline(ScoreSdeColorizationPipeline, "subvp-pc"),
    }


@pytest.mark.parametrize("name", ["uncond", "classifier", "inpaint", "colorize"])
def test_save_and_load_both_ways(name, tmp_path):
    pipe = saved_pipelines()[name]
    pipe.save_pretrained(tmp_path / name)
    index = json.loads((tmp_path / name / "model_index.json").read_text())
    assert index["_class_name"][1] == type(pipe).__name__
    assert (tmp_path / name / f"{index['_class_name'][0]}.py").read_text() == (
        f"from sde_diffusers import {type(pipe).__name__}\n"
    )
    assert_same_pipeline(type(pipe).from_pretrained(tmp_path / name), pipe)
    assert_same_pipeline(DiffusionPipeline.from_pretrained(tmp_path / name, trust_remote_code=True), pipe)
    # A different scheduler swapped in is saved and loaded as well.
    pipe.scheduler = (DDIMScheduler if name == "inpaint" else type(pipe.scheduler)).from_config(
        pipe.scheduler.config, **({} if name == "inpaint" else {"snr": 0.05})
    )
    pipe.save_pretrained(tmp_path / f"{name}-swapped")
    assert_same_pipeline(type(pipe).from_pretrained(tmp_path / f"{name}-swapped"), pipe)


def test_push_to_the_local_hub_and_load_both_ways(local_hub, tmp_path):
    for i, (name, pipe) in enumerate(saved_pipelines().items()):
        repo_id = f"sde-tests/pipeline-{name}"
        pipe.save_pretrained(tmp_path / name, push_to_hub=True, repo_id=repo_id, token=local_hub.token)
        assert_same_pipeline(type(pipe).from_pretrained(repo_id, cache_dir=tmp_path / f"cache-{i}"), pipe)
        trusting = DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True, cache_dir=tmp_path / f"c-{i}")
        assert_same_pipeline(trusting, pipe)


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any model call
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def counted():
    """The three pipelines on a model that counts its calls."""
    pipes = {cls: make_pipeline(cls, "vp-pc") for cls in PIPELINES}
    counter = []
    for pipe in pipes.values():
        pipe.unet.register_forward_pre_hook(lambda *a: counter.append(1))
    return pipes, counter


BAD_CALLS = [
    (ScoreSdePipeline, dict(output_type="latent"), ValueError, "output_type"),
    (ScoreSdePipeline, dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (ScoreSdePipeline, dict(class_labels=1), ValueError, "unconditional"),
    (ScoreSdePipeline, dict(batch_size=3, generator=[torch.Generator()] * 2), ValueError, "generator"),
    (ScoreSdePipeline, dict(generator="seed"), TypeError, "generator"),
    (ScoreSdePipeline, dict(latents=torch.zeros(2, 1, 3, 3)), ValueError, "latents"),
    (ScoreSdePipeline, dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "tensor_inputs"),
    (ScoreSdePipeline, dict(classifier_scale=-1.0), ValueError, "classifier_scale"),
    (ScoreSdePipeline, dict(sampler="rk4"), ValueError, "sampler"),
    (ScoreSdePipeline, dict(sampler_options={"rtol": 0.1}), ValueError, "sampler_options"),
    (ScoreSdePipeline, dict(sampler="adaptive_ode", sampler_options=[0.1]), TypeError, "sampler_options"),
    (
        ScoreSdePipeline,
        dict(sampler="adaptive_ode", callback_on_step_end=lambda *a: {}),
        ValueError,
        "callback",
    ),
    (ScoreSdePipeline, dict(sampler="adaptive_ode", sampler_options={"rtol": -1.0}), ValueError, "rtol"),
    (ScoreSdeInpaintPipeline, dict(sampler="adaptive_sde", method="replacement"), ValueError, "guidance"),
    (ScoreSdeInpaintPipeline, dict(mask_image=np.ones((SIZE, SIZE + 1), bool)), ValueError, "same height"),
    (
        ScoreSdeInpaintPipeline,
        dict(mask_image=np.full((SIZE, SIZE), 0.5, np.float32)),
        ValueError,
        "mask_threshold",
    ),
    (ScoreSdeInpaintPipeline, dict(mask_threshold=1.5), ValueError, "mask_threshold"),
    (ScoreSdeInpaintPipeline, dict(image=np.zeros((SIZE, SIZE, 3), np.float32)), ValueError, "RGB"),
    (
        ScoreSdeInpaintPipeline,
        dict(image=np.zeros((8, 8), np.float32), mask_image=np.ones((8, 8), bool)),
        ValueError,
        "resize",
    ),
    (ScoreSdeInpaintPipeline, dict(image=np.full((SIZE, SIZE), 2.0, np.float32)), ValueError, r"\[0, 1\]"),
    (ScoreSdeInpaintPipeline, dict(image="photo.png"), TypeError, "image"),
    (ScoreSdeInpaintPipeline, dict(image=PIL.Image.new("RGBA", (SIZE, SIZE))), ValueError, "mode"),
    (ScoreSdeInpaintPipeline, dict(method="repaint"), ValueError, "method"),
    (ScoreSdeInpaintPipeline, dict(guidance_variance=0.0), ValueError, "guidance_variance"),
    (
        ScoreSdeInpaintPipeline,
        dict(batch_size=2, mask_image=np.ones((3, SIZE, SIZE, 1), bool)),
        ValueError,
        "mask_image",
    ),
    (
        ScoreSdeColorizationPipeline,
        dict(image=np.zeros((SIZE, SIZE, 3), np.float32)),
        ValueError,
        "grayscale",
    ),
    (ScoreSdeColorizationPipeline, dict(image=PIL.Image.new("RGB", (SIZE, SIZE))), ValueError, "grayscale"),
    (ScoreSdeColorizationPipeline, dict(grey_weights=(1, 0, -1)), ValueError, "grey_weights"),
    (
        ScoreSdeColorizationPipeline,
        dict(image=np.zeros((2, SIZE, SIZE), np.float32), batch_size=3),
        ValueError,
        "image",
    ),
]


@pytest.mark.parametrize(
    "cls,kwargs,error,match", BAD_CALLS, ids=[f"{c.__name__}-{next(iter(k))}-{m}" for c, k, _, m in BAD_CALLS]
)
def test_bad_input_fails_clearly_before_any_work(counted, cls, kwargs, error, match):
    pipes, counter = counted
    pipe = pipes[cls]
    args = []
    if cls is ScoreSdeInpaintPipeline:
        image, mask = inpaint_inputs()
        args = [kwargs.pop("image", image), kwargs.pop("mask_image", mask)]
    elif cls is ScoreSdeColorizationPipeline:
        args = [kwargs.pop("image", grey_image())]
    with pytest.raises(error, match=match):
        pipe(*args, num_inference_steps=kwargs.pop("num_inference_steps", 2), **kwargs)
    assert counter == []


def test_label_errors(counted):
    pipes, counter = counted
    torch.manual_seed(0)
    conditional = ScoreSdePipeline(
        NCSNppModel.from_preset("ncsnpp-tiny", sample_size=8, num_class_embeds=3), VESDEScheduler()
    )
    conditional.unet.register_forward_pre_hook(lambda *a: counter.append(1))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        conditional(class_labels=[0, 3])
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(batch_size=2)
    with pytest.raises(ValueError, match="class_labels"):
        conditional(batch_size=3, class_labels=[0, 1])
    with pytest.raises(TypeError, match="integers"):
        conditional(class_labels=[0.5])
    with pytest.raises(TypeError, match="integers"):
        conditional(class_labels=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        pipes[ScoreSdeInpaintPipeline](*inpaint_inputs(), class_labels=0)
    means, stds = mixture(1)
    guided = make_pipeline(ScoreSdePipeline, "ve-pc", classifier=ExactMixtureClassifier(means, stds))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        guided(class_labels=2)
    assert counter == []


def test_a_scheduler_without_an_sde_is_refused_only_when_conditioning_needs_one():
    pipe = make_pipeline(ScoreSdeInpaintPipeline, "vp-ddpm")
    pipe.scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="no SDE"):
        pipe(*inpaint_inputs(), num_inference_steps=2)
    uncond = make_pipeline(ScoreSdePipeline, "vp-ddpm")
    uncond.scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert uncond(num_inference_steps=2, output_type="pt").images.shape == (1, 1, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def test_cli_sample_inpaint_colorize(tmp_path, capsys, monkeypatch):
    grey_model = tmp_path / "grey"
    make_pipeline(ScoreSdePipeline, "vp-pc").save_pretrained(grey_model)
    colour_model = tmp_path / "colour"
    make_pipeline(ScoreSdeColorizationPipeline, "ve-pc").save_pretrained(colour_model)
    image, mask = inpaint_inputs()
    image.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    common = ["--steps", "3", "--num-images", "3", "--batch-size", "2", "--device", "cpu"]
    assert (
        cli_main(
            [
                "sample",
                str(grey_model),
                "--output-dir",
                str(tmp_path / "s"),
                "--grid",
                "--scheduler",
                "DDIMScheduler",
                *common,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "sample_0000.png",
        "sample_0001.png",
        "sample_0002.png",
        "sample_grid.png",
        "sample_run.json",
    ]
    assert (
        cli_main(
            [
                "inpaint",
                str(grey_model),
                "--image",
                str(tmp_path / "image.png"),
                "--mask",
                str(tmp_path / "mask.png"),
                "--output-dir",
                str(tmp_path / "i"),
                "--method",
                "replacement",
                *common,
            ]
        )
        == 0
    )
    keep = np.asarray(mask) == 0
    for path in sorted((tmp_path / "i").iterdir()):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(path))[keep], np.asarray(image)[keep])
    assert (
        cli_main(
            [
                "colorize",
                str(colour_model),
                "--image",
                str(tmp_path / "image.png"),
                "--output-dir",
                str(tmp_path / "c"),
                "--scheduler-option",
                "snr=0.1",
                *common,
            ]
        )
        == 0
    )
    coloured = [np.asarray(PIL.Image.open(p), dtype=np.float64) for p in sorted((tmp_path / "c").iterdir())]
    assert len(coloured) == 3 and all(np.abs(c.mean(-1) - np.asarray(image)).max() <= 0.5 + 1e-9 for c in coloured)
    colorize_smc = ["colorize", str(colour_model), "--image", str(tmp_path / "image.png"), *common]
    assert (
        cli_main([*colorize_smc, "--output-dir", str(tmp_path / "cs"), "--method", "smc", "--num-particles", "2"]) == 0
    )
    coloured = [np.asarray(PIL.Image.open(p), dtype=np.float64) for p in sorted((tmp_path / "cs").iterdir())]
    assert len(coloured) == 3 and all(np.abs(c.mean(-1) - np.asarray(image)).max() <= 0.5 + 1e-9 for c in coloured)
    # Image i depends on seed + i only, not on the batch size.
    assert (
        cli_main(
            [
                "sample",
                str(grey_model),
                "--output-dir",
                str(tmp_path / "s1"),
                "--scheduler",
                "DDIMScheduler",
                "--steps",
                "3",
                "--num-images",
                "3",
                "--batch-size",
                "1",
            ]
        )
        == 0
    )
    for name in ("sample_0000.png", "sample_0002.png"):
        np.testing.assert_array_equal(
            np.asarray(PIL.Image.open(tmp_path / "s" / name)),
            np.asarray(PIL.Image.open(tmp_path / "s1" / name)),
        )
    monkeypatch.setenv("SDE_DIFFUSERS_TRACEBACK", "1")  # the errors themselves, not their one-line form
    with pytest.raises(SystemExit, match="MODEL_DIR"):
        cli_main(["sample", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="scheduler class"):
        cli_main(["sample", str(grey_model), "--output-dir", str(tmp_path / "x"), "--scheduler", "Nope"])
    assert (
        cli_main(
            [
                "sample",
                str(grey_model),
                "--output-dir",
                str(tmp_path / "a"),
                "--num-images",
                "2",
                "--sampler",
                "adaptive_ode",
                "--sampler-option",
                "rtol=0.001",
                "--sampler-option",
                "atol=0.001",
                "--prefix",
                "ode",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ode_0000.png", "ode_0001.png", "ode_run.json"]
    with pytest.raises(SystemExit, match="guidance"):  # a pipeline's ValueError, as a message
        cli_main(
            [
                "inpaint",
                str(grey_model),
                "--image",
                str(tmp_path / "image.png"),
                "--mask",
                str(tmp_path / "mask.png"),
                "--output-dir",
                str(tmp_path / "x"),
                "--method",
                "replacement",
                "--sampler",
                "adaptive_sde",
            ]
        )
    with pytest.raises(SystemExit, match="--image"):
        cli_main(
            [
                "inpaint",
                str(grey_model),
                "--image",
                str(tmp_path / "none.png"),
                "--mask",
                str(tmp_path / "mask.png"),
                "--output-dir",
                str(tmp_path / "x"),
            ]
        )
    assert "wrote 3 image(s)" in capsys.readouterr().out
