"""The command line turns a user's mistake into one line, ``error: ...``, and exit status 2 (no traceback).

Each case is what a new user might type; bugs (any other exception) still show their traceback, and
``SDE_DIFFUSERS_TRACEBACK=1`` shows it for user errors too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sde_diffusers
from sde_diffusers.cli import main
from sde_diffusers.models import from_preset
from sde_diffusers.pipelines import ScoreSdePipeline
from sde_diffusers.schedulers import VPSDEScheduler


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)
    monkeypatch.delenv("SDE_DIFFUSERS_TRACEBACK", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "vp"
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)
        ScoreSdePipeline(unet=from_preset("ddpmpp-tiny", sample_size=8), scheduler=VPSDEScheduler()).save_pretrained(
            folder
        )
    return folder


@pytest.fixture(scope="module")
def truncated_model(model_dir, tmp_path_factory) -> Path:
    """A copy of the model whose safetensors file lost its second half (an interrupted download)."""
    import shutil

    folder = tmp_path_factory.mktemp("cli") / "truncated"
    shutil.copytree(model_dir, folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


def refused(argv: list[str], pattern: str, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    # one prefix, whether or not the raised message carried its own "error:"
    assert not captured.err[len("error: ") :].lstrip().lower().startswith((":", "error")), captured.err
    assert pattern in captured.err, captured.err
    return captured.err


def test_likelihood_on_an_empty_folder(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    refused(["likelihood", str(model_dir), "--data", str(tmp_path / "empty")], "no images (.png", capsys)
    refused(["likelihood", str(model_dir), "--data", str(tmp_path / "none")], "or a folder of images", capsys)


def test_a_truncated_safetensors_file(truncated_model, tmp_path, capsys):
    out = tmp_path / "out"
    refused(["sample", str(truncated_model), "--output-dir", str(out)], "Unable to load weights", capsys)
    refused(["likelihood", str(truncated_model), "--data", "digits"], "Unable to load weights", capsys)
    argv = ["evaluate", str(truncated_model), "--data", "digits", "--sampler", "pc"]
    refused(argv, "Unable to load weights", capsys)
    assert not out.exists() or not any(out.iterdir())


def test_sample_mistakes(model_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    refused(
        ["sample", str(tmp_path / "missing"), "--output-dir", out], "cannot read a pipeline from MODEL_DIR", capsys
    )
    refused(
        ["sample", str(model_dir), "--output-dir", out, "--seed", "-1"], "`--seed` must be an integer >= 0", capsys
    )
    refused(
        ["sample", str(model_dir), "--output-dir", out, "--num-images", "3", "--class-labels", "1", "2"],
        "--class-labels needs 1 value or one per image (3), got 2",
        capsys,
    )
    refused(
        ["sample", str(model_dir), "--output-dir", out, "--sampler-option", "rtol=0.1"], "--sampler-option", capsys
    )
    (tmp_path / "file").write_text("x")
    refused(["sample", str(model_dir), "--output-dir", str(tmp_path / "file")], "is not a folder", capsys)
    refused(["sample", str(model_dir), "--output-dir", out, "--threads", "0"], "`--threads` must be", capsys)


def test_evaluate_and_likelihood_mistakes(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    evaluate = [
        "evaluate",
        str(model_dir),
        "--data",
        "digits",
        "--sampler",
        "ancestral",
        "--nfe",
        "2",
        "--no-progress",
    ]
    refused([*evaluate, "--out", str(tmp_path)], "is a folder, expected a file path", capsys)
    refused([*evaluate, "--samples-dir", str(tmp_path / "file")], "exists and is not a folder", capsys)
    refused([*evaluate, "--seed", "-3"], "`--seed` must be an integer >= 0", capsys)
    likelihood = ["likelihood", str(model_dir), "--data", "digits", "--no-progress"]
    refused([*likelihood, "--num-levels", "1"], "`--num-levels` must be an integer >= 2", capsys)
    refused([*likelihood, "--rtol", "0"], "`--rtol` must lie in (0.0, inf)", capsys)
    refused([*likelihood, "--data", "mnist"], "but the model takes 8x8", capsys)
    refused([*likelihood, "--output", str(tmp_path)], "is a folder, expected a file path", capsys)
    bare = tmp_path / "bare"
    ScoreSdePipeline.from_pretrained(model_dir).unet.save_pretrained(bare)
    refused(["likelihood", str(bare), "--data", "digits"], "has no scheduler config: pass --sde", capsys)


def test_bugs_keep_their_traceback_and_the_switch_shows_it_for_user_errors(model_dir, tmp_path, monkeypatch):
    from sde_diffusers.commands import likelihood

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(likelihood, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["likelihood", str(model_dir), "--data", "digits"])
    monkeypatch.undo()
    monkeypatch.setenv("SDE_DIFFUSERS_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="no images"):
        (tmp_path / "empty").mkdir()
        main(["likelihood", str(model_dir), "--data", str(tmp_path / "empty")])


def test_the_installed_command_prints_one_line_and_exits_with_2(truncated_model, tmp_path):
    # As a new user runs it: a fresh interpreter, the real entry point, stderr as the terminal shows it.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SDE_DIFFUSERS_TRACEBACK", None)
    run = subprocess.run(
        [sys.executable, "-m", "sde_diffusers.cli", "sample", str(truncated_model), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: Unable to load weights"), run.stderr
    assert "Traceback" not in run.stderr and not np.any([p.suffix == ".png" for p in tmp_path.iterdir()])
