"""``method="smc"`` with the exact twist: how much of its error is the Gaussian twist's.

The sampler's weights are right for any twist (``benchmarks/smc_diagnostics.py``), so at a fixed particle count its
error has two sources: the chain's own posterior (``benchmarks/smc_chain_floor.py``) and a twist that ranks the
particles wrongly before they settle in a mode. On the Gaussian mixtures of ``benchmarks/conditional_accuracy.py``
the exact twist ``p(y | x_t)`` is known in closed form (a mixture over components of Gaussians in the observed
directions), so this script runs the same sampler (proposal, resampling, weights) with the twist's value and
gradient replaced by the exact ones and reports the mode-weight TV and the second-moment error in units of the
Monte-Carlo noise, next to the pipeline's own twist. What remains with the exact twist is the chain (and the
proposal); what goes away is the twist's share.

Run: ``python benchmarks/smc_oracle_twist.py [--held-out] [--steps 1000] [--particles 16]`` (each set at 1000 steps
about 30 min on one thread under load); writes ``benchmarks/results/smc_oracle_twist[_held_out]_<steps>_steps.json``.
``--markdown`` prints the table of the benchmarks README from that JSON and the Gaussian twist's run of
``conditional_accuracy.py --steps <steps> --particles <particles> --out
benchmarks/results/conditional_accuracy[_held_out]_<steps>_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_report  # noqa: E402
from conditional_accuracy import (  # noqa: E402
    DEFAULT_SCHEDULERS,
    Problem,
    exact_within,
    held_out_problems,
    monte_carlo_noise,
    run,
    tuning_problems,
)

from sde_diffusers.pipelines import pipeline_score_sde_inverse as inverse  # noqa: E402


class ExactTwist:
    """Context manager: the pipeline's twist value (and so its gradient) replaced by ``Problem.exact_twist``;
    the residual and variance that shape the proposal on the observed directions are the pipeline's own."""

    def __init__(self, problem: Problem):
        self.problem = problem

    def __enter__(self):
        self.original = inverse.ObservationGuidance.evaluate
        problem, original = self.problem, self.original

        def evaluate(guidance, x, t, score, view):
            _, residual, r2 = original(guidance, x, t, score, view)
            m, s = view.marginal_coeffs(t)
            scale = m.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            exact = problem.exact_twist(x / scale, (s / m) ** 2)
            return exact.to(x.dtype), residual, r2

        inverse.ObservationGuidance.evaluate = evaluate
        return self

    def __exit__(self, *exc):
        inverse.ObservationGuidance.evaluate = self.original


def markdown(oracle: dict, gaussian_rows: list[dict], problems: list[Problem]) -> str:
    """Per problem, the worst over the schedulers of TV / noise (second-moment error / noise in brackets) with the
    pipeline's Gaussian twist and with the exact one; the number of runs within 2x the noise, and how many of them an
    exact posterior sampler would have there (its own TV exceeds 2x its mean now and then)."""
    method = f"smc K={oracle['particles']}"
    gaussian = {
        (r["problem"], r["scheduler"]): (r["tv"] / r["mc_tv"], r["second_moment_error"] / r["mc_second_moment_error"])
        for r in gaussian_rows
        if r["method"] == method
    }
    exact = {
        (r["problem"], r["scheduler"]): (r["tv_over_noise"], r["second_moment_over_noise"]) for r in oracle["runs"]
    }
    gaussian = {key: value for key, value in gaussian.items() if key in exact}  # the same runs on both sides
    lines = ["| problem | exact posterior | Gaussian twist | exact twist |", "|---|---|---|---|"]
    for problem in dict.fromkeys(r["problem"] for r in oracle["runs"]):
        cells = []
        for table in (gaussian, exact):
            runs = [v for (name, _), v in table.items() if name == problem]
            cells.append(f"{max(v[0] for v in runs):.1f} ({max(v[1] for v in runs):.1f})")
        weights = next(r["exact"] for r in oracle["runs"] if r["problem"] == problem)
        lines.append(f"| {problem} | {'/'.join(f'{w:.2f}' for w in weights)} | {cells[0]} | {cells[1]} |")
    counts = [sum(v[0] <= 2 for v in table.values()) for table in (gaussian, exact)]
    lines.append(f"| runs with TV <= 2x noise | | {counts[0]} of {len(gaussian)} | {counts[1]} of {len(exact)} |")
    rate = {p.name: exact_within(p, oracle["samples"]) for p in problems}
    expected = sum(rate[name] for name, _ in exact)
    lines.append(f"| the same for an exact posterior sampler (expected) | | | {expected:.1f} of {len(exact)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", action="store_true", help="the held-out problems instead of the tuning set")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--schedulers", nargs="+", default=DEFAULT_SCHEDULERS)
    parser.add_argument("--problems", nargs="+", default=None, help="only these problem names")
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", action="store_true", help="print the README table from the JSON files")
    args = parser.parse_args()
    suffix = f"{'_held_out' if args.held_out else ''}_{args.steps}_steps.json"
    results = os.path.join(os.path.dirname(__file__), "results")
    out = args.out or os.path.join(results, f"smc_oracle_twist{suffix}")
    problems = held_out_problems() if args.held_out else tuning_problems()
    if args.markdown:
        with open(out) as fh, open(os.path.join(results, f"conditional_accuracy{suffix}")) as gh:
            print(markdown(json.load(fh), json.load(gh), problems))
        return
    torch.set_num_threads(1)
    if args.problems:
        problems = [p for p in problems if p.name in args.problems]
    options = dict(method="smc", num_particles=args.particles)
    rows = []
    for problem in problems:
        noise = monte_carlo_noise(problem, args.samples)
        for scheduler in args.schedulers:
            start = time.perf_counter()
            with ExactTwist(problem):
                result = run(problem, scheduler, options, args.samples, args.steps)
            row = {
                "problem": problem.name,
                "scheduler": scheduler,
                "exact": [round(float(w), 4) for w in problem.posterior_weights()],
                "sampled": result["sampled"],
                "tv_over_noise": round(result["tv"] / noise["tv"], 2),
                "second_moment_over_noise": round(result["second_moment_error"] / noise["second_moment_error"], 2),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(row, flush=True)
            rows.append(row)
    within = sum(r["tv_over_noise"] <= 2 for r in rows)
    print(f"exact twist, {args.particles} particles, {args.steps} steps: TV <= 2x noise in {within} of {len(rows)}")
    write_report(out, {"steps": args.steps, "particles": args.particles, "samples": args.samples, "runs": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
