"""Is ``method="smc"`` biased, or only short of particles? Bias against variance, on problems with exact answers.

Issue 11 found the SMC sampler's error not falling with the particle count on some problems of
``benchmarks/conditional_accuracy.py``. A correct SMC converges to the posterior of the scheduler's chain as the
particle count ``K`` grows, so this script separates five things (all with exact scores, ``ExactScoreModel``):

1. **Gaussian data, closed-form posterior** (``gaussian``): 2x2 RGB pixels ``N(mu, diag(0.05, 0.15, 0.3)^2)``, grey
   level observed at 0.25 where the prior mean is 0 (2.2 prior standard deviations along the grey axis), so the
   posterior mean moves and the covariance shrinks along the grey axis. For ``K`` = 1, 16, 256 and 100 / 1000 steps:
   the largest posterior-mean error in standard errors, and the sampled / exact posterior variance per coordinate. A
   wrong weight (a missing factor 2, a wrong sign in the proposal ratio or the twist) shows up here as a variance off
   by far more than the noise; the chain's own discretization error shows up the same at every ``K`` and shrinks
   with the steps.
2. **Two separated modes** (``issue-16d`` of the accuracy benchmark, exact posterior 0.5 / 0.5): sampled mode weights,
   the sampled / exact posterior variance of the repainted pixels (the spread between the modes dominates it; samples
   left between the modes lower it), and the effective sample size along the chain, for ``K`` up to 1024.
3. **Where the twist is wrong** (``issue-16d``, ``K`` = 64): along the chain, the twist ``log g_t`` the sampler uses
   minus the exact ``log p(y | x_t)`` (a Gaussian-mixture closed form), in nats, for particles that have not yet
   chosen a mode (mean of the repainted pixels within 0.25 of zero) and for those that have. A twist that is wrong by
   the same amount for every particle changes nothing; a difference of ``n`` nats between the two groups needs on the
   order of ``e^n`` particles to undo. The same for ``tail-16d`` (observation in the far tails of both modes).
4. **Five components in 64 dimensions** (``random-3``, VE reverse diffusion): the same for 16, 64, 256 particles.
5. **Resampling or not** (``resampling``): 16 particles with the default resampling and with none, on ``issue-16d``
   and ``between-64d``.

Run: ``python benchmarks/smc_diagnostics.py`` (about 6 minutes on one CPU thread; ``--quick`` about 2); writes
``benchmarks/results/smc_diagnostics.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_report  # noqa: E402
from conditional_accuracy import Problem, make_pipeline, monte_carlo_noise, tuning_problems  # noqa: E402

from sde_diffusers.pipelines import pipeline_score_sde_inverse as inverse  # noqa: E402
from sde_diffusers.sampling import smc  # noqa: E402


def gaussian_problem() -> Problem:
    """One anisotropic Gaussian, 2x2 RGB, grey observed away from its prior mean (closed-form posterior)."""
    mean = torch.tensor([0.3, -0.1, -0.2]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    stds = torch.tensor([0.05, 0.15, 0.3]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    grey = torch.full((1, 2, 2), (0.25 + 1) / 2)  # grey level 0.25 in [-1, 1]; the prior's is 0.0
    return Problem("gaussian", "colorize", mean, stds, torch.tensor([1.0]), grey, note="single Gaussian, 12-d")


def sample(problem: Problem, scheduler: str, particles: int, n: int, steps: int, seed: int = 0, **kwargs):
    pipe = make_pipeline(problem, scheduler)
    args = (problem.image, problem.mask) if problem.kind == "inpaint" else (problem.image,)
    out = pipe(
        *args,
        batch_size=n,
        num_inference_steps=steps,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        method="smc",
        num_particles=particles,
        **kwargs,
    )
    return 2 * out.images.double() - 1


def moments(problem: Problem, x: torch.Tensor) -> dict:
    """Largest |mean error| in standard errors and the sampled / exact variance, over the unobserved coordinates."""
    exact_mean = problem.posterior_mean()
    exact_var = problem.posterior_second_moment() - exact_mean**2
    free = problem.unobserved()
    se = (exact_var / x.shape[0]).sqrt()
    ratio = (x.var(0) / exact_var)[free]
    return {
        "max_mean_error_in_se": round(float(((x.mean(0) - exact_mean).abs() / se)[free].max()), 2),
        "variance_ratio_mean": round(float(ratio.mean()), 3),
        "variance_ratio_min": round(float(ratio.min()), 3),
        "variance_ratio_max": round(float(ratio.max()), 3),
        "variance_standard_error": round(math.sqrt(2 / x.shape[0]), 3),
    }


def gaussian_study(quick: bool) -> list[dict]:
    problem, rows = gaussian_problem(), []
    plan = [(1, 100), (16, 100), (16, 1000)] if quick else [(1, 100), (16, 100), (256, 100), (1, 1000), (16, 1000)]
    for scheduler in ("VE RD", "VP EM"):
        for particles, steps in plan:
            n = 512 if (particles >= 256 or steps >= 1000) else 2048
            start = time.perf_counter()
            row = {"scheduler": scheduler, "particles": particles, "steps": steps, "samples": n}
            row.update(moments(problem, sample(problem, scheduler, particles, n, steps)))
            row["seconds"] = round(time.perf_counter() - start, 1)
            print("gaussian", row, flush=True)
            rows.append(row)
    return rows


class _Recorder:
    """Records the effective sample size the sampler computes at each step (it calls the function once a step)."""

    def __init__(self):
        self.trace: list[float] = []

    def __enter__(self):
        self.original = smc.effective_sample_size

        def ess(log_w):
            value = self.original(log_w)
            self.trace.append(float(value.double().mean()))
            return value

        smc.effective_sample_size = ess
        return self

    def __exit__(self, *exc):
        smc.effective_sample_size = self.original


def particle_count_study(name: str, counts: list[tuple[int, int]], schedulers: tuple[str, ...]) -> list[dict]:
    """Mode weights, errors / noise and variance ratios of one accuracy-benchmark problem for ``(particles,
    outputs)`` pairs."""
    problem = {p.name: p for p in tuning_problems()}[name]
    rows = []
    for scheduler in schedulers:
        for particles, n in counts:
            start = time.perf_counter()
            with _Recorder() as rec:
                x = sample(problem, scheduler, particles, n, 100)
            metrics = problem.metrics((x + 1) / 2)
            noise = monte_carlo_noise(problem, n)
            row = {
                "scheduler": scheduler,
                "particles": particles,
                "samples": n,
                "sampled_weights": metrics["sampled"],
                "tv_over_noise": round(metrics["tv"] / noise["tv"], 2),
                "second_moment_error_over_noise": round(
                    metrics["second_moment_error"] / noise["second_moment_error"], 2
                ),
                **moments(problem, x),
                "ess_over_k_every_10_steps": [round(v / particles, 2) for v in rec.trace[::10]],
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(name, row, flush=True)
            rows.append(row)
    return rows


def twist_error_study(name: str, quick: bool) -> list[dict]:
    """Along one SMC run (VE reverse diffusion, 64 particles), per step: the particles of each kind (repainted pixels
    near the first mode's +0.5, near the second's -0.5, or in between) and the median twist error of each kind."""
    problem = {p.name: p for p in tuning_problems()}[name]
    particles, n = 64, 8 if quick else 16
    free = problem.unobserved().flatten()
    records = []
    original = inverse.ObservationGuidance.evaluate

    def evaluate(self, x, t, score, view):
        out = original(self, x, t, score, view)
        m, s = view.marginal_coeffs(t)
        sigma2 = (s / m) ** 2
        error = out[0].detach().double() - problem.exact_twist(x.detach(), sigma2)
        side = x.detach().double().flatten(1)[:, free].mean(1)
        records.append((float(sigma2[0].sqrt()), error, side))
        return out

    inverse.ObservationGuidance.evaluate = evaluate
    try:
        sample(problem, "VE RD", particles, n, 100)
    finally:
        inverse.ObservationGuidance.evaluate = original
    rows = []
    for sigma, error, side in records[::6] + records[-1:]:
        row = {"sigma": round(sigma, 4)}
        for kind, select in (
            ("first_mode", side > 0.25),
            ("second_mode", side < -0.25),
            ("undecided", side.abs() <= 0.25),
        ):
            row[f"{kind}_particles"] = int(select.sum())
            row[f"twist_minus_exact_{kind}_nats"] = round(float(error[select].median()), 1) if select.any() else None
        print(f"twist {name}", row, flush=True)
        rows.append(row)
    return rows


def resampling_study(quick: bool) -> list[dict]:
    """The same particle count with the default resampling (effective sample size below half) and with none (plain
    importance sampling with the twisted proposal), on ``issue-16d`` (where resampling on the twist multiplies the
    undecided particles) and ``between-64d`` (where it is what finds the mode of prior weight 0.001)."""
    problems = {p.name: p for p in tuning_problems()}
    rows = []
    default = inverse.RESAMPLE_ESS_FRACTION
    for name in ("issue-16d", "between-64d"):
        problem, n = problems[name], 64 if quick else 128
        noise = monte_carlo_noise(problem, n)
        for fraction in (default, 0.0):
            inverse.RESAMPLE_ESS_FRACTION = fraction
            try:
                for scheduler in ("VE RD", "VP EM"):
                    metrics = problem.metrics((sample(problem, scheduler, 16, n, 100) + 1) / 2)
                    row = {
                        "problem": name,
                        "scheduler": scheduler,
                        "particles": 16,
                        "samples": n,
                        "resample_below_ess_fraction": fraction,
                        "tv_over_noise": round(metrics["tv"] / noise["tv"], 2),
                        "second_moment_error_over_noise": round(
                            metrics["second_moment_error"] / noise["second_moment_error"], 2
                        ),
                    }
                    print("resampling", row, flush=True)
                    rows.append(row)
            finally:
                inverse.RESAMPLE_ESS_FRACTION = default
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer particle counts (about a minute)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "smc_diagnostics.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "gaussian": gaussian_study(args.quick),
        "two_modes_issue_16d": particle_count_study(
            "issue-16d",
            [(1, 256), (16, 256), (64, 128)] + ([] if args.quick else [(256, 64), (1024, 48)]),
            ("VE RD", "VP EM"),
        ),
        "five_components_random_3": particle_count_study(
            "random-3", [(16, 128)] + ([] if args.quick else [(64, 64), (256, 32)]), ("VE RD",)
        ),
        "twist_error_issue_16d": twist_error_study("issue-16d", args.quick),
        "twist_error_tail_16d": twist_error_study("tail-16d", args.quick),
        "resampling": resampling_study(args.quick),
    }
    write_report(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
