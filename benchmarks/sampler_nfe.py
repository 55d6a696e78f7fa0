"""Sampler benchmark: network evaluations (NFE) against distance to the data distribution.

Data: a Gaussian mixture in ``--dim`` dimensions with components of different widths, so every perturbed
marginal and its score are exact (``sde_diffusers.toy``): the only error left is the sampler's. Every sampler
starts from the same prior draw. Distance: sliced 2-Wasserstein (``--projections`` random directions) between
the samples and as many fresh exact samples; the floor row is that distance between two exact sample sets.
With 10,000 samples, distances within about 0.02 of the floor are sampling noise: the benchmark resolves the
low-NFE regime, where the samplers differ.

Samplers (for VE and VP):

* ``PC (reverse diffusion)``: predictor only; ``PC (+ Langevin)``: one Langevin corrector step per predictor
  step (snr 0.16 for VE, 0.01 for VP; NFE = 2 n) — the lead's step functions, as the PC schedulers run them;
* ``Euler ODE (t)``: Euler steps of the probability-flow ODE in ``t`` (the naive discretisation);
* ``Euler ODE (sigma)`` / ``Heun ODE (sigma)``: our fixed-step steps in the sigma variable (Karras spacing,
  final Tweedie step), what :class:`~sde_diffusers.schedulers.ProbabilityFlowScheduler` runs;
* ``adaptive ODE``: on-device Dormand–Prince (``rtol = atol`` swept);
* ``adaptive SDE``: Jolicoeur-Martineau et al. (2021), ``rtol`` swept, ``atol = 0.0078``.

For the adaptive solvers NFE is the number of batched evaluations (the slowest sample); ``nfe_mean`` is the
average over samples (what a per-sample deployment would cost). Writes ``benchmarks/results/sampler_nfe.json``
and ``sampler_nfe.png``.

Usage::

    python benchmarks/sampler_nfe.py              # ~3 minutes on one CPU core
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sde_diffusers.sampling.adaptive_sde import sample_adaptive_sde  # noqa: E402
from sde_diffusers.sampling.correctors import CORRECTORS  # noqa: E402
from sde_diffusers.sampling.ode import sample_probability_flow, sample_probability_flow_fixed  # noqa: E402
from sde_diffusers.sampling.predictors import PREDICTORS  # noqa: E402
from sde_diffusers.sde import VESDE, VPSDE  # noqa: E402
from sde_diffusers.toy import GaussianMixture  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: torch.Tensor) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds (exact 1-D W2 per direction)."""
    pa, pb = (a @ projections).sort(dim=0).values, (b @ projections).sort(dim=0).values
    return float((pa - pb).pow(2).mean(dim=0).mean().sqrt())


def make_mixture(dim: int, seed: int) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(4, dim, generator=gen, dtype=torch.float64)
    stds = torch.tensor([0.05, 0.15, 0.3, 0.6], dtype=torch.float64)[:, None] * (
        0.5 + torch.rand(4, dim, generator=gen, dtype=torch.float64)
    )
    return GaussianMixture(means, stds, torch.tensor([0.1, 0.2, 0.3, 0.4]))


def pc_sampler(score_fn, sde, x, n, corrector, snr, generator):
    """The predictor-corrector loop of the PC schedulers, with their pure step functions."""
    times = torch.linspace(sde.T, 1e-3, n, dtype=torch.float64)
    nfe = 0
    for i, t_value in enumerate(times):
        t = t_value.to(x.dtype).expand(x.shape[0])
        if corrector:
            x, _ = CORRECTORS["langevin"](sde, score_fn, x, t, snr=snr, num_steps=n, generator=generator)
            nfe += 1
        x, x_mean = PREDICTORS["reverse_diffusion"](sde, score_fn, x, t, num_steps=n, generator=generator)
        nfe += 1
        if i == n - 1:
            x = x_mean  # the last step is denoised, as the schedulers' denoise_final does
    return x, nfe


def euler_t_sampler(score_fn, sde, x, n):
    """Euler steps of the probability-flow ODE in t (the lead's predictor with probability_flow=True)."""
    times = torch.linspace(sde.T, 1e-3, n, dtype=torch.float64)
    for t_value in times:
        x, _ = PREDICTORS["euler_maruyama"](
            sde, score_fn, x, t_value.to(x.dtype).expand(x.shape[0]), num_steps=n, probability_flow=True
        )
    return x, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--projections", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="fewer budgets (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    mix = make_mixture(args.dim, args.seed)
    n, dim = args.num_samples, args.dim
    ref = mix.sample(n, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    floor_set = mix.sample(n, generator=torch.Generator().manual_seed(args.seed + 2), dtype=torch.float64)
    proj = torch.randn(
        dim, args.projections, generator=torch.Generator().manual_seed(args.seed + 3), dtype=torch.float64
    )
    proj = proj / proj.norm(dim=0, keepdim=True)
    floor = sliced_wasserstein(floor_set, ref, proj)
    print(f"{dim}-d Gaussian mixture, {n} samples; floor (two exact sample sets): SW2 = {floor:.4f}")

    steps = [10, 20, 50, 100, 200, 500, 1000] if not args.quick else [10, 50]
    ode_tols = [1e-2, 1e-3, 1e-4, 1e-5] if not args.quick else [1e-3]
    sde_tols = [0.2, 0.1, 0.05, 0.02, 0.01] if not args.quick else [0.05]
    results = {"dim": dim, "num_samples": n, "projections": args.projections, "floor": floor, "sdes": {}}
    for sde_name, sde, snr in (("VE", VESDE(), 0.16), ("VP", VPSDE(), 0.01)):
        score_fn = mix.score_fn(sde)
        x_T = sde.prior_sampling((n, dim), generator=torch.Generator().manual_seed(args.seed + 4), dtype=torch.float64)
        rows = []

        def record(sampler, setting, sample, nfe, seconds, nfe_mean=None, sampler_rows=rows, sde_name=sde_name):
            sw = sliced_wasserstein(sample, ref, proj)
            sampler_rows.append(
                {
                    "sampler": sampler,
                    "setting": setting,
                    "nfe": nfe,
                    "nfe_mean": nfe if nfe_mean is None else nfe_mean,
                    "sw2": sw,
                    "seconds": seconds,
                }
            )
            print(f"  {sde_name} {sampler:<22} {setting:<14} NFE {nfe:6d}  SW2 {sw:.4f}  ({seconds:.1f} s)")

        for k in steps:
            for corrector in (False, True):
                start = time.perf_counter()
                gen = torch.Generator().manual_seed(args.seed + 5)
                sample, nfe = pc_sampler(score_fn, sde, x_T, k, corrector, snr, gen)
                record(
                    "PC (+ Langevin)" if corrector else "PC (reverse diffusion)",
                    f"n={k}",
                    sample,
                    nfe,
                    time.perf_counter() - start,
                )
            start = time.perf_counter()
            sample, nfe = euler_t_sampler(score_fn, sde, x_T, k)
            record("Euler ODE (t)", f"n={k}", sample, nfe, time.perf_counter() - start)
            for solver in ("euler", "heun"):
                m = k if solver == "euler" else (k + 1) // 2  # the same NFE budget: Heun costs 2 n - 1
                start = time.perf_counter()
                out = sample_probability_flow_fixed(score_fn, sde, x_T, num_steps=m, solver=solver, spacing="karras")
                record(
                    f"{solver.capitalize()} ODE (sigma)",
                    f"n={m}",
                    out.sample,
                    out.nfe,
                    time.perf_counter() - start,
                )
        for tol in ode_tols:
            start = time.perf_counter()
            out = sample_probability_flow(score_fn, sde, x_T, rtol=tol, atol=tol)
            record(
                "adaptive ODE",
                f"tol={tol:g}",
                out.sample,
                out.nfe,
                time.perf_counter() - start,
                float(out.nfe_per_sample.double().mean()),
            )
        for tol in sde_tols:
            start = time.perf_counter()
            out = sample_adaptive_sde(
                score_fn, sde, x_T, rtol=tol, generator=torch.Generator().manual_seed(args.seed + 6)
            )
            record(
                "adaptive SDE",
                f"rtol={tol:g}",
                out.sample,
                out.nfe,
                time.perf_counter() - start,
                float(out.nfe_per_sample.double().mean()),
            )
        results["sdes"][sde_name] = rows

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sampler_nfe.json").write_text(json.dumps(results, indent=2) + "\n")

    print()
    for sde_name, rows in results["sdes"].items():
        print(f"### {sde_name}  (floor SW2 {floor:.4f})\n")
        print("| sampler | setting | NFE | mean NFE/sample | SW2 |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['sampler']} | {r['setting']} | {r['nfe']} | {r['nfe_mean']:.0f} | {r['sw2']:.4f} |")
        print()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["sdes"]), figsize=(12, 4.5), sharey=True)
    for ax, (sde_name, rows) in zip(axes, results["sdes"].items(), strict=True):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["nfe"], r["sw2"]) for r in rows if r["sampler"] == sampler)
            ax.plot(*zip(*pts, strict=True), marker="o", label=sampler)
        ax.axhline(floor, color="gray", ls="--", lw=1, label="two exact sample sets")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (batched network evaluations)")
        ax.set_title(f"{sde_name} SDE, {dim}-d Gaussian mixture, exact score")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("sliced Wasserstein-2 to exact samples")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "sampler_nfe.png", dpi=120)
    print(f"wrote {out_dir / 'sampler_nfe.json'} and {out_dir / 'sampler_nfe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
