"""The chain's own posterior: how close ``method="smc"`` can come to the exact posterior on a scheduler's chain.

SMC's weights are right, so as its particle count grows it converges to what it targets, and that is not the
data's posterior: the particles move with the scheduler's chain, weighted at the last noise level it evaluates by
the twist there (Tweedie's Gaussian, nearly exact that close to the data for these mixtures), and the last step is
the model's own. So the target is ``p_chain(x_last) p(y | x_last)`` with ``p_chain`` the chain's marginal at that
level, which the discretization makes too wide or too narrow. On the Gaussian mixtures of
``benchmarks/conditional_accuracy.py`` the posterior mode weights are products over the observed coordinates of
each component's density at the observation, often several standard deviations out, so a variance a few percent off
in every coordinate moves them by many Monte-Carlo noise units. This script

1. measures, for each scheduler of the accuracy benchmark and 100 / 1000 steps, the ratio ``rho`` of the chain's
   variance at its last evaluated level to the exact marginal variance ``v + sigma^2`` there, for a single Gaussian
   component, on a grid of standard deviations (exact scores; the chain ``method="smc"`` runs, so Diffusers' DDIM
   with ``eta = 1``; nothing observed, one particle; VP states divided by their mean coefficient);
2. builds each problem's SMC target at 100 steps: a component ``N(mu, v)`` whose level-``sigma`` marginal is widened
   by ``rho`` and then weighted by the exact ``p(y | x)`` puts the observation at ``N(mu, v (rho v + sigma^2) / (v +
   sigma^2))``, and prints the target's mode-weight TV to the exact posterior in units of the Monte-Carlo noise of
   256 draws: the floor under SMC on that chain at any particle count, up to what this model of the chain leaves out
   (its mean error, and the components' interaction at high noise). At 1000 steps ``rho`` is 1 within the
   measurement's resolution (about 1%), which on problems with 32 observed coordinates several standard deviations
   out could still move the weights by a nat, so no floor is computed there (``smc_oracle_twist.py`` measures SMC with
   the exact twist instead).

Run: ``python benchmarks/smc_chain_floor.py [--samples 2000]`` (about 7 minutes under load); writes
``benchmarks/results/smc_chain_floor.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_report  # noqa: E402
from conditional_accuracy import (  # noqa: E402
    DEFAULT_SCHEDULERS,
    Problem,
    held_out_problems,
    make_pipeline,
    monte_carlo_noise,
    tuning_problems,
)

STDS = (0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.25, 0.3)
COORDS_PER_STD = 16
STEPS = (100, 1000)
FLOOR_STEPS = 100


def variance_ratios(scheduler: str, steps: int, samples: int, seed: int = 0) -> tuple[list[float], float]:
    """``(rho, sigma2)``: for each of :data:`STDS` the chain's variance at its last evaluated level over the exact
    ``v + sigma^2`` (zero-mean Gaussian), and that level's ``sigma^2`` (``(s / m)^2``)."""
    side = math.isqrt(len(STDS) * COORDS_PER_STD)  # ExactScoreModel describes square images
    stds = torch.tensor(STDS).repeat_interleave(COORDS_PER_STD).view(1, 1, side, side)
    shape = stds.shape[1:]
    unit = Problem("unit", "inpaint", torch.zeros_like(stds), stds, torch.tensor([1.0]), torch.full(shape, 0.5))
    unit.mask = torch.ones(shape)  # repaint every pixel: the unconditional chain
    pipe = make_pipeline(unit, scheduler)
    captured = {}

    def keep_last_level(pipeline, i, t, kwargs):  # after step i the latents sit at timesteps[i + 1]
        if i == steps - 2:
            captured["x"] = kwargs["latents"].double()
        return kwargs

    pipe(
        unit.image,
        unit.mask,
        batch_size=samples,
        num_inference_steps=steps,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        method="smc",
        num_particles=1,
        callback_on_step_end=keep_last_level,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    view = pipe.scheduler_sde()
    last = pipe.sampling_scheduler.timesteps[-1]
    m, s = (float(c[0]) for c in view.marginal_coeffs(view.continuous(last, 1, captured["x"])))
    sigma2 = (s / m) ** 2
    x = (captured["x"] / m).view(samples, len(STDS), COORDS_PER_STD)
    exact = torch.tensor(STDS, dtype=torch.float64) ** 2 + sigma2
    return (x.var(0).mean(1) / exact).tolist(), sigma2


def chain_problem(problem: Problem, ratios: list[float], sigma2: float) -> Problem:
    """``problem`` with every variance ``v`` replaced by ``v (rho v + sigma^2) / (v + sigma^2)``, ``rho`` interpolated
    in log std: where SMC's target puts the observation (see the module docstring)."""
    log_grid = torch.log(torch.tensor(STDS, dtype=torch.float64))
    rho = torch.tensor(ratios, dtype=torch.float64)
    s = problem.stds.double().clamp(STDS[0], STDS[-1])
    pos = torch.bucketize(torch.log(s), log_grid).clamp(1, len(STDS) - 1)
    lo, hi = log_grid[pos - 1], log_grid[pos]
    frac = (torch.log(s) - lo) / (hi - lo)
    r = rho[pos - 1] + frac * (rho[pos] - rho[pos - 1])
    v = problem.stds.double() ** 2
    chain = copy.copy(problem)
    chain.stds = (v * (r * v + sigma2) / (v + sigma2)).sqrt().float()
    return chain


def floor_rows(ratios: dict[str, dict[int, tuple[list[float], float]]], samples: int) -> list[dict]:
    """Per problem of both sets, SMC's target at :data:`FLOOR_STEPS` under each scheduler and its TV to the exact
    posterior (also in units of the Monte-Carlo noise of ``samples`` draws)."""
    rows = []
    for group, problems in (("development", tuning_problems()), ("held-out", held_out_problems())):
        for problem in problems:
            exact = problem.posterior_weights()
            noise = monte_carlo_noise(problem, samples)["tv"]
            row = {"set": group, "problem": problem.name, "exact": [round(float(w), 3) for w in exact]}
            for scheduler, by_steps in ratios.items():
                rho, sigma2 = by_steps[FLOOR_STEPS]
                chain = chain_problem(problem, rho, sigma2).posterior_weights()
                tv = 0.5 * float((chain - exact).abs().sum())
                row[f"{scheduler} {FLOOR_STEPS}"] = {
                    "chain_posterior": [round(float(w), 3) for w in chain],
                    "tv": round(tv, 4),
                    "tv_over_noise": round(tv / noise, 2),
                }
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="chain outputs per variance measurement")
    parser.add_argument("--noise-samples", type=int, default=256, help="draws the Monte-Carlo noise is quoted for")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "smc_chain_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios: dict[str, dict[int, tuple[list[float], float]]] = {}
    standard_error = math.sqrt(2 / args.samples / COORDS_PER_STD)
    print(f"chain variance / exact marginal variance at the last level (standard error about {standard_error:.3f})")
    print(f"| scheduler | steps | sigma there | {' | '.join(f'std {s}' for s in STDS)} |")
    print("|---|---|---|" + "---|" * len(STDS))
    for scheduler in DEFAULT_SCHEDULERS:
        ratios[scheduler] = {}
        for steps in STEPS:
            rho, sigma2 = variance_ratios(scheduler, steps, args.samples)
            ratios[scheduler][steps] = (rho, sigma2)
            cells = " | ".join(f"{r:.3f}" for r in rho)
            print(f"| {scheduler} | {steps} | {math.sqrt(sigma2):.4f} | {cells} |", flush=True)
    rows = floor_rows(ratios, args.noise_samples)
    cells = [f"{s} {FLOOR_STEPS}" for s in DEFAULT_SCHEDULERS]
    print(f"\nTV of SMC's target to the exact posterior / Monte-Carlo noise of {args.noise_samples} draws")
    print(f"| set | problem | exact posterior | {' | '.join(cells)} |")
    print("|---|---|---|" + "---|" * len(cells))
    for row in rows:
        values = " | ".join(f"{row[c]['tv_over_noise']:.1f}" for c in cells)
        print(f"| {row['set']} | {row['problem']} | {'/'.join(f'{w:.2f}' for w in row['exact'])} | {values} |")
    for cell in cells:
        over = [r["problem"] for r in rows if r[cell]["tv_over_noise"] > 2]
        print(f"{cell}: floor above 2x the noise on {len(over)} of {len(rows)} problems {over}")
    measured = {
        scheduler: {steps: {"rho": rho, "sigma": math.sqrt(sigma2)} for steps, (rho, sigma2) in by_steps.items()}
        for scheduler, by_steps in ratios.items()
    }
    write_report(args.out, {"stds": list(STDS), "samples": args.samples, "variance_ratios": measured, "floor": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
