"""Diffusers' own repo layouts in our pipelines: google/ncsnpp-* (ScoreSdeVePipeline) and google/ddpm-* (DDPMPipeline).

The folders are written by Diffusers itself (`ScoreSdeVePipeline(...).save_pretrained`, `DDPMPipeline(...)
.save_pretrained`) with small real `UNet2DModel`s of each layout, then loaded with `ScoreSdePipeline.from_pretrained`
from the folder and from the local test Hub. For the numbers, the UNet is replaced at load time by an oracle with the
exact output of the repo's kind for Gaussian (mixture) data -- the score at ``sigma`` for the NCSN++ layout (what a
`UNet2DModel` with Fourier time embedding returns, since it divides by ``sigma``), ``E[eps | x_k]`` under Diffusers'
`DDPMScheduler.alphas_cumprod` for the DDPM layout -- written here from the closed forms, independently of the
package. Each repo keeps its own data range: [0, 1] for NCSN++ (prior ``sigma_max * N(0, I)``), [-1, 1] for DDPM;
the pipelines read it from the scheduler, so the same [0, 1] data statistics must come out of both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ModelMixin,
    SchedulerMixin,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    UNet2DModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

from sde_diffusers import (
    ExactScoreModel,
    ProbabilityFlowScheduler,
    ScoreSdeColorizationPipeline,
    ScoreSdeInpaintPipeline,
    ScoreSdePipeline,
    VESDEScheduler,
    VPSDEScheduler,
)
from sde_diffusers.evaluation.sampling import draw_samples
from sde_diffusers.hub_utils import push_pipeline_to_hub

SIZE = 8
CHANNELS = 3
# Per-channel means and the std of the data, in [0, 1] (the images users see).
MEAN = (0.55, 0.5, 0.45)
STD = 0.12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread is faster than several on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# Oracle networks
# ---------------------------------------------------------------------------------------------------------
class GaussianMixtureUNet(ModelMixin, ConfigMixin):
    """The exact output of a Diffusers UNet of one layout, for data ``sum_k w_k N(mu_k, s_k^2 I)`` per pixel.

    Args:
        means (`list`): ``(K, channels)`` component means per channel, in the repo's data range.
        stds (`list`): ``(K,)`` component standard deviations, in that range.
        kind (`str`): ``"ncsnpp"`` -- the timestep is ``sigma`` and the output the score of ``p_sigma`` (VE);
            ``"ddpm"`` -- the timestep is the DDPM index ``k`` (fractions are floored) and the output
            ``E[eps | x_k]`` under `DDPMScheduler`'s ``alphas_cumprod``.
    """

    @register_to_config
    def __init__(self, means: list, stds: list, kind: str, sample_size: int = SIZE, in_channels: int = CHANNELS):
        super().__init__()
        self.means = torch.tensor(means, dtype=torch.float64)  # (K, C)
        self.stds = torch.tensor(stds, dtype=torch.float64)  # (K,)
        self.alphas_cumprod = DDPMScheduler().alphas_cumprod.to(torch.float64)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def _marginal(self, timestep: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient and noise std of ``x_t = m x_0 + s eps``, each ``(batch,)``."""
        timestep = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(batch)
        if self.config.kind == "ncsnpp":
            return torch.ones_like(timestep), timestep
        abar = self.alphas_cumprod[timestep.floor().long().clamp(0, len(self.alphas_cumprod) - 1)]
        return abar.sqrt(), (1 - abar).sqrt()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True):
        x = sample.double()
        m, s = self._marginal(timestep, x.shape[0])
        m, s = m.view(-1, 1, 1, 1, 1), s.view(-1, 1, 1, 1, 1)
        mu = self.means.view(1, -1, x.shape[1], 1, 1) * m  # (B, K, C, 1, 1)
        var = self.stds.view(1, -1, 1, 1, 1) ** 2 * m**2 + s**2
        diff = x[:, None] - mu
        log_comp = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).flatten(2).sum(-1)
        resp = torch.softmax(log_comp, dim=1).view(*log_comp.shape, 1, 1, 1)
        score = -(resp * diff / var).sum(1)
        out = score if self.config.kind == "ncsnpp" else -s[:, 0] * score
        out = out.to(sample.dtype) + 0 * self.dummy
        return UNet2DOutput(sample=out) if return_dict else (out,)


def to_range(values, layout: str) -> list:
    """Values in [0, 1] in the layout's data range ([0, 1] for NCSN++, [-1, 1] for DDPM)."""
    return (
        np.asarray(values, dtype=np.float64) * (1 if layout == "ncsnpp" else 2) - (0 if layout == "ncsnpp" else 1)
    ).tolist()


def gaussian_oracle(layout: str, means=MEAN, std: float = STD) -> GaussianMixtureUNet:
    scale = 1 if layout == "ncsnpp" else 2
    return GaussianMixtureUNet([to_range(means, layout)], [std * scale], kind=layout)


def two_mode_oracle(layout: str) -> GaussianMixtureUNet:
    """Flat images of level 0.25 or 0.75 (in [0, 1]), std 0.05, equal weights."""
    scale = 1 if layout == "ncsnpp" else 2
    means = [to_range([level] * CHANNELS, layout) for level in (0.25, 0.75)]
    return GaussianMixtureUNet(means, [0.05 * scale] * 2, kind=layout)


# ---------------------------------------------------------------------------------------------------------
# Folders written by Diffusers
# ---------------------------------------------------------------------------------------------------------
def ncsnpp_unet() -> UNet2DModel:
    """A two-level UNet2DModel of the google/ncsnpp-* structure (skip blocks, attention, Fourier time embedding)."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        time_embedding_type="fourier",
        flip_sin_to_cos=True,
        freq_shift=1,
        mid_block_scale_factor=2**-0.5,
        norm_eps=1e-6,
    )


def ddpm_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("diffusers-layouts")
    ScoreSdeVePipeline(unet=ncsnpp_unet(), scheduler=ScoreSdeVeScheduler(sigma_max=348.0, snr=0.16)).save_pretrained(
        root / "ncsnpp"
    )
    DDPMPipeline(unet=ddpm_unet(), scheduler=DDPMScheduler()).save_pretrained(root / "ddpm")
    return {"ncsnpp": str(root / "ncsnpp"), "ddpm": str(root / "ddpm")}


@pytest.fixture(scope="module")
def hub_repos(folders, local_hub) -> dict[str, str]:
    repos = {}
    for layout, folder in folders.items():
        repo_id = f"google-layouts/{layout}-tiny"
        push_pipeline_to_hub(folder, repo_id, token=local_hub.token)
        repos[layout] = repo_id
    return repos


def load(cls, source: str, **components):
    pipe = cls.from_pretrained(source, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Schedulers swapped in with `from_config`, by layout: what the repo ships comes first.
SWAPS = {
    "ncsnpp": {
        "shipped": None,
        "VESDEScheduler": lambda config: VESDEScheduler.from_config(config),
        "ProbabilityFlowScheduler": lambda config: ProbabilityFlowScheduler.from_config(config),
    },
    "ddpm": {
        "shipped": None,
        "VPSDEScheduler": lambda config: VPSDEScheduler.from_config(config),
        "ProbabilityFlowScheduler": lambda config: ProbabilityFlowScheduler.from_config(config),
        "DDIMScheduler": lambda config: DDIMScheduler.from_config(config),
    },
}
CASES = [(layout, name) for layout, swaps in SWAPS.items() for name in swaps]
# Diffusers' ancestral DDPM sampler loses variance on coarse grids (11 % of the std at 100 steps here), so it runs its
# full 1000 steps; everything else is within a few per cent at these step counts.
STEPS = {"ncsnpp": 200, "ddpm": 100}
SHIPPED_STEPS = {"ncsnpp": 200, "ddpm": 1000}


def assert_gaussian_images(images: torch.Tensor, means=MEAN, std: float = STD, std_rtol: float = 0.1) -> None:
    """Per-channel means within 0.01 and the std within ``std_rtol`` of the closed form (images in [0, 1])."""
    assert images.min() >= 0 and images.max() <= 1
    per_channel = images.double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel, torch.tensor(means, dtype=torch.float64), atol=0.01, rtol=0)
    spread = (images.double() - per_channel.view(1, -1, 1, 1)).std()
    assert abs(spread / std - 1) < std_rtol, float(spread)


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
def test_the_folders_load_with_their_own_components(folders, layout):
    pipe = load(ScoreSdePipeline, folders[layout])
    assert type(pipe.unet) is UNet2DModel
    assert type(pipe.scheduler) is (ScoreSdeVeScheduler if layout == "ncsnpp" else DDPMScheduler)
    assert pipe.data_range == ((0.0, 1.0) if layout == "ncsnpp" else (-1.0, 1.0))
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, CHANNELS, SIZE, SIZE) and torch.isfinite(out.images).all()
    assert out.nfe == (6 if layout == "ncsnpp" else 3)  # ScoreSdeVeScheduler: one corrector + one predictor call
    assert type(pipe.scheduler) is (ScoreSdeVeScheduler if layout == "ncsnpp" else DDPMScheduler)  # left as shipped


@pytest.mark.parametrize("scheduler", ["shipped", "DDIMScheduler"])
def test_the_ddpm_layout_samples_exactly_like_diffusers_own_pipelines(folders, scheduler):
    """Same folder, weights, scheduler and seed: ScoreSdePipeline's loop gives Diffusers' DDPM / DDIM images."""
    ours = load(ScoreSdePipeline, folders["ddpm"])
    if scheduler == "shipped":
        theirs = DDPMPipeline(unet=ours.unet, scheduler=ours.scheduler)
    else:
        ours.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
        theirs = DDIMPipeline(unet=ours.unet, scheduler=ours.scheduler)
    theirs.set_progress_bar_config(disable=True)
    kwargs = {"batch_size": 2, "num_inference_steps": 5, "output_type": "np"}
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Unconditional sampling against the closed form, every scheduler, folder and Hub
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, swap", CASES)
def test_samples_match_the_closed_form_with_every_scheduler(folders, layout, swap):
    pipe = load(ScoreSdePipeline, folders[layout], unet=gaussian_oracle(layout))
    if SWAPS[layout][swap] is not None:
        pipe.scheduler = SWAPS[layout][swap](pipe.scheduler.config)
    steps = SHIPPED_STEPS[layout] if swap == "shipped" else STEPS[layout]
    images = pipe(
        batch_size=32, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert_gaussian_images(images)


@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
def test_adaptive_ode_from_the_hub_matches_the_closed_form(hub_repos, layout):
    pipe = load(ScoreSdePipeline, hub_repos[layout], unet=gaussian_oracle(layout))
    out = pipe(
        batch_size=32,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
        sampler="adaptive_ode",
        sampler_options={"rtol": 1e-4, "atol": 1e-4},
    )
    assert_gaussian_images(out.images, std_rtol=0.15)
    assert out.nfe > 0


@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
def test_shipped_scheduler_from_the_hub_matches_the_closed_form(hub_repos, layout):
    pipe = load(ScoreSdePipeline, hub_repos[layout], unet=gaussian_oracle(layout))
    images = pipe(
        batch_size=32,
        num_inference_steps=SHIPPED_STEPS[layout],
        generator=torch.Generator().manual_seed(2),
        output_type="pt",
    ).images
    assert_gaussian_images(images)


def test_diffusers_own_pipeline_agrees(folders):
    """Diffusers' ScoreSdeVePipeline with the same oracle and scheduler: the same statistics, in [0, 1]."""
    ours = load(ScoreSdePipeline, folders["ncsnpp"], unet=gaussian_oracle("ncsnpp"))
    theirs = ScoreSdeVePipeline(unet=ours.unet, scheduler=ours.scheduler)
    theirs.set_progress_bar_config(disable=True)
    images = theirs(
        batch_size=32, num_inference_steps=200, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert_gaussian_images(torch.from_numpy(images.images).permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------------------
# Inverse problems in each repo's data range
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
@pytest.mark.parametrize("method", ["replacement", "guidance"])
def test_inpainting_picks_the_mode_of_the_observation(folders, layout, method):
    """Two flat modes (0.25 and 0.75): the left half observed at 0.75 makes the right half 0.75 as well.

    A pipeline that put the observation in the wrong range would see 0.5 or 0.875 in the network's units and fill
    in the other mode or a mixture of both.
    """
    pipe = load(ScoreSdeInpaintPipeline, folders[layout], unet=two_mode_oracle(layout))
    image = np.full((SIZE, SIZE, CHANNELS), 0.75, np.float32) + np.random.default_rng(0).normal(
        0, 0.05, (SIZE, SIZE, CHANNELS)
    ).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, SIZE // 2 :] = 1
    out = pipe(
        image.clip(0, 1),
        mask,
        batch_size=16,
        num_inference_steps=STEPS[layout],
        method=method,
        guidance_variance=(0.05 * (1 if layout == "ncsnpp" else 2)) ** 2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    repainted = out[..., SIZE // 2 :]
    assert abs(float(repainted.mean()) - 0.75) < 0.02
    assert abs(float(repainted.std()) / 0.05 - 1) < 0.2
    torch.testing.assert_close(
        out[..., : SIZE // 2],
        torch.from_numpy(image.clip(0, 1)).permute(2, 0, 1)[..., : SIZE // 2].expand(16, -1, -1, -1),
    )


@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
def test_colorization_recovers_the_colour(folders, layout):
    """Isotropic Gaussian colours: given the exact mean grey, the posterior colour mean is the data mean.

    In the wrong range the chroma of the samples would be scaled by 2 or 1/2 around the grey level.
    """
    means = (0.5, 0.3, 0.1)
    pipe = load(ScoreSdeColorizationPipeline, folders[layout], unet=gaussian_oracle(layout, means=means, std=0.03))
    grey = np.full((SIZE, SIZE), float(np.mean(means)), np.float32)
    images = pipe(
        grey,
        batch_size=16,
        num_inference_steps=STEPS[layout],
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    per_channel = images.double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel, torch.tensor(means, dtype=torch.float64), atol=0.015, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Likelihood in each repo's data range
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ncsnpp", "ddpm"])
def test_log_likelihood_in_the_repo_range(folders, layout):
    """``pipe.log_likelihood`` takes [0, 1] images and returns the density of the network's data (closed form; exact
    divergence, so only the ODE solver's error remains)."""
    pipe = load(ScoreSdePipeline, folders[layout], unet=gaussian_oracle(layout))
    gen = torch.Generator().manual_seed(3)
    x01 = (torch.tensor(MEAN).view(1, -1, 1, 1) + STD * torch.randn(2, CHANNELS, SIZE, SIZE, generator=gen)).clamp(
        0, 1
    )
    out = pipe.log_likelihood(x01, trace="exact")
    scale = 1 if layout == "ncsnpp" else 2
    x = x01 * scale - (scale - 1)
    mean = torch.tensor(to_range(MEAN, layout)).view(1, -1, 1, 1)
    exact = torch.distributions.Normal(mean, STD * scale).log_prob(x.double()).flatten(1).sum(1)
    # In the other range the density would differ by D log 2 = 133 nats.
    torch.testing.assert_close(out.log_likelihood.double(), exact, rtol=0, atol=0.1)


# ---------------------------------------------------------------------------------------------------------
# Schedulers without `step`
# ---------------------------------------------------------------------------------------------------------
def test_score_sde_vp_scheduler_is_converted_too():
    """Diffusers' (deprecated) ScoreSdeVpScheduler: Euler-Maruyama on the continuous VP SDE of its config."""
    means = torch.full((1, CHANNELS, 4, 4), 0.1).tolist()  # [-1, 1] data, std 0.2
    model = ExactScoreModel(means, 0.2, sde_type="vp", sde_kwargs={"N": 2000}, prediction_type="epsilon")
    pipe = ScoreSdePipeline(model, ScoreSdeVpScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=64, num_inference_steps=200, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.nfe == 200 and isinstance(pipe.scheduler, ScoreSdeVpScheduler)
    assert pipe.sampling_scheduler.config.predictor == "euler_maruyama"
    assert pipe.sampling_scheduler.sde.beta_max == pytest.approx(20.0)
    assert_gaussian_images(out.images, means=(0.55,) * CHANNELS, std=0.1)


def test_a_scheduler_without_step_and_no_equivalent_is_refused_before_any_work():
    class StepFree(SchedulerMixin, ConfigMixin):
        @register_to_config
        def __init__(self, num_train_timesteps: int = 10):
            self.timesteps = torch.arange(num_train_timesteps)

        def set_timesteps(self, n, device=None):
            self.timesteps = torch.arange(n)

    pipe = ScoreSdePipeline(gaussian_oracle("ddpm"), StepFree())
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="no `step`"):
        pipe(num_inference_steps=2)
    assert not calls


@pytest.mark.parametrize("sampler, budget", [("pc", {"nfe": 200}), ("ode_adaptive", {"tolerance": 1e-4})])
def test_evaluation_samplers_keep_the_repo_range(folders, sampler, budget):
    """`sde_diffusers.evaluation.draw_samples` on the NCSN++ layout returns [0, 1] images of the data's statistics."""
    pipe = load(ScoreSdePipeline, folders["ncsnpp"], unet=gaussian_oracle("ncsnpp"))
    out = draw_samples(pipe, sampler, 32, batch_size=32, seed=0, **budget)
    assert_gaussian_images(out.images, std_rtol=0.15)
