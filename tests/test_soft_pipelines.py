"""Soft Diffusion pipelines: outputs, reproducibility, samplers, inpainting, save/load, errors.

Two networks are used. A tiny random ``UNet2DModel`` (8x8 grayscale) checks the plumbing; ``GaussianX0Model`` is the
exact clean-image estimator ``E[x_0 | x_t]`` for Gaussian data whose DCT coefficients are independent, under the
scheduler's blur + noise corruption. With it the pipeline's samples can be compared with closed forms: the
unconditional distribution and, for inpainting, the exact conditional of the unknown pixels given the known ones.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config

import sde_diffusers
from sde_diffusers.corruption import blur_response, dct2, dct_matrix, idct2
from sde_diffusers.pipelines import ScoreSdePipelineBase
from sde_diffusers.pipelines.pipeline_score_sde import ScoreSdePipelineOutput
from sde_diffusers.pipelines.pipeline_soft_diffusion import (
    SoftDiffusionInpaintPipeline,
    SoftDiffusionPipeline,
    SoftDiffusionPipelineBase,
)
from sde_diffusers.schedulers import SoftDiffusionScheduler

SIZE = 8


# ---------------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------------
def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (enough structure for the schedule fit and the colour prior)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 3, 3, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False) * 2 - 1


@pytest.fixture(scope="module")
def scheduler() -> SoftDiffusionScheduler:
    return SoftDiffusionScheduler.from_data(smooth_images(64), num_train_timesteps=50)


@pytest.fixture(scope="module")
def pipe(scheduler) -> SoftDiffusionPipeline:
    pipe = SoftDiffusionPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inpaint(scheduler) -> SoftDiffusionInpaintPipeline:
    pipe = SoftDiffusionInpaintPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class GaussianX0Model(ModelMixin, ConfigMixin):
    """Exact ``E[x_0 | x_t]`` for ``x_0 = idct2(M + sqrt(v) Z)`` under ``x_t = C_t x_0 + s_t eta``.

    Per DCT frequency ``k`` with blur multiplier ``r_k``: ``E[X_k | Y_k] = M_k + r_k v_k / (r_k^2 v_k + s^2) (Y_k -
    r_k M_k)``. ``attach(scheduler)`` gives it the corruption levels and the timestep scale.
    """

    @register_to_config
    def __init__(self, sample_size: int = SIZE, in_channels: int = 1, pixel_mean: float = -0.3, scale: float = 0.3):
        super().__init__()
        k = torch.arange(sample_size, dtype=torch.float64)
        self.register_buffer("var", (scale / (1 + k[:, None] ** 2 + k[None, :] ** 2))[None].float())
        flat = torch.full((1, sample_size, sample_size), pixel_mean, dtype=torch.float64)
        self.register_buffer("mean", dct2(flat).float())
        self.scheduler = None

    def attach(self, scheduler: SoftDiffusionScheduler) -> GaussianX0Model:
        self.scheduler = scheduler
        return self

    def draw(self, n: int, seed: int) -> torch.Tensor:
        z = torch.randn((n, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return idct2(self.mean.double() + self.var.double().sqrt() * z)

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-space mean (flattened, row-major) and covariance ``K^T diag(v) K`` with ``K = D kron D``."""
        d = dct_matrix(SIZE, torch.float64)
        kron = torch.kron(d, d)
        return idct2(self.mean.double()).reshape(-1), kron.T @ torch.diag(self.var.double().reshape(-1)) @ kron

    def prior(self) -> dict:
        """The exact mean-colour prior: the DC coefficient is ``SIZE`` times the image mean."""
        return {
            "prior_mean": [float(self.mean[0, 0, 0]) / SIZE],
            "prior_cov": [[float(self.var[0, 0, 0]) / SIZE**2]],
        }

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor):
        n = self.scheduler.config.num_train_timesteps
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(sample.shape[0]) / (n - 1)
        sigma, s = self.scheduler.corruption.levels(t)
        r = blur_response(sigma, SIZE)[:, None]
        v, m = self.var.double(), self.mean.double()
        post = m + r * v / (r**2 * v + (s**2)[:, None, None, None]) * (dct2(sample.double()) - r * m)
        return (idct2(post).to(sample.dtype),)


@pytest.fixture(scope="module")
def gaussian() -> tuple[GaussianX0Model, SoftDiffusionScheduler]:
    model = GaussianX0Model()
    sched = SoftDiffusionScheduler(num_train_timesteps=1000, image_size=SIZE, **model.prior())
    return model.attach(sched), sched


def final_sample(pipeline, *args, **kwargs) -> torch.Tensor:
    """The last sample in the network's range, unclamped (through the step callback)."""
    seen = {}

    def keep(pipe, step, timestep, tensors):
        seen["x"] = tensors["latents"]
        return {}

    pipeline(
        *args,
        callback_on_step_end=keep,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="pt",
        **kwargs,
    )
    return seen["x"].double()


# ---------------------------------------------------------------------------------------------------------
# Outputs and reproducibility
# ---------------------------------------------------------------------------------------------------------
def test_output_types_shapes_and_ranges(pipe):
    g = torch.Generator().manual_seed(0)
    pt = pipe(batch_size=3, num_inference_steps=4, generator=g, output_type="pt")
    assert isinstance(pt, ScoreSdePipelineOutput) and pt.nfe == 4
    assert pt.images.shape == (3, 1, SIZE, SIZE) and pt.images.dtype == torch.float32
    assert 0 <= pt.images.min() and pt.images.max() <= 1 and pt.images.std() > 0
    arr = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, SIZE, SIZE, 1) and 0 <= arr.min() <= arr.max() <= 1
    pil = pipe(batch_size=2, num_inference_steps=3).images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (SIZE, SIZE) for im in pil)
    as_tuple = pipe(num_inference_steps=2, output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 1, SIZE, SIZE)


def test_same_seed_same_images_other_seed_other_images(pipe):
    def run(seed):
        return pipe(
            batch_size=2,
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


@pytest.mark.parametrize("sampler", ["momentum", "naive"])
def test_generator_list_makes_each_sample_reproducible(pipe, sampler):
    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(num_inference_steps=5, generator=gens, output_type="pt", sampler=sampler).images

    pair = run([10, 11])
    assert pair.shape[0] == 2  # the batch size comes from the list
    torch.testing.assert_close(pair[1:], run([11]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pair[:1], run([10]), atol=1e-5, rtol=0)


def test_all_samplers_run_differ_and_leave_the_scheduler_alone(pipe):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    outs = {
        s: pipe(num_inference_steps=6, generator=g(), output_type="pt", sampler=s).images
        for s in ("momentum", "naive", "deterministic")
    }
    assert pipe.scheduler.config.sampler == "momentum"
    assert not torch.allclose(outs["momentum"], outs["naive"])
    assert not torch.allclose(outs["momentum"], outs["deterministic"])
    # The configured sampler is the default.
    assert torch.equal(outs["momentum"], pipe(num_inference_steps=6, generator=g(), output_type="pt").images)


def test_deterministic_sampler_depends_only_on_the_start(pipe, scheduler):
    start = scheduler.initial_sample((2, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0))

    def run(sampler, seed):
        return pipe(
            latents=start,
            num_inference_steps=6,
            sampler=sampler,
            output_type="pt",
            generator=torch.Generator().manual_seed(seed),
        ).images

    assert torch.equal(run("deterministic", 1), run("deterministic", 2))
    assert not torch.allclose(run("momentum", 1), run("momentum", 2))


def test_reference_images_start_and_callback(pipe):
    reference = (smooth_images(5, seed=1) + 1) / 2
    calls = []

    def callback(p, step, timestep, tensors):
        calls.append((step, int(timestep)))
        return {"latents": tensors["latents"]}

    out = pipe(
        batch_size=2,
        num_inference_steps=4,
        reference_images=reference,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    assert out.images.shape == (2, 1, SIZE, SIZE)
    assert [c[0] for c in calls] == [0, 1, 2, 3] and calls[0][1] == 49 and calls[-1][1] == 0


# ---------------------------------------------------------------------------------------------------------
# Against closed forms (exact denoiser for Gaussian data)
# ---------------------------------------------------------------------------------------------------------
def test_unconditional_samples_match_the_gaussian_closed_form(gaussian):
    """Momentum sampling with the exact denoiser reproduces each DCT frequency's variance; naive does not.

    The last step returns ``E[x_0 | x_{t=0}]``, whose variance per frequency is ``v r^2 v / (r^2 v + s^2)`` at the
    least corrupted level, so that is the target (it also catches a pipeline feeding the network the wrong timestep
    scale).
    """
    model, sched = gaussian
    pipe = SoftDiffusionPipeline(unet=model, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    sigma0, s0 = sched.corruption.levels(torch.zeros(1, dtype=torch.float64))
    r0 = blur_response(sigma0, SIZE)[0]
    v = model.var.double()[0]
    target = v * r0**2 * v / (r0**2 * v + s0**2)

    def variance_ratio(sampler):
        x = final_sample(
            pipe,
            batch_size=2000,
            num_inference_steps=100,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
        )
        coeffs = dct2(x)[:, 0]
        assert (coeffs.mean(0) - model.mean.double()[0]).abs().max() < 0.05
        return coeffs.var(0) / target

    momentum = variance_ratio("momentum")
    assert 0.95 < momentum.mean() < 1.03 and 0.85 < momentum.min() and momentum.max() < 1.15
    assert variance_ratio("naive").mean() < 0.7


def test_inpainting_moves_towards_the_exact_conditional_mean(gaussian):
    """Left half repainted: the samples' mean is closer to ``E[x_u | x_k = y]`` than the unconditional mean is."""
    model, sched = gaussian
    pipe = SoftDiffusionInpaintPipeline(unet=model, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    mean, cov = model.covariance()
    mask = torch.zeros(SIZE, SIZE)
    mask[:, : SIZE // 2] = 1
    u = mask.reshape(-1).bool()
    k = ~u
    ratios = []
    for seed in (0, 2, 5):
        y = model.draw(1, seed)[0, 0]
        conditional = mean[u] + cov[u][:, k] @ torch.linalg.solve(cov[k][:, k], y.reshape(-1)[k] - mean[k])
        x = final_sample(
            pipe,
            ((y + 1) / 2).float(),
            mask,
            batch_size=2000,
            num_inference_steps=50,
            generator=torch.Generator().manual_seed(0),
        )
        # In the network's range the known pixels carry the [0, 1] -> [-1, 1] rounding; the output is exact.
        torch.testing.assert_close(x.reshape(2000, -1)[:, k], y.reshape(-1)[k].expand(2000, -1), atol=1e-6, rtol=0)
        err = (x.reshape(2000, -1)[:, u].mean(0) - conditional).pow(2).mean().sqrt()
        ratios.append(float(err / (mean[u] - conditional).pow(2).mean().sqrt()))
    assert max(ratios) < 0.6, ratios


# ---------------------------------------------------------------------------------------------------------
# Inpainting plumbing
# ---------------------------------------------------------------------------------------------------------
def half_mask(batch: int | None = None) -> torch.Tensor:
    mask = torch.zeros(1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1  # white = repaint the left half
    return mask if batch is None else mask.expand(batch, 1, SIZE, SIZE)


def test_inpainting_keeps_known_pixels_exactly(inpaint):
    image = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = inpaint(
        image,
        half_mask(2),
        num_inference_steps=5,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    keep = half_mask(2) == 0
    assert torch.equal(out[keep], image[keep])
    assert not torch.allclose(out[~keep], image[~keep])
    # numpy in and out, one image repeated.
    arr = inpaint(
        image[0, 0].numpy(), half_mask()[0].numpy(), batch_size=3, num_inference_steps=3, output_type="np"
    ).images
    assert arr.shape == (3, SIZE, SIZE, 1)
    assert np.array_equal(
        arr[:, :, SIZE // 2 :, 0], np.broadcast_to(image[0, 0, :, SIZE // 2 :].numpy(), (3, SIZE, SIZE // 2))
    )


def test_inpainting_pil_keeps_the_8_bit_values(inpaint):
    pixels = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE) * 3
    mask = PIL.Image.fromarray((half_mask()[0].numpy() * 255).astype(np.uint8))
    out = inpaint(PIL.Image.fromarray(pixels), mask, num_inference_steps=3).images[0]
    assert np.array_equal(np.asarray(out)[:, SIZE // 2 :], pixels[:, SIZE // 2 :])


def test_soft_mask_needs_a_threshold(inpaint):
    image = torch.rand(1, 1, SIZE, SIZE)
    soft = half_mask() * 0.7
    with pytest.raises(ValueError, match="mask_threshold"):
        inpaint(image, soft, num_inference_steps=2)
    out = inpaint(image, soft, mask_threshold=0.5, num_inference_steps=2, output_type="pt").images
    assert torch.equal(out[..., SIZE // 2 :], image[..., SIZE // 2 :])
    with pytest.raises(ValueError, match="mask_threshold"):
        inpaint(image, soft, mask_threshold=1.5, num_inference_steps=2)


# ---------------------------------------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------------------------------------
def test_exported_from_the_package():
    assert sde_diffusers.SoftDiffusionPipeline is SoftDiffusionPipeline
    assert sde_diffusers.SoftDiffusionInpaintPipeline is SoftDiffusionInpaintPipeline


@pytest.mark.parametrize("cls", [SoftDiffusionPipeline, SoftDiffusionInpaintPipeline])
def test_save_and_load_both_ways(cls, scheduler, tmp_path):
    pipe = cls(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "saved")
    ours = cls.from_pretrained(tmp_path / "saved")
    plain = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    args = (torch.rand(1, 1, SIZE, SIZE), half_mask()) if cls is SoftDiffusionInpaintPipeline else ()
    expected = pipe(*args, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    for loaded in (ours, plain):
        assert type(loaded) is cls and type(loaded.scheduler) is SoftDiffusionScheduler
        assert loaded.scheduler.config.prior_mean == scheduler.config.prior_mean
        assert loaded.scheduler.config.blur_sigmas == scheduler.config.blur_sigmas
        loaded.set_progress_bar_config(disable=True)
        got = loaded(*args, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
        torch.testing.assert_close(got.images, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any network call
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def counted(pipe, inpaint):
    calls = []
    hooks = [p.unet.register_forward_hook(lambda *a: calls.append(1)) for p in (pipe, inpaint)]
    yield calls
    for h in hooks:
        h.remove()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"output_type": "latent"}, ValueError, "output_type"),
        ({"num_inference_steps": 51}, ValueError, "num_train_timesteps"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"sampler": "euler"}, ValueError, "sampler"),
        ({"batch_size": 3, "generator": [torch.Generator()] * 2}, ValueError, "generator"),
        ({"batch_size": 2, "latents": torch.zeros(2, 1, 4, 4)}, ValueError, "latents"),
        ({"reference_images": torch.rand(3, 1, 4, 4)}, ValueError, "reference_images"),
        ({"reference_images": torch.rand(3, 1, SIZE, SIZE) * 2 - 1}, ValueError, r"\[0, 1\]"),
        ({"callback_on_step_end": 3}, TypeError, "callback_on_step_end"),
        ({"callback_on_step_end_tensor_inputs": ["x0"]}, ValueError, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments(pipe, counted, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**{"num_inference_steps": 3, **kwargs})
    assert not counted


@pytest.mark.parametrize(
    "image, mask, match",
    [
        (torch.rand(1, 1, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE - 2), "mask_image"),
        (torch.rand(1, 1, SIZE - 2, SIZE - 2), torch.zeros(1, 1, SIZE - 2, SIZE - 2), "image"),
        (torch.rand(1, 3, SIZE, SIZE), half_mask(), "image"),
        (torch.rand(2, 1, SIZE, SIZE), half_mask(3), "masks"),
        (torch.rand(1, 1, SIZE, SIZE) + 1, half_mask(), r"\[0, 1\]"),
        ("image.png", half_mask(), "PIL image"),
    ],
)
def test_bad_inpainting_inputs(inpaint, counted, image, mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        inpaint(image, mask, num_inference_steps=3)
    assert not counted


def test_scheduler_without_a_start_is_refused_before_any_work(counted):
    bare = SoftDiffusionPipeline(
        unet=tiny_unet(), scheduler=SoftDiffusionScheduler(num_train_timesteps=20, image_size=SIZE)
    )
    bare.unet.register_forward_hook(lambda *a: counted.append(1))
    with pytest.raises(ValueError, match="reference_images"):
        bare(num_inference_steps=3)
    assert not counted
    out = bare(num_inference_steps=3, reference_images=(smooth_images(4) + 1) / 2, output_type="pt")
    assert out.images.shape == (1, 1, SIZE, SIZE)


def test_wrong_components_are_refused():
    with pytest.raises(TypeError, match="SoftDiffusionScheduler"):
        SoftDiffusionPipeline(unet=tiny_unet(), scheduler=sde_diffusers.VPSDEScheduler())
    other_size = SoftDiffusionPipeline(unet=tiny_unet(), scheduler=SoftDiffusionScheduler(image_size=16))
    with pytest.raises(ValueError, match="image_size"):
        other_size(num_inference_steps=2)


def test_soft_pipelines_run_the_one_sampling_loop():
    """Soft Diffusion runs the score-SDE pipelines' loop and output conversion, not a copy of them."""
    for name in ("_sample", "_model_output", "_finish", "to_unit_range", "from_unit_range", "check_loop_inputs"):
        assert getattr(SoftDiffusionPipelineBase, name) is getattr(ScoreSdePipelineBase, name), name
