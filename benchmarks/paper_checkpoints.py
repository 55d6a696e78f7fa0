"""The paper's released checkpoints through our samplers: NFE, wall time, FID, IS and bits/dim (Table 1 / Table 2).

With a real checkpoint from the score_sde_pytorch release (see the README section "Use the paper's checkpoints"):

    python benchmarks/paper_checkpoints.py --checkpoint checkpoint_24.pth --config ve/cifar10_ncsnpp_continuous \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --reference cifar10 --reference-root CIFAR10_DIR \\
        --num-samples 10000 --batch-size 500 --device cuda

converts it, samples ``--num-samples`` images with the paper's sampler (the config's predictor-corrector at N steps)
and with our fast samplers (probability-flow ODE with Heun steps, adaptive RK45, DPM-Solver / DDIM for VP models),
and reports for each the NFE per image, the wall time, FID and Inception score (pytorch-fid's Inception weights from
a path you give, reference statistics from the reference images), and the bits/dim of held-out images through the
probability-flow ODE (uniform dequantization, RK45 at 1e-5, as the paper). FID at fewer than 50,000 samples is
biased upwards: compare rows of one run, and the paper's numbers only at 50,000.

Without the weights it runs end to end on the tiny official-format test checkpoints of tests/data (random weights,
16 px, a few samples, few steps, the project's CIFAR-10 feature classifier in place of Inception, 8x8 digits as the
"reference"): the numbers are meaningless and the report says so; it checks that the whole path works.

    python benchmarks/paper_checkpoints.py --fixtures
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from _report import write_report

from sde_diffusers import convert_score_sde_checkpoint
from sde_diffusers.convert import REPORTED_RESULTS
from sde_diffusers.evaluation import extract_features, load_feature_extractor
from sde_diffusers.evaluation.metrics import FeatureStatistics, frechet_distance, inception_score
from sde_diffusers.evaluation.quality import (
    extractor_input,
    features_of,
    heldout_bits_per_dim,
    load_reference,
    quantize_8bit,
)
from sde_diffusers.evaluation.sampling import SAMPLERS, draw_samples

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "score_sde_checkpoints"
# The paper's sampler, by the converted scheduler's (predictor, corrector).
_PAPER_SAMPLER = {
    ("reverse_diffusion", "langevin"): "pc",
    ("ancestral", "langevin"): "pc_ancestral",
    ("reverse_diffusion", "none"): "reverse_diffusion",
    ("euler_maruyama", "none"): "euler_maruyama",
    ("ancestral", "none"): "ancestral",
    ("none", "langevin"): "corrector_only",
}


def paper_sampler(pipe) -> tuple[str, int]:
    """The sampler registry key and NFE of the config's own sampler at its N steps."""
    config = pipe.scheduler.config
    name = _PAPER_SAMPLER.get((config.get("predictor"), config.get("corrector")), "ode_adaptive")
    if SAMPLERS[name].adaptive:
        return name, 0
    return name, SAMPLERS[name].nfe_for_steps(config.num_train_timesteps)


def sampler_plan(pipe, fast: list[str], paper_steps: int | None) -> list[tuple[str, str, dict]]:
    """(label, sampler, budget) rows: the paper's sampler, then the fast ones that apply to the model's SDE."""
    name, nfe = paper_sampler(pipe)
    if paper_steps is not None and not SAMPLERS[name].adaptive:
        nfe = SAMPLERS[name].nfe_for_steps(paper_steps)
    rows = [("paper: " + name, name, {"nfe": nfe} if nfe else {})]
    sde = pipe.conversion.sde_type
    for spec in fast:
        sampler, _, budget = spec.partition(":")
        info = SAMPLERS[sampler]
        if sde not in info.sde_types:
            continue
        value = {} if not budget else ({"tolerance": float(budget)} if info.adaptive else {"nfe": int(budget)})
        rows.append((sampler, sampler, value))
    return rows


def evaluate(args: argparse.Namespace, checkpoint: Path, config: str, *, fixture: bool) -> dict:
    device = torch.device(args.device)
    pipe = convert_score_sde_checkpoint(checkpoint, config, use_ema=not args.raw_weights).to(device)
    conversion = pipe.conversion
    size, channels = conversion.model_config["sample_size"], conversion.model_config["in_channels"]

    extractor = None
    if args.inception_weights:
        extractor = load_feature_extractor("inception", args.inception_weights, device=device)
    elif fixture:
        extractor = load_feature_extractor("cifar10", device=device)  # a stand-in: the path, not the number
    reference = None
    if args.reference:
        reference = load_reference(
            args.reference, split="test", resolution=size, channels=channels, root=args.reference_root
        )
    real_stats = None
    if extractor is not None and reference is not None:
        real = reference.unit_range()[: args.reference_images]
        real_stats = FeatureStatistics.from_features(
            features_of(real, extractor), allow_small_sample=fixture or args.allow_small_sample
        )

    rows = []
    for label, sampler, budget in sampler_plan(pipe, args.samplers, args.paper_steps):
        out = draw_samples(pipe, sampler, args.num_samples, batch_size=args.batch_size, seed=args.seed, **budget)
        row = {
            "sampler": label,
            "nfe": out.nfe,
            "seconds": out.seconds,
            "seconds_per_image": out.seconds / args.num_samples,
            "settings": out.settings,
        }
        if extractor is not None:
            fake = extract_features(extractor, extractor_input(quantize_8bit(out.images), extractor).to(device))
            if real_stats is not None:
                row["fid"] = float(frechet_distance(fake.features, real_stats, allow_small_sample=True))
            row["inception_score"] = float(inception_score(fake.logits, num_splits=min(10, args.num_samples)).mean)
        rows.append(row)
        print(f"  {label:28s} NFE {out.nfe:7.1f}  {out.seconds:8.1f} s  " + _metrics(row), flush=True)

    likelihood = None
    if reference is not None and args.bpd_images > 0:
        likelihood = heldout_bits_per_dim(
            pipe,
            reference,
            num_images=args.bpd_images,
            batch_size=args.batch_size,
            rtol=args.bpd_tolerance,
            atol=args.bpd_tolerance,
        )
        print(
            f"  bits/dim of {likelihood['num_images']} held-out images: {likelihood['bits_per_dim']:.3f} "
            f"± {likelihood['bits_per_dim_stderr']:.3f} (NFE {likelihood['nfe']:.0f}, {likelihood['seconds']:.1f} s)"
        )
    reported = REPORTED_RESULTS.get(conversion.name)
    if reported:
        print(
            "  reported for this config (score_sde_pytorch README): "
            + ", ".join(f"{k} {v}" for k, v in reported.items())
        )
    return {
        "config": conversion.name,
        "checkpoint": str(checkpoint),
        "fixture": fixture,
        "weights": "raw" if args.raw_weights else "ema",
        "num_samples": args.num_samples,
        "reference": reference.info if reference is not None else None,
        "feature_extractor": "inception" if args.inception_weights else ("cifar10 classifier" if fixture else None),
        "reported_by_the_paper": reported,
        "rows": rows,
        "likelihood": likelihood,
    }


def _metrics(row: dict) -> str:
    parts = [f"FID {row['fid']:.2f}" if "fid" in row else ""]
    parts.append(f"IS {row['inception_score']:.2f}" if "inception_score" in row else "")
    return "  ".join(p for p in parts if p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint_N.pth of the score_sde_pytorch release")
    parser.add_argument("--config", help="its config name (e.g. ve/cifar10_ncsnpp_continuous) or JSON file")
    parser.add_argument("--fixtures", action="store_true", help="run on the tiny test checkpoints (no weights needed)")
    parser.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    parser.add_argument("--num-samples", type=int, default=None, help="images per sampler (default 10000; 8 fixtures)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default 500; 8 fixtures)")
    parser.add_argument(
        "--samplers",
        default="ode_heun:35,ode_adaptive:1e-5,dpm_solver:20,ddim:50",
        help="fast samplers after the paper's one, as NAME[:NFE or tolerance], comma-separated; those that do "
        "not apply to the model's SDE are skipped",
    )
    parser.add_argument("--paper-steps", type=int, default=None, help="steps of the paper's sampler (default: N)")
    parser.add_argument("--inception-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05 weights")
    parser.add_argument(
        "--reference", default=None, help="reference images: cifar10 (with --reference-root) or a folder"
    )
    parser.add_argument("--reference-root", default=None, help="CIFAR-10 folder (train/ and test/ class folders)")
    parser.add_argument("--reference-images", type=int, default=10000, help="reference images for the statistics")
    parser.add_argument("--bpd-images", type=int, default=None, help="held-out images for bits/dim (default 1000)")
    parser.add_argument(
        "--bpd-tolerance", type=float, default=None, help="RK45 rtol = atol (default the paper's 1e-5)"
    )
    parser.add_argument("--allow-small-sample", action="store_true", help="FID with fewer samples than features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/paper_checkpoints*.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for spec in args.samplers:
        if spec.partition(":")[0] not in SAMPLERS:
            parser.error(f"unknown sampler {spec!r}; known: {', '.join(SAMPLERS)}")

    if args.fixtures:
        if args.checkpoint or args.config:
            parser.error("--fixtures runs the test checkpoints; drop --checkpoint/--config")
        args.num_samples = args.num_samples or 8
        args.batch_size = args.batch_size or 8
        args.paper_steps = args.paper_steps or 10
        args.samplers = [s.replace("ode_adaptive:1e-5", "ode_adaptive:1e-2") for s in args.samplers]
        args.reference = args.reference or "digits"
        args.reference_images = min(args.reference_images, 256)
        args.bpd_images = 4 if args.bpd_images is None else args.bpd_images
        args.bpd_tolerance = args.bpd_tolerance or 1e-2
        runs = [
            (FIXTURES / name / "checkpoint_1.pth", str(FIXTURES / name / "config.json"))
            for name in sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
        ]
        print(
            "FIXTURES: tiny official-format checkpoints with RANDOM weights, 16 px, "
            f"{args.num_samples} samples, the paper's sampler at {args.paper_steps} steps, a CIFAR-10 classifier "
            "instead of Inception and 8x8 digits as reference: the numbers are MEANINGLESS; this run only checks "
            "that conversion, every sampler, FID, IS and bits/dim work end to end."
        )
    else:
        if not args.checkpoint or not args.config:
            parser.error("give --checkpoint and --config (or --fixtures to run without the weights)")
        args.num_samples = args.num_samples or 10000
        args.batch_size = args.batch_size or 500
        args.bpd_images = 1000 if args.bpd_images is None else args.bpd_images
        args.bpd_tolerance = args.bpd_tolerance or 1e-5
        runs = [(Path(args.checkpoint), args.config)]

    results = []
    for checkpoint, config in runs:
        print(f"{config} ({checkpoint}):", flush=True)
        results.append(evaluate(args, checkpoint, config, fixture=args.fixtures))
    out = {
        "benchmark": "paper_checkpoints",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.device}",
        "meaningless_fixture_numbers": args.fixtures,
        "args": {k: v for k, v in vars(args).items()},
        "results": results,
    }
    default = "paper_checkpoints_fixtures.json" if args.fixtures else "paper_checkpoints.json"
    path = Path(args.out or Path(__file__).parent / "results" / default)
    write_report(path, out, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
