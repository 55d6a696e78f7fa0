"""Accuracy of the conditional samplers against exact posteriors on Gaussian-mixture data.

For data ``x_0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` observed through an orthogonal projection ``y = P x_0``, the
posterior is again a mixture with weights ``w_k N(P y; P mu_k, P diag(s_k^2) P) / Z``: the exact answer. The
score model is :class:`~sde_diffusers.ExactScoreModel` (exact perturbed scores), so every error below belongs to the
conditional sampler. Each sample is assigned to the component most likely to have produced it, and the table reports
the sampled mode weights against the exact posterior weights (total-variation distance, with the Monte-Carlo standard
error of a perfect sampler for scale), for inpainting and for colorization (ambiguous colours of equal grey level).

Run: ``python benchmarks/conditional_accuracy.py [--samples 2000] [--steps 200] [--quick]``; writes
``benchmarks/results/conditional_accuracy.json`` and the figure ``conditional_accuracy.png`` next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from sde_diffusers import ExactScoreModel, GaussianMixture, VESDEScheduler, VPSDEScheduler
from sde_diffusers.pipelines import (
    ScoreSdeColorizationPipeline,
    ScoreSdeInpaintPipeline,
    decoupled_colour_basis,
)


# ---------------------------------------------------------------------------------------------------------
# Problems with exact posteriors
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A mixture, an observation and its exact posterior mode weights."""

    name: str
    kind: str  # "inpaint" or "colorize"
    means: torch.Tensor  # (K, C, H, W) in the network range [-1, 1]
    stds: torch.Tensor  # (K, C, H, W)
    weights: torch.Tensor  # (K,)
    image: torch.Tensor  # inpaint: (C, H, W) in [0, 1]; colorize: grey (1, H, W) in [0, 1]
    mask: torch.Tensor | None = None  # inpaint: (1, H, W), 1 = repaint

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.means, self.stds, self.weights)

    def posterior_weights(self) -> torch.Tensor:
        """Exact ``p(k | y)``."""
        mu, var = self.means.double(), self.stds.double() ** 2
        if self.kind == "inpaint":
            keep = (1 - self.mask.double()).expand_as(mu[0]).bool()
            y = (2 * self.image.double() - 1)[keep]
            m, v = mu[:, keep], var[:, keep]
        else:
            q = decoupled_colour_basis()[0].view(1, 3, 1, 1)  # observed: q0 . x per pixel
            y = ((2 * self.image.double() - 1) * math.sqrt(3.0)).flatten()  # q0 . x = sqrt(3) * mean of x
            m = (q * mu).sum(1).flatten(1)
            v = (q**2 * var).sum(1).flatten(1)
        logp = torch.log(self.weights.double()) - 0.5 * (((y - m) ** 2) / v + torch.log(2 * math.pi * v)).sum(1)
        return torch.softmax(logp, 0)

    def assign(self, samples01: torch.Tensor) -> torch.Tensor:
        """Index of the component most likely to have produced each sample (``[0, 1]`` images)."""
        x = (2 * samples01.double() - 1).flatten(1)
        mu, var = self.means.double().flatten(1), self.stds.double().flatten(1) ** 2
        logp = torch.log(self.weights.double()) - 0.5 * (((x[:, None] - mu) ** 2) / var + torch.log(var)).sum(-1)
        return logp.argmax(1)


def inpainting_problems() -> list[Problem]:
    """2x2 grayscale images, the left column observed, the right column to fill.

    ``two-modes``: the known pixels barely separate the modes (means +-0.2 with std 0.3) and the unknown pixels are
    far apart (+-0.8): the exact posterior leans 73/27, the prior is 50/50. ``unequal-prior``: the prior is 80/20
    and the observation favours the rare mode, so the exact posterior is close to even. ``three-modes``: three
    patterns whose left columns overlap.
    """
    mask = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])

    def pattern(known: float, unknown: float) -> torch.Tensor:
        return torch.tensor([[[known, unknown], [known, unknown]]])

    def stds(known: float, unknown: float, k: int) -> torch.Tensor:
        return torch.tensor([[[known, unknown], [known, unknown]]]).expand(k, 1, 2, 2).clone()

    problems = [
        Problem(
            "two-modes",
            "inpaint",
            torch.stack([pattern(0.2, 0.7), pattern(-0.2, -0.7)]),
            stds(0.3, 0.1, 2),
            torch.tensor([0.5, 0.5]),
            (pattern(0.1, 0.0) + 1) / 2,
            mask,
        ),
        Problem(
            "unequal-prior",
            "inpaint",
            torch.stack([pattern(0.2, 0.7), pattern(-0.2, -0.7)]),
            stds(0.3, 0.1, 2),
            torch.tensor([0.8, 0.2]),
            (pattern(-0.15, 0.0) + 1) / 2,
            mask,
        ),
        Problem(
            "three-modes",
            "inpaint",
            torch.stack([pattern(0.3, 0.7), pattern(0.0, -0.7), pattern(-0.3, 0.0)]),
            stds(0.25, 0.1, 3),
            torch.tensor([0.3, 0.3, 0.4]),
            (pattern(0.2, 0.0) + 1) / 2,
            mask,
        ),
    ]
    for p in problems:
        p.image = p.image.clamp(0, 1)
    return problems


def colorization_problems() -> list[Problem]:
    """2x2 colour images whose two modes (a reddish and a bluish image) have nearly the same grey level.

    The grey level is the mean of R, G and B. The modes' grey levels are +0.02 and -0.02 (network range) with a
    per-pixel grey std of 0.087, while their chroma differ by more than 1: the observed grey level is ambiguous.
    ``two-colours``: even prior, observed grey 0.04 (exact posterior about 70/30). ``unequal-prior``: prior 80/20,
    observed grey -0.06, which favours the rare mode (exact posterior about even).
    """
    red = torch.tensor([0.7, -0.3, -0.4])
    blue = torch.tensor([-0.5, -0.2, 0.5])

    def image(colour: torch.Tensor, grey: float) -> torch.Tensor:
        return (colour - colour.mean() + grey).view(3, 1, 1).expand(3, 2, 2).clone()

    means = torch.stack([image(red, 0.02), image(blue, -0.02)])
    stds = torch.full_like(means, 0.15)

    def grey(value: float) -> torch.Tensor:
        return torch.full((1, 2, 2), (value + 1) / 2)

    return [
        Problem("two-colours", "colorize", means, stds, torch.tensor([0.5, 0.5]), grey(0.04)),
        Problem("unequal-prior", "colorize", means, stds, torch.tensor([0.8, 0.2]), grey(-0.06)),
    ]


# ---------------------------------------------------------------------------------------------------------
# Running the pipelines
# ---------------------------------------------------------------------------------------------------------
SCHEDULERS = {
    "VE PC (reverse diffusion + Langevin)": lambda: VESDEScheduler(sigma_max=10.0, snr=0.16, langevin_per_sample=True),
    "VP Euler-Maruyama": lambda: VPSDEScheduler(),
    "VP DDIM (Diffusers, eta = 0)": lambda: DDIMScheduler(),
}
SDE_TYPES = {
    "VE PC (reverse diffusion + Langevin)": ("ve", {"sigma_max": 10.0}, "score"),
    "VP Euler-Maruyama": ("vp", {}, "epsilon"),
    "VP DDIM (Diffusers, eta = 0)": ("vp", {}, "epsilon"),
}
METHODS = {
    "replacement (paper)": dict(method="replacement"),
    "guidance, v = 1 (Pi-GDM)": dict(method="guidance", guidance_variance=1.0),
    "guidance, jacobian (default)": dict(method="guidance", guidance_variance="jacobian"),
    "guidance+replacement, jacobian": dict(method="guidance+replacement", guidance_variance="jacobian"),
}


def gaussian_colorization(samples: int, steps: int, schedulers: list[str]) -> list[dict]:
    """Colorize i.i.d. Gaussian pixels ``N(mu, diag(0.3, 0.1, 0.2)^2)``: the exact conditional colour given the grey
    level is Gaussian with mean ``mu + S q (y - q.mu) / (q.S q)`` and covariance ``S - S q q^T S / (q.S q)``."""
    mu = torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64)
    sd = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64)
    grey_net = 0.25
    q = decoupled_colour_basis()[0]
    cov = torch.diag(sd**2)
    y = grey_net * math.sqrt(3.0)  # q . x = sqrt(3) * mean of x
    gain = cov @ q / (q @ cov @ q)
    exact_mean = mu + gain * (y - q @ mu)
    exact_cov = cov - torch.outer(cov @ q, cov @ q) / (q @ cov @ q)
    h = w = 4
    means = mu.view(1, 3, 1, 1).expand(1, 3, h, w)
    stds = sd.view(1, 3, 1, 1).expand(1, 3, h, w)
    problem = Problem(
        "gaussian",
        "colorize",
        means.float(),
        stds.float(),
        torch.tensor([1.0]),
        torch.full((1, h, w), (grey_net + 1) / 2),
    )
    print(
        f"\ncolorize / gaussian pixels: exact conditional colour mean {exact_mean.numpy().round(3)}, "
        f"std {exact_cov.diagonal().sqrt().numpy().round(3)} (prior mean {mu.numpy()}, std {sd.numpy()})"
    )
    print(f"{'scheduler':38s} {'method':32s} {'max |mean error|':>17s} {'max |std error|':>16s} {'NFE':>5s}")
    rows = []
    for scheduler_name in schedulers:
        sde_type, sde_kwargs, prediction = SDE_TYPES[scheduler_name]
        model = ExactScoreModel(
            problem.means.tolist(),
            problem.stds.tolist(),
            sde_type=sde_type,
            sde_kwargs=sde_kwargs,
            prediction_type=prediction,
        )
        pipe = ScoreSdeColorizationPipeline(model, SCHEDULERS[scheduler_name]())
        pipe.set_progress_bar_config(disable=True)
        for method_name, method in METHODS.items():
            out = pipe(
                problem.image,
                batch_size=samples,
                num_inference_steps=steps,
                output_type="pt",
                generator=torch.Generator().manual_seed(0),
                **method,
            )
            colours = (2 * out.images.double() - 1).permute(0, 2, 3, 1).reshape(-1, 3)
            mean_err = float((colours.mean(0) - exact_mean).abs().max())
            std_err = float((colours.std(0) - exact_cov.diagonal().sqrt()).abs().max())
            print(f"{scheduler_name:38s} {method_name:32s} {mean_err:17.4f} {std_err:16.4f} {out.nfe:5d}")
            rows.append(
                {
                    "task": "colorize",
                    "problem": "gaussian",
                    "scheduler": scheduler_name,
                    "method": method_name,
                    "samples": samples,
                    "steps": steps,
                    "max_mean_error": round(mean_err, 4),
                    "max_std_error": round(std_err, 4),
                    "mc_mean_error": round(float(sd.max()) / math.sqrt(samples * h * w), 4),
                    "nfe": out.nfe,
                }
            )
    return rows


def run(problem: Problem, scheduler_name: str, method: dict, samples: int, steps: int, seed: int = 0) -> dict:
    sde_type, sde_kwargs, prediction = SDE_TYPES[scheduler_name]
    model = ExactScoreModel(
        problem.means.tolist(),
        problem.stds.tolist(),
        problem.weights.tolist(),
        sde_type=sde_type,
        sde_kwargs=sde_kwargs,
        prediction_type=prediction,
    )
    cls = ScoreSdeInpaintPipeline if problem.kind == "inpaint" else ScoreSdeColorizationPipeline
    pipe = cls(model, SCHEDULERS[scheduler_name]())
    pipe.set_progress_bar_config(disable=True)
    args = (problem.image, problem.mask) if problem.kind == "inpaint" else (problem.image,)
    start = time.perf_counter()
    out = pipe(
        *args,
        batch_size=samples,
        num_inference_steps=steps,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        **method,
    )
    seconds = time.perf_counter() - start
    k = problem.assign(out.images)
    sampled = torch.bincount(k, minlength=len(problem.weights)).double() / samples
    exact = problem.posterior_weights()
    return {
        "sampled": [round(float(v), 4) for v in sampled],
        "exact": [round(float(v), 4) for v in exact],
        "tv": round(0.5 * float((sampled - exact).abs().sum()), 4),
        "nfe": out.nfe,
        "seconds": round(seconds, 2),
    }


def plot(results: list[dict], path: str) -> None:
    """One panel per mixture problem: the sampled weight of the first mode per method and scheduler, against the
    exact posterior weight (solid line) and the prior weight (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = []
    for r in results:
        if "sampled" in r and (r["task"], r["problem"]) not in problems:
            problems.append((r["task"], r["problem"]))
    priors = {(p.kind, p.name): float(p.weights[0]) for p in inpainting_problems() + colorization_problems()}
    methods = list(METHODS)
    schedulers = [s for s in SCHEDULERS if any(r["scheduler"] == s for r in results)]
    fig, axes = plt.subplots(1, len(problems), figsize=(3.2 * len(problems), 3.6), sharey=True)
    markers = ["o", "s", "^", "D"]
    for ax, (task, name) in zip(axes, problems, strict=True):
        rows = [r for r in results if r["task"] == task and r["problem"] == name and "sampled" in r]
        ax.axhline(rows[0]["exact"][0], color="k", lw=1.5, label="exact posterior")
        ax.axhline(priors[(task, name)], color="grey", lw=1, ls=":", label="prior")
        for j, scheduler in enumerate(schedulers):
            ys = [
                next(r["sampled"][0] for r in rows if r["method"] == m and r["scheduler"] == scheduler)
                for m in methods
            ]
            ax.plot(range(len(methods)), ys, markers[j % len(markers)], ms=6, alpha=0.8, label=scheduler)
        ax.set_xticks(
            range(len(methods)),
            [m.split(" (")[0].replace(", ", "\n") for m in methods],
            fontsize=7,
            rotation=30,
        )
        ax.set_title(f"{task}: {name}", fontsize=9)
    axes[0].set_ylabel("sampled weight of mode 1")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one scheduler, fewer samples")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "conditional_accuracy.json")
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from an existing --out JSON")
    args = parser.parse_args()
    figure = os.path.splitext(args.out)[0] + ".png"
    if args.plot_only:
        with open(args.out) as fh:
            plot(json.load(fh), figure)
        return
    torch.set_num_threads(1)
    samples = 500 if args.quick else args.samples
    schedulers = list(SCHEDULERS)[:1] if args.quick else list(SCHEDULERS)
    results = []
    for problem in inpainting_problems() + colorization_problems():
        exact = problem.posterior_weights()
        # A perfect sampler's expected TV distance is about sqrt(K / (2 pi n)) (sum of K half-normal errors / 2).
        noise_tv = 0.5 * sum(math.sqrt(2 * float(p) * (1 - float(p)) / (math.pi * samples)) for p in exact)
        print(
            f"\n{problem.kind} / {problem.name}: exact posterior weights {[round(float(v), 3) for v in exact]}, "
            f"prior {problem.weights.tolist()}, Monte-Carlo TV of an exact sampler ~ {noise_tv:.3f}"
        )
        print(f"{'scheduler':38s} {'method':32s} {'sampled weights':26s} {'TV':>6s} {'NFE':>5s} {'s':>6s}")
        for scheduler_name in schedulers:
            for method_name, method in METHODS.items():
                r = run(problem, scheduler_name, method, samples, args.steps)
                print(
                    f"{scheduler_name:38s} {method_name:32s} {str(r['sampled']):26s} {r['tv']:6.3f} {r['nfe']:5d} "
                    f"{r['seconds']:6.1f}"
                )
                results.append(
                    {
                        "task": problem.kind,
                        "problem": problem.name,
                        "scheduler": scheduler_name,
                        "method": method_name,
                        "samples": samples,
                        "steps": args.steps,
                        "mc_tv": round(noise_tv, 4),
                        **r,
                    }
                )
    results += gaussian_colorization(samples, args.steps, schedulers)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nwrote {args.out}")
    plot(results, figure)


if __name__ == "__main__":
    main()
