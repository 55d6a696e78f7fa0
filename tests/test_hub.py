"""Hub layout, loading and publishing: `SDEDiffusionPipeline`, `sde_diffusers.hub_utils` and the local test Hub.

The pipeline under test is a tiny stand-in defined here (a diffusers `UNet2DModel`, a diffusers scheduler and
one component class of "ours"), exported on `sde_diffusers` for the module's duration because the shim files
import from there.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ConfigMixin, DDPMPipeline, DDPMScheduler, DiffusionPipeline, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines import pipeline_loading_utils
from huggingface_hub import ModelCard, create_repo, get_token, hf_hub_download, list_repo_files, model_info
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

import sde_diffusers
from sde_diffusers.hub_utils import (
    MissingHubTokenError,
    list_model_card_templates,
    push_pipeline_to_hub,
    render_model_card,
    save_model_card,
)
from sde_diffusers.pipelines.pipeline_utils import COMPONENT_LIBRARY, SDEDiffusionPipeline


class HubTestOffset(ModelMixin, ConfigMixin):
    """A component class of "ours": adds a learned per-channel offset."""

    @register_to_config
    def __init__(self, channels: int = 1):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset.view(1, -1, 1, 1)


class HubTestPipeline(SDEDiffusionPipeline):
    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, offset: HubTestOffset):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, offset=offset)

    @torch.no_grad()
    def __call__(self, batch_size: int = 2, num_inference_steps: int = 3, generator=None) -> torch.Tensor:
        size, channels = self.unet.config.sample_size, self.unet.config.in_channels
        x = torch.randn((batch_size, channels, size, size), generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            x = self.scheduler.step(self.unet(x, t).sample, t, x, generator=generator).prev_sample
        return self.offset(x)


PIPELINE_SHIM = "pipeline_sde_diffusers_hub_test.py"
COMPONENT_SHIM = "offset/sde_diffusers_hub_test_offset.py"
SAVED_FILES = {
    "model_index.json",
    PIPELINE_SHIM,
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "offset/config.json",
    "offset/diffusion_pytorch_model.safetensors",
    COMPONENT_SHIM,
}
CARD_FIELDS = {
    "model_name": "Score SDE on 8x8 digits",
    "repo_id": "sde-tests/digits-ve",
    "pipeline_class": "HubTestPipeline",
    "architecture": "NCSN++ (2 levels, 8 and 16 channels)",
    "sde": "VE SDE, sigma_min=0.01, sigma_max=50",
    "dataset": "sklearn digits (1,797 8x8 images)",
    "training_config": {"learning_rate": 0.0002, "batch_size": 64, "ema_decay": 0.999},
    "steps": 1500,
    "final_loss": 0.0123456789,
    "bits_per_dim": 3.25,
    "sample_grid": "samples.png",
    "license": "apache-2.0",
}


@pytest.fixture(scope="module", autouse=True)
def export_test_classes():
    with pytest.MonkeyPatch.context() as mp:
        for cls in (HubTestOffset, HubTestPipeline):
            mp.setattr(sde_diffusers, cls.__name__, cls, raising=False)
        yield


@pytest.fixture(scope="module")
def pipeline() -> HubTestPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    offset = HubTestOffset(channels=1)
    with torch.no_grad():
        offset.offset.fill_(0.25)  # not the initial value, so a re-initialised component would show
    return HubTestPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20), offset=offset)


@pytest.fixture(scope="module")
def saved(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "tiny-pipeline"
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def no_dynamic_modules(monkeypatch):
    """Make any attempt of Diffusers to run code from a checkpoint fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"Diffusers tried to run checkpoint code: {args} {kwargs}")

    monkeypatch.setattr(pipeline_loading_utils, "get_class_from_dynamic_module", refuse)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}


def assert_same_pipeline(loaded, reference) -> None:
    assert type(loaded) is HubTestPipeline
    assert type(loaded.offset) is HubTestOffset and type(loaded.unet) is UNet2DModel
    for name in ("unet", "offset"):
        expected = getattr(reference, name).state_dict()
        actual = getattr(loaded, name).state_dict()
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[k], expected[k]) for k in expected), name

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert type(loaded.scheduler) is type(reference.scheduler)
    assert public(loaded.scheduler.config) == public(reference.scheduler.config)
    samples = [p(generator=torch.Generator().manual_seed(3)) for p in (loaded, reference)]
    assert torch.equal(samples[0], samples[1])


# --- shim layout -----------------------------------------------------------------------------------------


def test_save_writes_the_shim_layout(saved):
    assert files_in(saved) == SAVED_FILES
    index = json.loads((saved / "model_index.json").read_text())
    assert index.pop("_diffusers_version")
    assert index == {
        "_class_name": ["pipeline_sde_diffusers_hub_test", "HubTestPipeline"],
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "offset": ["sde_diffusers_hub_test_offset", "HubTestOffset"],
    }
    assert (saved / PIPELINE_SHIM).read_text() == "from sde_diffusers import HubTestPipeline\n"
    assert (saved / COMPONENT_SHIM).read_text() == "from sde_diffusers import HubTestOffset\n"


def test_plain_diffusers_refuses_without_trust_remote_code(saved):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved)


def test_plain_diffusers_loads_our_classes_with_trust_remote_code(saved, pipeline):
    loaded = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert_same_pipeline(loaded, pipeline)


def test_our_classes_load_without_running_checkpoint_code(saved, pipeline, no_dynamic_modules):
    with pytest.raises(AssertionError, match="checkpoint code"):  # the guard works on the trusting path
        DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert_same_pipeline(HubTestPipeline.from_pretrained(saved), pipeline)
    # The base class instantiates the class the checkpoint was saved from.
    assert_same_pipeline(SDEDiffusionPipeline.from_pretrained(saved), pipeline)


def test_our_loading_keeps_diffusers_options(saved, pipeline):
    replacement = HubTestOffset(channels=1)
    loaded = HubTestPipeline.from_pretrained(saved, offset=replacement, dtype=torch.float64)
    assert loaded.offset is replacement
    assert loaded.unet.dtype == torch.float64


def test_component_class_from_an_sde_diffusers_submodule(pipeline, tmp_path, no_dynamic_modules):
    # VESDEScheduler's own module does not bind `SchedulerMixin`, the name Diffusers' loader looks up there.
    scheduler = sde_diffusers.VESDEScheduler(num_train_timesteps=12)
    ve = HubTestPipeline(unet=pipeline.unet, scheduler=scheduler, offset=pipeline.offset)
    ve.save_pretrained(tmp_path / "ve")
    module = json.loads((tmp_path / "ve" / "model_index.json").read_text())["scheduler"][0]
    assert (tmp_path / "ve" / "scheduler" / f"{module}.py").read_text() == (
        "from sde_diffusers import VESDEScheduler\n"
    )
    loaded = HubTestPipeline.from_pretrained(tmp_path / "ve")
    assert type(loaded.scheduler) is sde_diffusers.VESDEScheduler
    assert loaded.scheduler.config.num_train_timesteps == 12


def test_load_config_maps_shims_to_our_classes(saved):
    config = HubTestPipeline.load_config(saved)
    assert config["_class_name"] == "HubTestPipeline"
    assert config["offset"] == [COMPONENT_LIBRARY, "HubTestOffset"]
    assert config["unet"] == ["diffusers", "UNet2DModel"]
    # Diffusers' own reader sees the shim entries unchanged.
    assert DiffusionPipeline.load_config(saved)["offset"] == [
        "sde_diffusers_hub_test_offset",
        "HubTestOffset",
    ]


def test_a_shim_with_other_code_is_left_to_trust_remote_code(saved, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    (folder / COMPONENT_SHIM).write_text("import os\nfrom sde_diffusers import HubTestOffset\n")
    assert HubTestPipeline.load_config(folder)["offset"] == ["sde_diffusers_hub_test_offset", "HubTestOffset"]
    with pytest.raises(ValueError, match="trust_remote_code"):
        HubTestPipeline.from_pretrained(folder)


@pytest.mark.parametrize("loader", ["diffusers", "ours"])
def test_resaving_a_loaded_pipeline_keeps_the_layout(saved, tmp_path, loader):
    if loader == "diffusers":
        loaded = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    else:
        loaded = HubTestPipeline.from_pretrained(saved)
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    assert files_in(resaved) == SAVED_FILES
    for name in SAVED_FILES:
        assert (resaved / name).read_bytes() == (saved / name).read_bytes(), name


def test_save_refuses_classes_of_ours_not_exported_from_sde_diffusers(pipeline, tmp_path, monkeypatch):
    class UnexportedOffset(HubTestOffset):
        pass

    UnexportedOffset.__module__ = "sde_diffusers.models.unexported"  # defined in our package, not exported
    unexported = HubTestPipeline(unet=pipeline.unet, scheduler=pipeline.scheduler, offset=UnexportedOffset())
    with pytest.raises(TypeError, match=r"importable as `sde_diffusers\.UnexportedOffset`"):
        unexported.save_pretrained(tmp_path / "never")
    monkeypatch.delattr(sde_diffusers, "HubTestPipeline")
    with pytest.raises(TypeError, match=r"importable as `sde_diffusers\.HubTestPipeline`"):
        pipeline.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_base_class_refuses_a_pipeline_that_is_not_ours(pipeline, tmp_path):
    DDPMPipeline(unet=pipeline.unet, scheduler=pipeline.scheduler).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="does not name a pipeline class of sde-diffusers"):
        SDEDiffusionPipeline.from_pretrained(tmp_path / "ddpm")


# --- Hub -------------------------------------------------------------------------------------------------


# huggingface_hub's own LFS upload passes `data=` to httpx, which warns; nothing of ours to fix.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_push_then_load_from_the_hub_both_ways(saved, pipeline, local_hub, local_hub_server, tmp_path, monkeypatch):
    folder = tmp_path / "upload"
    shutil.copytree(saved, folder)
    card = save_model_card(folder, "score_sde", **CARD_FIELDS)
    commit = push_pipeline_to_hub(folder, "sde-tests/tiny-pipeline", token=local_hub.token)
    repo_id = commit.repo_url.repo_id
    assert repo_id == "sde-tests/tiny-pipeline"
    assert set(list_repo_files(repo_id)) == SAVED_FILES | {"README.md", ".gitattributes"}
    assert model_info(repo_id).sha == commit.oid
    # Weights went through Git-LFS, the JSON and shim files inline: both upload paths ran.
    assert local_hub_server.file_entry(repo_id, "unet/diffusion_pytorch_model.safetensors")["storage"] == "lfs"
    assert local_hub_server.file_entry(repo_id, COMPONENT_SHIM)["storage"] == "regular"
    readme = hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache-card")
    assert Path(readme).read_text() == card.read_text()

    trusting = DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True, cache_dir=tmp_path / "cache-a")
    assert_same_pipeline(trusting, pipeline)

    def refuse(*args, **kwargs):
        raise AssertionError("Diffusers tried to run checkpoint code")

    monkeypatch.setattr(pipeline_loading_utils, "get_class_from_dynamic_module", refuse)
    ours = HubTestPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "cache-b")
    assert_same_pipeline(ours, pipeline)
    assert ours.name_or_path == repo_id
    assert_same_pipeline(SDEDiffusionPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "cache-b"), pipeline)
    assert HubTestPipeline.load_config(repo_id, cache_dir=tmp_path / "cache-c")["_class_name"] == "HubTestPipeline"


def test_save_pretrained_can_push_a_private_repo(pipeline, local_hub, local_hub_server, tmp_path):
    folder = tmp_path / "pushed"
    pipeline.save_pretrained(
        folder, push_to_hub=True, repo_id="sde-tests/private-pipeline", token=local_hub.token, private=True
    )
    repo_id = "sde-tests/private-pipeline"
    assert set(list_repo_files(repo_id, token=local_hub.token)) == SAVED_FILES | {".gitattributes"}
    with pytest.raises(RepositoryNotFoundError):
        model_info(repo_id, token=False)
    loaded = HubTestPipeline.from_pretrained(repo_id, token=local_hub.token, cache_dir=tmp_path / "cache")
    assert_same_pipeline(loaded, pipeline)


def test_push_without_a_token_fails_before_any_upload(saved, pipeline, local_hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token() is None  # no login is saved in the test session's HF_HOME
    writes_before = list(local_hub_server.write_requests())
    with pytest.raises(MissingHubTokenError, match="HF_TOKEN"):
        push_pipeline_to_hub(saved, "sde-tests/no-token")
    with pytest.raises(MissingHubTokenError, match="Nothing was uploaded"):
        pipeline.save_pretrained(tmp_path / "never", push_to_hub=True, repo_id="sde-tests/no-token")
    assert not (tmp_path / "never").exists()
    assert local_hub_server.write_requests() == writes_before
    assert not local_hub_server.repo_exists("sde-tests/no-token")


def test_local_hub_rejects_writes_without_a_valid_token(local_hub):
    for token in (False, "hf_wrong"):
        with pytest.raises(HfHubHTTPError) as info:
            create_repo("sde-tests/anonymous", token=token)
        assert info.value.response.status_code == 401


def test_push_validates_its_arguments(saved, pipeline, tmp_path, local_hub):
    with pytest.raises(ValueError, match="no model_index.json"):
        push_pipeline_to_hub(tmp_path, "sde-tests/empty", token=local_hub.token)
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        push_pipeline_to_hub(saved, "a/b/c", token=local_hub.token)
    with pytest.raises(TypeError, match="`token`"):
        push_pipeline_to_hub(saved, "sde-tests/typed", token=123)
    with pytest.raises(TypeError, match="push_to_hub=True"):
        pipeline.save_pretrained(tmp_path / "x", repo_id="sde-tests/x")
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        pipeline.save_pretrained(tmp_path / "x", push_to_hub=True, repo_id="a/b/c", token=local_hub.token)
    assert not (tmp_path / "x").exists()


# --- model cards -----------------------------------------------------------------------------------------


def test_score_sde_model_card_has_every_field():
    card = render_model_card("score_sde", **CARD_FIELDS)
    metadata = ModelCard(card).data
    assert metadata.library_name == "diffusers"
    assert metadata.license == "apache-2.0"
    assert {"score-sde", "sde-diffusers"} <= set(metadata.tags)
    for text in (
        "# Score SDE on 8x8 digits",
        "NCSN++ (2 levels, 8 and 16 channels)",
        "VE SDE, sigma_min=0.01, sigma_max=50",
        "sklearn digits (1,797 8x8 images)",
        "| 1500 |",
        "| 0.0123457 |",
        "| 3.25 |",
        "![Samples drawn from this model](samples.png)",
        'HubTestPipeline.from_pretrained("sde-tests/digits-ve")',
        'DiffusionPipeline.from_pretrained("sde-tests/digits-ve", trust_remote_code=True)',
        "`apache-2.0` licence",
        "Score-Based Generative Modeling through Stochastic Differential Equations",
    ):
        assert text in card, text
    config_block = card.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(config_block) == CARD_FIELDS["training_config"]
    assert "Soft Diffusion" not in card and "$" not in card


def test_soft_diffusion_model_card_cites_both_papers():
    fields = dict(CARD_FIELDS, corruption="DCT blur (sigma_blur up to 4) + noise (up to 0.5)", bits_per_dim=None)
    del fields["sde"]
    card = render_model_card("soft_diffusion", **fields)
    assert "| Corruption | DCT blur (sigma_blur up to 4) + noise (up to 0.5) |" in card
    assert "| Bits/dim | not measured |" in card
    assert "@article{daras2022soft" in card and "@inproceedings{song2021scorebased" in card
    assert "soft-diffusion" in ModelCard(card).data.tags


def test_model_card_metadata_values_are_quoted():
    card = render_model_card("score_sde", **dict(CARD_FIELDS, license="other: see # notes"))
    assert ModelCard(card).data.license == "other: see # notes"


def test_model_card_rejects_wrong_fields_and_templates():
    assert {"score_sde", "soft_diffusion"} <= set(list_model_card_templates())
    fields = dict(CARD_FIELDS)
    del fields["steps"]
    with pytest.raises(ValueError, match=r"missing: \['steps'\]"):
        render_model_card("score_sde", **fields)
    with pytest.raises(ValueError, match=r"unexpected: \['stepz'\]"):
        render_model_card("score_sde", stepz=1, **CARD_FIELDS)
    for name in ("no_such_card", "../score_sde", "__init__"):
        with pytest.raises(ValueError, match="Unknown model card template"):
            render_model_card(name, **CARD_FIELDS)
