"""Sample quality against network evaluations (NFE) for every sampler, on VE, VP and sub-VP models of real data.

Data and models: MNIST downsampled to 16x16 (the shipped MNIST test set: ``train`` = first 8,000 images for training,
``test`` = last 2,000 held out). Three models, each trained by the project's trainer (``sde-diffusers train``) with
the same step count, batch, learning rate and seed: NCSN++ ``ncsnpp-tiny`` with the VE SDE, DDPM++ ``ddpmpp-tiny``
with the VP and with the sub-VP SDE (both presets are the same size, ~80k parameters).

Quality: the domain FID (Fréchet distance in the penultimate features of the shipped MNIST classifier, 99.4% held-out
accuracy), with KID and precision/recall alongside, of ``num_samples`` generated images against the 2,000 held-out
images. The classifier takes 28x28 inputs: the held-out images are first brought to 16x16 exactly as the trainer
prepared the training images (bicubic, 8-bit), then real and generated images alike are quantized to 8 bits and
upsampled bilinearly to 28x28 (:mod:`sde_diffusers.evaluation.quality`). Every sampler starts from the same prior draw
(seed 0). Likelihood: bits/dim of held-out images through the probability-flow ODE (RK45, rtol = atol = 1e-5,
Rademacher trace, uniform dequantization on 256 levels).

Samplers (:mod:`sde_diffusers.evaluation.sampling`): PC (reverse diffusion + one Langevin step; NFE = 2 x steps),
predictor-only reverse diffusion and ancestral, probability-flow Euler and Heun (fixed steps in sigma on Karras et
al.'s noise levels, Tweedie end; Heun's NFE is odd, ``2 n - 1``), Diffusers' DDIM and DPM-Solver++ (2M) swapped in
for the VP model, each on the NFE grid (10, 20, 50, 100), and the adaptive RK45 ODE (rtol = atol = 1e-3) and
adaptive SDE (rtol = 0.05) solvers, whose NFE is an outcome.

Table 1 analogue (Song et al., 2021, Table 1: P1000 / P2000 / C2000 / PC1000, i.e. predictor-only with N and 2N
steps, corrector-only with 2N steps, predictor-corrector with N steps, all at 2N NFE except P-N) at this scale:
``N = --table1-steps`` (50 in the full run, so every column but C2N and the ancestral PC is a point of the NFE
curves, reused: draws are deterministic given the seed). Rows: reverse-diffusion, ancestral and probability-flow
(Euler) predictors; the last has no PC entry (our PC schedulers pair Langevin with SDE predictors). The paper's
N = 1000 costs 7,000 model calls per model and predictor; ``--table1-steps 1000 --table1-samples 200`` runs it.

Budget: the script measures one batched model call of every model first and prints the planned number of calls and
the estimated time. On the shared 2-core CPU (one thread, other jobs running) a call of 500 16x16 images takes about
0.3 s: the full run (3 x 2,000 training steps, ~4,400 sampling calls, bits/dim of 64 images per model) takes about
40 minutes, ``--quick`` (3 x 400 steps, 200 samples, NFE up to 50) about 10. Trained models are kept under
``--work-dir`` and reused by later runs with the same settings (``--retrain`` to start over).

Usage::

    python benchmarks/quality_vs_nfe.py            # full: writes benchmarks/results/quality_vs_nfe.{json,md,png}
    python benchmarks/quality_vs_nfe.py --quick    # writes benchmarks/results/quality_vs_nfe_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sde_diffusers.evaluation.extractors import classifier_info, load_feature_extractor  # noqa: E402
from sde_diffusers.evaluation.metrics import FeatureStatistics  # noqa: E402
from sde_diffusers.evaluation.quality import (  # noqa: E402
    features_of,
    heldout_bits_per_dim,
    load_reference,
    sample_quality,
)
from sde_diffusers.evaluation.sampling import SAMPLERS, draw_samples, plan_sampling  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"ve": "ncsnpp-tiny", "vp": "ddpmpp-tiny", "subvp": "ddpmpp-tiny"}
LABELS = {"ve": "VE (NCSN++)", "vp": "VP (DDPM++)", "subvp": "sub-VP (DDPM++)"}
STOCHASTIC = ("pc", "reverse_diffusion", "ancestral")
DETERMINISTIC = ("ode_euler", "ode_heun", "ddim", "dpm_solver")
ADAPTIVE = ("ode_adaptive", "adaptive_sde")


@dataclass
class Settings:
    """Everything that sets the cost of a run."""

    train_steps: int
    train_batch: int
    learning_rate: float
    warmup_steps: int
    num_samples: int
    nfe_grid: tuple[int, ...]
    ode_tolerances: tuple[float, ...]
    sde_tolerances: tuple[float, ...]
    table1_steps: int
    table1_samples: int
    table1_sdes: tuple[str, ...]
    bpd_images: int
    bpd_tolerance: float
    resolution: int = 16
    seed: int = 0


FULL = Settings(
    train_steps=2000,
    train_batch=64,
    learning_rate=1e-3,
    warmup_steps=100,
    num_samples=500,
    nfe_grid=(10, 20, 50, 100),
    ode_tolerances=(1e-3,),
    sde_tolerances=(0.05,),
    table1_steps=50,
    table1_samples=500,
    table1_sdes=("ve", "vp", "subvp"),
    bpd_images=64,
    bpd_tolerance=1e-5,
)
QUICK = Settings(
    train_steps=400,
    train_batch=64,
    learning_rate=1e-3,
    warmup_steps=50,
    num_samples=200,
    nfe_grid=(10, 20, 50),
    ode_tolerances=(1e-2,),
    sde_tolerances=(0.1,),
    table1_steps=10,
    table1_samples=200,
    table1_sdes=("ve", "vp", "subvp"),
    bpd_images=16,
    bpd_tolerance=1e-4,
)


# ---------------------------------------------------------------------------------------------------------
# Training (the project's trainer, one subprocess per model)
# ---------------------------------------------------------------------------------------------------------
def train_model(sde: str, settings: Settings, work_dir: Path, retrain: bool) -> dict:
    """Train (or reuse) the ``sde`` model; return its pipeline folder and training record."""
    out = work_dir / sde
    pipeline = out / "pipeline"
    summary_path = out / "train_summary.json"
    command = [
        sys.executable,
        "-m",
        "sde_diffusers.cli",
        "train",
        "--dataset_name",
        "mnist",
        "--resolution",
        str(settings.resolution),
        "--model_preset",
        MODELS[sde],
        "--sde",
        sde,
        "--max_train_steps",
        str(settings.train_steps),
        "--train_batch_size",
        str(settings.train_batch),
        "--learning_rate",
        str(settings.learning_rate),
        "--lr_warmup_steps",
        str(settings.warmup_steps),
        "--seed",
        str(settings.seed),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--progress_bar",
        "false",
        "--logging_steps",
        "100",
        "--checkpointing_steps",
        str(10 * settings.train_steps),
        "--save_final_checkpoint",
        "false",
        "--num_inference_steps",
        "100",
        "--overwrite_output_dir",
    ]
    if not retrain and (pipeline / "model_index.json").is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        config = summary.get("config", {})
        if (
            config.get("max_train_steps") == settings.train_steps
            and config.get("train_batch_size") == settings.train_batch
        ):
            print(f"[train] {sde}: reusing {pipeline}", flush=True)
            return {"pipeline": _shown(pipeline), **_train_record(summary, reused=True)}
    print(f"[train] {sde}: {' '.join(command[2:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    summary = json.loads(summary_path.read_text())
    summary["benchmark_wall_time_s"] = seconds
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return {"pipeline": _shown(pipeline), **_train_record(summary, reused=False)}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (reports carry no machine paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _train_record(summary: dict, reused: bool) -> dict:
    return {
        "preset": summary.get("config", {}).get("model_preset"),
        "steps": summary.get("global_step"),
        "final_loss": summary.get("final_loss"),
        "steps_per_second": summary.get("steps_per_second"),
        "wall_time_s": summary.get("benchmark_wall_time_s"),
        "reused": reused,
    }


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------
def model_call_seconds(pipe, batch: int, repeats: int = 3) -> float:
    """Wall time of one batched forward pass of the UNet at the benchmark's batch size."""
    shape = (batch, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    x = torch.randn(shape)
    t = pipe.scheduler.timesteps[:1].expand(batch) if len(pipe.scheduler.timesteps) else torch.full((batch,), 0.5)
    with torch.no_grad():
        pipe.unet(x, t)
        start = time.perf_counter()
        for _ in range(repeats):
            pipe.unet(x, t)
    return (time.perf_counter() - start) / repeats


def jobs_for(sde: str, settings: Settings) -> list[tuple[str, str, float, int]]:
    """``(sampler, budget kind, budget, num_samples)`` for every cell of one model's curves and Table 1."""
    jobs = []
    for name in STOCHASTIC + DETERMINISTIC:
        if sde in SAMPLERS[name].sde_types:
            jobs += [(name, "nfe", n, settings.num_samples) for n in settings.nfe_grid]
    jobs += [("ode_adaptive", "tolerance", tol, settings.num_samples) for tol in settings.ode_tolerances]
    jobs += [("adaptive_sde", "tolerance", tol, settings.num_samples) for tol in settings.sde_tolerances]
    if sde in settings.table1_sdes:
        n, n2 = settings.table1_steps, 2 * settings.table1_steps
        for job in table1_cells(n, n2, settings.table1_samples).values():
            jobs += [cell for cell in job if cell is not None]
    unique = []
    for job in jobs:
        if job not in unique:
            unique.append(job)
    return unique


def table1_cells(n: int, n2: int, samples: int) -> dict[str, list]:
    """Rows of the Table 1 analogue: P-N, P-2N, C-2N, PC-N as ``(sampler, "nfe", nfe, num_samples)`` cells."""
    corrector = ("corrector_only", "nfe", n2, samples)
    return {
        "reverse diffusion": [
            ("reverse_diffusion", "nfe", n, samples),
            ("reverse_diffusion", "nfe", n2, samples),
            corrector,
            ("pc", "nfe", n2, samples),
        ],
        "ancestral sampling": [
            ("ancestral", "nfe", n, samples),
            ("ancestral", "nfe", n2, samples),
            corrector,
            ("pc_ancestral", "nfe", n2, samples),
        ],
        "probability flow (Euler)": [
            ("ode_euler", "nfe", n, samples),
            ("ode_euler", "nfe", n2, samples),
            corrector,
            None,
        ],
    }


def expected_calls(job: tuple[str, str, float, int], pipe) -> float:
    """Planned batched calls of one job (adaptive: a rough guess, refined by the first measurement)."""
    name, kind, budget, _ = job
    if kind == "tolerance":
        return 150.0
    return float(plan_sampling(pipe, name, nfe=int(budget)).nfe)


def key_of(job: tuple[str, str, float, int]) -> str:
    name, kind, budget, samples = job
    return f"{name}|{kind}={budget:g}|n={samples}"


def run_job(pipe, job, extractor, real, real_stats, settings: Settings) -> dict:
    name, kind, budget, samples = job
    budget_kw = {"nfe": int(budget)} if kind == "nfe" else {"tolerance": float(budget)}
    out = draw_samples(pipe, name, samples, batch_size=samples, seed=settings.seed, **budget_kw)
    fake = features_of(out.images, extractor)
    metrics = sample_quality(fake, real, real_statistics=real_stats, seed=settings.seed)
    return {
        "sampler": name,
        "nfe_budget": int(budget) if kind == "nfe" else None,
        "tolerance": float(budget) if kind == "tolerance" else None,
        "num_samples": samples,
        "nfe": out.nfe,
        "nfe_per_sample": out.nfe_per_sample,
        "steps": out.steps,
        "seconds": out.seconds,
        **metrics,
    }


def data_floor(settings: Settings, extractor, real, real_stats) -> dict:
    """Metrics of ``num_samples`` real training images (prepared like the samples): the best a model can score."""
    train = load_reference("mnist", split="train", resolution=settings.resolution, channels=1)
    fake = features_of(train.unit_range()[: settings.num_samples], extractor)
    return {
        "num_samples": settings.num_samples,
        **sample_quality(fake, real, real_statistics=real_stats, seed=settings.seed),
    }


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Sample quality vs NFE — MNIST {s['resolution']}x{s['resolution']}",
        "",
        f"{report['environment']['date']}, {report['environment']['machine']}, 1 CPU thread. Domain FID (MNIST "
        f"classifier features, 16→28 px bilinear for real and generated alike) of {s['num_samples']} samples vs the "
        f"2,000 held-out images; models trained {s['train_steps']} steps x batch {s['train_batch']}. "
        "Lower is better; `nfe` is network evaluations per image.",
        "",
    ]
    if report.get("data_floor"):
        f = report["data_floor"]
        lines += [
            f"Floor: {f['num_samples']} real training images (prepared the same way) score FID "
            f"{_fmt(f['fid'], 2)}, precision {f['precision']:.3f}, recall {f['recall']:.3f}.",
            "",
        ]
    for sde, result in report["models"].items():
        grid = sorted({int(c["nfe_budget"]) for c in result["curves"] if c.get("nfe_budget") is not None})
        lines += [
            f"## {LABELS[sde]}",
            "",
            "| sampler | " + " | ".join(f"NFE {n}" for n in grid) + " |",
            "|---|" + "---|" * len(grid),
        ]
        by_sampler: dict[str, dict[int, dict]] = {}
        for cell in result["curves"]:
            if cell.get("nfe_budget") is not None:
                by_sampler.setdefault(cell["sampler"], {})[int(cell["nfe_budget"])] = cell
        for name, cells in by_sampler.items():
            row = []
            for n in grid:
                cell = cells.get(n)
                if cell is None:
                    row.append("")
                else:
                    actual = "" if round(cell["nfe"]) == n else f" ({cell['nfe']:.0f})"
                    row.append(_fmt(cell["fid"]) + actual)
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        for cell in result["curves"]:
            if cell.get("tolerance") is not None:
                lines.append(
                    f"| {cell['sampler']} (tol {cell['tolerance']:g}) | FID {_fmt(cell['fid'])} at NFE "
                    f"{cell['nfe']:.0f} (mean per sample {cell['nfe_per_sample']:.0f}) |" + " |" * (len(grid) - 1)
                )
        best = min(result["curves"], key=lambda c: c["fid"])
        lines += [
            "",
            f"Best: {best['sampler']} at NFE {best['nfe']:.0f}: FID {_fmt(best['fid'])}, KID "
            f"{best['kid']:.4f}, precision {best['precision']:.3f}, recall {best['recall']:.3f}.",
            "",
        ]
    if report.get("table1"):
        n = s["table1_steps"]
        lines += [
            f"## Table 1 analogue (N = {n}; paper: N = 1000)",
            "",
            f"Domain FID of {s['table1_samples']} samples. P{n}: predictor only, {n} steps; P{2 * n}: {2 * n} "
            f"steps; C{2 * n}: corrector (Langevin) only, {2 * n} steps; PC{n}: {n} predictor + {n} corrector "
            "steps.",
            "",
        ]
        header = f"| SDE | predictor | P{n} | P{2 * n} | C{2 * n} | PC{n} |"
        lines += [header, "|---|---|---|---|---|---|"]
        for sde, rows in report["table1"].items():
            for predictor, values in rows.items():
                lines.append(f"| {LABELS[sde]} | {predictor} | " + " | ".join(_fmt(v) for v in values) + " |")
        lines.append("")
    lines += [
        "## Held-out bits/dim",
        "",
        "| model | bits/dim | images | NFE | train steps | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for sde, result in report["models"].items():
        b, t = result["bits_per_dim"], result["training"]
        lines.append(
            f"| {LABELS[sde]} | {b['bits_per_dim']:.3f} ± {b['bits_per_dim_stderr']:.3f} | "
            f"{b['num_images']} | {b['nfe']:.0f} | {t['steps']} | {_fmt(t['final_loss'], 4)} |"
        )
    w = report["wall_time_s"]
    cpu = f", CPU time {w['cpu'] / 60:.1f} min" if "cpu" in w else ""
    lines += [
        "",
        f"Wall time: {w['total'] / 60:.1f} min{cpu} (training {w['training'] / 60:.1f} min, sampling and "
        f"metrics {w['evaluation'] / 60:.1f} min, bits/dim {w['bits_per_dim'] / 60:.1f} min); one batched "
        f"model call of {s['num_samples']} images: "
        + ", ".join(f"{LABELS[k]} {v['model_call_s']:.3f} s" for k, v in report["models"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdes = list(report["models"])
    fig, axes = plt.subplots(1, len(sdes), figsize=(5.2 * len(sdes), 4.2), sharey=True, squeeze=False)
    markers = {"ode_adaptive": "*", "adaptive_sde": "P"}
    names = list(STOCHASTIC + DETERMINISTIC + ADAPTIVE)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    for ax, sde in zip(axes[0], sdes, strict=True):
        curves: dict[str, list] = {}
        for cell in report["models"][sde]["curves"]:
            curves.setdefault(cell["sampler"], []).append(cell)
        for name, cells in curves.items():
            cells = sorted(cells, key=lambda c: c["nfe"])
            xs, ys = [c["nfe"] for c in cells], [c["fid"] for c in cells]
            if name in markers:
                ax.scatter(xs, ys, marker=markers[name], s=120, label=name, zorder=3, color=colours.get(name))
            else:
                ax.plot(xs, ys, marker="o", ms=3, label=name, color=colours.get(name))
        if report.get("data_floor"):
            ax.axhline(report["data_floor"]["fid"], color="grey", ls=":", lw=1, label="real data (floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE per image")
        ax.set_title(LABELS[sde])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("domain FID (MNIST features)")
    handles, labels = {}, {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
            labels[lab] = lab
    fig.legend(list(handles.values()), list(labels), loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    s = report["settings"]
    fig.suptitle(
        f"MNIST {s['resolution']}x{s['resolution']}: domain FID vs NFE ({s['num_samples']} samples, "
        f"{s['train_steps']} training steps)"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~10-minute configuration")
    parser.add_argument("--sdes", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where trained models are kept (default: outputs/quality_vs_nfe/<full|quick>, git-ignored)",
    )
    parser.add_argument("--retrain", action="store_true", help="train again even if a matching model exists")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--nfe-grid", type=int, nargs="+", default=None, help="NFE budgets of the fixed-step samplers")
    parser.add_argument("--table1-steps", type=int, default=None)
    parser.add_argument("--table1-samples", type=int, default=None)
    parser.add_argument("--out", default=None, help="output stem (default: benchmarks/results/quality_vs_nfe[_quick])")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the Markdown table and the figure from the existing JSON (adds the data floor "
        "if it is missing; no model is trained or sampled)",
    )
    args = parser.parse_args(argv)

    settings = dataclasses.replace(QUICK if args.quick else FULL)
    for name in ("train_steps", "num_samples", "table1_steps", "table1_samples"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.nfe_grid is not None:
        settings.nfe_grid = tuple(sorted(set(args.nfe_grid)))
    stem = Path(args.out) if args.out else RESULTS / ("quality_vs_nfe_quick" if args.quick else "quality_vs_nfe")
    stem.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.report_only:
        report = json.loads(stem.with_suffix(".json").read_text())
        if "data_floor" not in report:
            saved = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["settings"].items()})
            extractor = load_feature_extractor("mnist")
            reference = load_reference("mnist", split="test", resolution=saved.resolution, channels=1)
            real = features_of(reference.unit_range(), extractor)
            report["data_floor"] = data_floor(saved, extractor, real, FeatureStatistics.from_features(real))
            stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))
        plot(report, stem.with_suffix(".png"))
        print(markdown(report))
        return 0
    work_dir = Path(args.work_dir or ROOT / "outputs" / "quality_vs_nfe" / ("quick" if args.quick else "full"))
    start = time.perf_counter()

    trained = {sde: train_model(sde, settings, work_dir, args.retrain) for sde in args.sdes}
    training_s = time.perf_counter() - start

    from sde_diffusers.pipelines import ScoreSdePipeline

    extractor = load_feature_extractor("mnist")
    reference = load_reference("mnist", split="test", resolution=settings.resolution, channels=1)
    real = features_of(reference.unit_range(), extractor)
    real_stats = FeatureStatistics.from_features(real)
    floor = data_floor(settings, extractor, real, real_stats)

    pipes = {}
    plan = {}
    for sde in args.sdes:
        pipe = ScoreSdePipeline.from_pretrained(str(ROOT / trained[sde]["pipeline"]))
        pipe.set_progress_bar_config(disable=True)
        # channels-last convolutions are ~15% faster on this CPU; results agree to float rounding
        pipe.unet.to(memory_format=torch.channels_last)
        pipes[sde] = pipe
        call_s = model_call_seconds(pipe, settings.num_samples)
        jobs = jobs_for(sde, settings)
        calls = sum(expected_calls(j, pipe) * j[3] / settings.num_samples for j in jobs)
        plan[sde] = {"jobs": jobs, "model_call_s": call_s, "planned_calls": calls}
        print(
            f"[plan] {sde}: one call of {settings.num_samples} images {call_s:.3f} s; {len(jobs)} cells, "
            f"~{calls:.0f} calls ~{calls * call_s / 60:.1f} min",
            flush=True,
        )
    total_planned = sum(p["model_call_s"] * p["planned_calls"] for p in plan.values())
    print(f"[plan] sampling ~{total_planned / 60:.1f} min in total (plus bits/dim)", flush=True)

    report: dict = {
        "benchmark": "quality_vs_nfe",
        "mode": "quick" if args.quick else "full",
        "settings": dataclasses.asdict(settings),
        "feature_extractor": {
            "name": "mnist",
            "heldout_accuracy": classifier_info("mnist").get("heldout_accuracy"),
            "input": "16x16 -> 28x28 bilinear (align_corners=False) for real and generated",
        },
        "reference": reference.info,
        "data_floor": floor,
        "environment": {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, shared 2-core CPU",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "models": {},
    }

    def save() -> None:
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")

    evaluation_s = bpd_s = 0.0
    for sde in args.sdes:
        pipe = pipes[sde]
        result = {
            "training": trained[sde],
            "model_call_s": plan[sde]["model_call_s"],
            "curves": [],
            "cells": {},
        }
        report["models"][sde] = result
        t0 = time.perf_counter()
        curve_keys = {key_of(j) for j in jobs_for(sde, dataclasses.replace(settings, table1_sdes=()))}
        for job in plan[sde]["jobs"]:
            cell = run_job(pipe, job, extractor, real, real_stats, settings)
            result["cells"][key_of(job)] = cell
            if key_of(job) in curve_keys:
                result["curves"].append(cell)
            print(
                f"[{sde}] {job[0]:>18} {job[1]}={job[2]:<7g} n={job[3]}: NFE {cell['nfe']:6.1f}  FID "
                f"{cell['fid']:8.2f}  KID {cell['kid']:.4f}  P {cell['precision']:.2f} R {cell['recall']:.2f}  "
                f"({cell['seconds']:.0f} s)",
                flush=True,
            )
            save()
        evaluation_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        result["bits_per_dim"] = heldout_bits_per_dim(
            pipe,
            reference,
            num_images=settings.bpd_images,
            batch_size=settings.bpd_images,
            rtol=settings.bpd_tolerance,
            atol=settings.bpd_tolerance,
            seed=settings.seed,
        )
        bpd_s += time.perf_counter() - t0
        b = result["bits_per_dim"]
        print(
            f"[{sde}] bits/dim {b['bits_per_dim']:.3f} ± {b['bits_per_dim_stderr']:.3f} "
            f"({b['num_images']} images, NFE {b['nfe']:.0f}, {b['seconds']:.0f} s)",
            flush=True,
        )
        save()

    table1 = {}
    for sde in settings.table1_sdes:
        if sde not in report["models"]:
            continue
        cells = report["models"][sde]["cells"]
        rows = table1_cells(settings.table1_steps, 2 * settings.table1_steps, settings.table1_samples)
        table1[sde] = {
            row: [cells[key_of(c)]["fid"] if c is not None else None for c in row_cells]
            for row, row_cells in rows.items()
        }
    report["table1"] = table1
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    report["wall_time_s"] = {
        "total": time.perf_counter() - start,
        "training": training_s,
        "evaluation": evaluation_s,
        "bits_per_dim": bpd_s,
        # CPU seconds of this process and its training subprocesses: on a loaded machine the
        # wall time is several times what the work costs on an idle core
        "cpu": sum(u.ru_utime + u.ru_stime for u in usage),
        "load_average": list(os.getloadavg()),
    }
    save()
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    plot(report, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem.with_suffix('.json')}, {stem.with_suffix('.md')}, {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
