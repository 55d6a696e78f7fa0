"""Sampling, evaluation and likelihood split across processes: the same results for any number of processes.

Two CPU processes (``torchrun``, gloo) run ``sample``, ``evaluate`` and ``likelihood`` once (one launch, so the
process start-up is paid once); their files and numbers are compared with one process run here with another batch
size. Resuming is tested with another number of processes and after a SIGKILL; a folder holding another run is
refused without touching its shards. The models are tiny and untrained (the numbers are not about quality).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import sde_diffusers
from sde_diffusers.cli import main
from sde_diffusers.distributed import (
    Processes,
    ProcessFailed,
    RunMismatchError,
    ShardStore,
    item_generators,
    item_seed,
    run_blocks,
    split_blocks,
)
from sde_diffusers.evaluation.sampling import draw_samples
from sde_diffusers.models import from_preset
from sde_diffusers.pipelines import ScoreSdePipeline
from sde_diffusers.schedulers import VESDEScheduler, VPSDEScheduler

FAST_EVAL = ["--bpd-rtol", "1e-2", "--bpd-atol", "1e-2", "--kid-subsets", "5", "--no-progress", "--allow-small-sample"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _exported_pipeline(monkeypatch):
    # The saved shim imports `sde_diffusers.ScoreSdePipeline`; make sure it resolves whatever the export state.
    monkeypatch.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)
        unet = from_preset("ddpmpp-tiny", sample_size=8, init_scale=1.0)
        ScoreSdePipeline(unet=unet, scheduler=VPSDEScheduler()).save_pretrained(root / "vp")
        unet = from_preset("ncsnpp-tiny", sample_size=8, init_scale=1.0)
        scheduler = VESDEScheduler(sigma_max=5.0, corrector="langevin", langevin_per_sample=True)
        ScoreSdePipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "ve")
    return {"vp": str(root / "vp"), "ve": str(root / "ve")}


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SDE_DIFFUSERS_TRACEBACK"):
        env.pop(key, None)
    return env


def run_bounded(cmd: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole session (torchrun's workers too)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
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
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time (ns): proof that nothing was rewritten."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def sample_args(model: str, out: Path, *extra: str, n: int = 5, steps: int = 4) -> list[str]:
    return [
        "sample",
        model,
        "--output-dir",
        str(out),
        "--num-images",
        str(n),
        "--steps",
        str(steps),
        "--no-progress",
        *extra,
    ]


def evaluate_args(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        model,
        "--data",
        "digits",
        "--sampler",
        "pc",
        "--nfe",
        "4",
        "--num-samples",
        "11",
        "--bpd-images",
        "2",
        "--out",
        str(out),
        *FAST_EVAL,
        *extra,
    ]


def likelihood_args(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "likelihood",
        model,
        "--data",
        "digits",
        "--num-images",
        "2",
        "--rtol",
        "1e-2",
        "--atol",
        "1e-2",
        "--no-progress",
        "--output",
        str(out),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------------
# Seeds, blocks, the shard store, error agreement (one process)
# ---------------------------------------------------------------------------------------------------------
def test_item_seeds_are_per_item_and_runs_with_nearby_seeds_share_nothing():
    assert item_seed(0, 5) == item_seed(0, 5) and 0 <= item_seed(0, 5) < 2**63
    seeds = {item_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000  # with seed + i, the runs seeded 0, 1, 2 would share 1,997 of these
    a = torch.randn(4, generator=item_generators(7, [3])[0])
    b = torch.randn(4, generator=item_generators(7, range(5))[3])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`seed` must be an integer >= 0"):
        item_seed(-1, 0)
    assert split_blocks(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert split_blocks(3, 8) == [range(0, 3)]


def test_shard_store_resumes_and_refuses_other_settings_without_touching_shards(tmp_path):
    blocks = split_blocks(10, 4)
    store = ShardStore(tmp_path / "run", {"seed": 0, "steps": 4})
    assert store.open(blocks) == set()
    store.write(blocks[1], {"x": np.arange(4)})
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary files left
    again = ShardStore(tmp_path / "run", {"steps": 4, "seed": 0})
    assert again.open(blocks) == {1} and np.array_equal(again.read(blocks[1])["x"], np.arange(4))
    before = snapshot(tmp_path / "run")
    with pytest.raises(RunMismatchError, match=r"other settings \(steps: 4 there, 5 now\).*left untouched"):
        ShardStore(tmp_path / "run", {"seed": 0, "steps": 5}).open(blocks)
    assert snapshot(tmp_path / "run") == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ShardStore(tmp_path / "file", {}).open(blocks)


def test_one_process_runs_blocks_and_reports_failures():
    processes = Processes("cpu")
    assert processes.num_processes == 1 and processes.is_main_process
    seen = []
    out = run_blocks(processes, split_blocks(5, 2), lambda b: list(b), skip={1}, on_result=lambda k, r: seen.append(k))
    assert out == {0: [0, 1], 2: [4]} and seen == [0, 2]
    with pytest.raises(ValueError, match="bad block"):
        run_blocks(processes, split_blocks(5, 2), lambda b: (_ for _ in ()).throw(ValueError("bad block")))
    with pytest.raises(ValueError, match="bad file"), processes.agree():
        raise ValueError("bad file")
    failed = ProcessFailed(1, "no such folder", user_error=True)
    assert str(failed) == "process 1: no such folder" and failed.user_error


def test_batch_size_changes_only_rounding_and_batch_invariant_is_exact(models):
    pipe = ScoreSdePipeline.from_pretrained(models["ve"])
    for sampler, budget in (("pc", {"nfe": 6}), ("adaptive_sde", {"tolerance": 0.3})):
        exact = [
            draw_samples(pipe, sampler, 7, batch_size=b, seed=3, batch_invariant=True, **budget).images for b in (7, 3)
        ]
        assert torch.equal(exact[0], exact[1]), sampler
        # Batched: sample i still has the random numbers of (seed, i); only the rounding of batched network calls
        # differs, which moves a pixel by at most one 8-bit level now and then. (With one generator per batch,
        # as before, whole images differed.)
        batched = [draw_samples(pipe, sampler, 7, batch_size=b, seed=3, **budget).images for b in (7, 3)]
        assert (batched[0] - batched[1]).abs().max() <= 1 / 255 + 1e-6, sampler
        assert (batched[0] != batched[1]).float().mean() < 0.01, sampler
        other_seed = draw_samples(pipe, sampler, 7, batch_size=7, seed=4, **budget).images
        assert (other_seed - batched[0]).abs().mean() > 0.05, sampler


# ---------------------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo) against one
# ---------------------------------------------------------------------------------------------------------
DRIVER = """
import json, sys
from sde_diffusers.cli import main

for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


@pytest.fixture(scope="module")
def two_processes(models, tmp_path_factory):
    """One ``torchrun --nproc_per_node 2`` launch running sample, evaluate and likelihood in turn."""
    root = tmp_path_factory.mktemp("two")
    (root / "driver.py").write_text(DRIVER)
    commands = [
        sample_args(models["vp"], root / "png", "--batch-size", "2", "--batch-invariant"),
        evaluate_args(
            models["ve"],
            root / "eval.json",
            "--batch-size",
            "4",
            "--bpd-batch-size",
            "2",
            "--batch-invariant",
            "--samples-dir",
            str(root / "shards"),
        ),
        likelihood_args(models["vp"], root / "bpd.json", "--batch-size", "1", "--shards-dir", str(root / "bpd")),
    ]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = run_bounded([*launch, str(root / "driver.py"), json.dumps(commands)], timeout=600, cwd=root)
    assert run.returncode == 0, run.stderr[-4000:]
    return root, run


def test_two_processes_write_the_png_bytes_of_one_process_with_another_batch_size(two_processes, models, tmp_path):
    root, run = two_processes
    assert "wrote 5 image(s)" in run.stdout and run.stdout.count("wrote 5 image(s)") == 1  # the main process only
    assert main(sample_args(models["vp"], tmp_path / "one", "--batch-size", "5", "--batch-invariant")) == 0
    names = [f"sample_{i:04d}.png" for i in range(5)]
    for name in names:  # 5 images, 2 processes, blocks of 2: the second process drew one block, the first two
        assert (root / "png" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # image 3 on its own, from the pipeline, with the generator of (seed 0, index 3)
    pipe = ScoreSdePipeline.from_pretrained(models["vp"])
    alone = pipe(num_inference_steps=4, generator=[torch.Generator().manual_seed(item_seed(0, 3))]).images[0]
    assert np.array_equal(np.asarray(alone), np.asarray(PIL.Image.open(root / "png" / "sample_0003.png")))


def test_two_processes_give_the_metrics_of_one_process_with_another_batch_size(two_processes, models, tmp_path):
    root, _ = two_processes
    two = json.loads((root / "eval.json").read_text())
    assert two["num_processes"] == 2 and two["num_samples"] == 11 and two["seeds"]["base"] == 0
    assert two["timing"]["wall_time_s"] > 0 and two["bits_per_dim"]["num_processes"] == 2
    assert sorted(p.name for p in (root / "shards").glob("*.npz")) == [
        "samples_00000000-00000004.npz",
        "samples_00000004-00000008.npz",
        "samples_00000008-00000011.npz",
    ]
    args = ["--batch-size", "11", "--bpd-batch-size", "3", "--batch-invariant"]
    assert main(evaluate_args(models["ve"], tmp_path / "one.json", *args)) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["num_processes"] == 1
    assert two["metrics"] == one["metrics"]  # FID, KID, precision, recall and bits/dim, exactly
    assert np.isfinite(one["metrics"]["fid"]) and np.isfinite(one["metrics"]["bits_per_dim"])


def test_two_processes_give_the_bits_per_dim_of_one_process(two_processes, models, tmp_path):
    root, _ = two_processes
    two = json.loads((root / "bpd.json").read_text())
    assert main(likelihood_args(models["vp"], tmp_path / "one.json", "--batch-size", "1")) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["per_image_bits_per_dim"] == one["per_image_bits_per_dim"] and len(one["per_image_bits_per_dim"]) == 2


def test_a_run_of_two_processes_resumes_with_one_and_refuses_other_settings(two_processes, models, tmp_path):
    root, _ = two_processes
    # PNGs: two of five lost (as if the run had been killed); one process draws exactly those again.
    shutil.copytree(root / "png", tmp_path / "png")
    for name in ("sample_0002.png", "sample_0003.png"):
        (tmp_path / "png" / name).unlink()
    kept = snapshot(tmp_path / "png")
    assert main(sample_args(models["vp"], tmp_path / "png", "--batch-size", "2", "--batch-invariant")) == 0
    after = snapshot(tmp_path / "png")
    assert all(after[name] == kept[name] for name in kept)  # not rewritten
    assert all(after[name][0] == (root / "png" / name).read_bytes() for name in after)
    # Shards of the evaluation: one block lost; the report equals the two-process one.
    shutil.copytree(root / "shards", tmp_path / "shards")
    (tmp_path / "shards" / "samples_00000004-00000008.npz").unlink()
    extra = [
        "--batch-size",
        "4",
        "--bpd-batch-size",
        "2",
        "--batch-invariant",
        "--samples-dir",
        str(tmp_path / "shards"),
    ]
    assert main(evaluate_args(models["ve"], tmp_path / "e.json", *extra)) == 0
    resumed = json.loads((tmp_path / "e.json").read_text())
    assert resumed["resumed_samples"] == 7 and resumed["num_processes"] == 1
    assert resumed["metrics"] == json.loads((root / "eval.json").read_text())["metrics"]
    # Other settings on the same folders: refused in one line, nothing touched.
    before = snapshot(tmp_path / "png")
    code = main(sample_args(models["vp"], tmp_path / "png", "--batch-size", "2", "--batch-invariant", "--seed", "1"))
    assert code == 2 and snapshot(tmp_path / "png") == before
    before = snapshot(tmp_path / "shards")
    code = main(evaluate_args(models["ve"], tmp_path / "e.json", *extra, "--nfe", "6"))
    assert code == 2 and snapshot(tmp_path / "shards") == before


def test_other_settings_are_refused_in_one_line(models, tmp_path, capsys):
    assert main(sample_args(models["vp"], tmp_path / "png", "--batch-size", "5")) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "png")
    assert main(sample_args(models["vp"], tmp_path / "png", "--batch-size", "5", steps=6)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "holds a run with other settings (steps: 4 there, 6 now)" in err and "left untouched" in err
    assert snapshot(tmp_path / "png") == before


# ---------------------------------------------------------------------------------------------------------
# SIGKILL, then the same command again
# ---------------------------------------------------------------------------------------------------------
def test_sigkill_then_rerun_gives_the_uninterrupted_result(models, tmp_path):
    args = sample_args(models["ve"], tmp_path / "killed", "--batch-size", "1", n=16, steps=10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sde_diffusers.cli", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not list((tmp_path / "killed").glob("sample_*.png")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no image after 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.stderr.close()
    written = sorted(p.name for p in (tmp_path / "killed").glob("sample_*.png"))
    assert 1 <= len(written) < 16, written  # killed mid-run
    assert main(args) == 0  # the same command again
    assert main(sample_args(models["ve"], tmp_path / "whole", "--batch-size", "1", n=16, steps=10)) == 0
    for i in range(16):
        name = f"sample_{i:04d}.png"
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not [p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")]  # no temporary files
