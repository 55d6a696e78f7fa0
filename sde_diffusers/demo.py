"""The built-in demo (``make demo``): sample with every scheduler from an exact score and report accuracy.

The data is a two-component Gaussian mixture of 4x4 grayscale "images" whose perturbed scores are known
in closed form, so every number below measures the sampler alone: a correct sampler reproduces the mixture's
mean, std and mode weights up to sampling error.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from .schedulers import SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler
from .toy import ExactScoreModel, GaussianMixture

CONFIGS = [
    ("VE", VESDEScheduler, {"predictor": "reverse_diffusion", "corrector": "langevin"}),
    ("VE", VESDEScheduler, {"predictor": "ancestral", "corrector": "none"}),
    ("VE", VESDEScheduler, {"predictor": "euler_maruyama", "corrector": "annealed_langevin"}),
    ("VP", VPSDEScheduler, {"predictor": "euler_maruyama", "corrector": "none"}),
    ("VP", VPSDEScheduler, {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
    ("VP", VPSDEScheduler, {"predictor": "ancestral", "corrector": "none"}),
    ("sub-VP", SubVPSDEScheduler, {"predictor": "euler_maruyama", "corrector": "none"}),
    ("sub-VP", SubVPSDEScheduler, {"predictor": "ancestral", "corrector": "langevin", "snr": 0.16}),
]


def demo_data() -> GaussianMixture:
    """Two 4x4 patterns (a bright top half, a bright left half) with 30/70 weights."""
    top = torch.zeros(1, 4, 4)
    top[:, :2] = 0.8
    left = torch.zeros(1, 4, 4)
    left[:, :, :2] = 0.8
    return GaussianMixture(torch.stack([top - 0.4, left - 0.4]), 0.1, torch.tensor([0.3, 0.7]))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 64, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equally sized sample sets."""
    gen = torch.Generator().manual_seed(seed)
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(0)
    pb, _ = (b @ dirs).sort(0)
    return float((pa - pb).abs().mean())


@torch.no_grad()
def run(num_samples: int, steps: int, seed: int) -> list[dict]:
    data = demo_data()
    exact = data.sample(num_samples, generator=torch.Generator().manual_seed(seed + 1))
    floor = sliced_wasserstein(exact, data.sample(num_samples, generator=torch.Generator().manual_seed(seed + 2)))
    rows = [{"sde": "exact", "sampler": "independent exact draws", "nfe": 0, "seconds": 0.0, "sw": floor}]
    for sde_name, cls, kwargs in CONFIGS:
        scheduler = cls(**kwargs)
        sde_type = {"VE": "ve", "VP": "vp", "sub-VP": "subvp"}[sde_name]
        prediction = "score" if sde_type == "ve" else "epsilon"
        model = ExactScoreModel(data.means.tolist(), 0.1, data.weights.tolist(), sde_type=sde_type, prediction_type=prediction)
        gen = torch.Generator().manual_seed(seed)
        scheduler.set_timesteps(steps)
        x = torch.randn(num_samples, 1, 4, 4, generator=gen) * scheduler.init_noise_sigma
        start = time.perf_counter()
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x, generator=gen).prev_sample
        seconds = time.perf_counter() - start
        top_weight = float(((x[:, 0, :2].mean((1, 2)) - x[:, 0, 2:].mean((1, 2))) > 0.4).double().mean())
        rows.append(
            {
                "sde": sde_name,
                "sampler": f"{kwargs['predictor']} + {kwargs['corrector']}",
                "nfe": len(scheduler.timesteps),
                "seconds": seconds,
                "sw": sliced_wasserstein(x, exact),
                "mean_err": float((x.mean(0) - data.mean).abs().max()),
                "std_ratio": float((x.std(0) / data.std).mean()),
                "top_weight": top_weight,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(__doc__)
    rows = run(args.num_samples, args.steps, args.seed)
    se = math.sqrt(0.3 * 0.7 / args.num_samples)
    print(f"{args.num_samples} samples, {args.steps} noise levels; truth: mode weight 0.300 (+-{se:.3f}), std ratio 1.000\n")
    print(f"{'SDE':7s} {'sampler':34s} {'NFE':>5s} {'sliced W1':>10s} {'max|mean err|':>14s} {'std ratio':>10s} {'mode weight':>12s} {'s':>6s}")
    for r in rows:
        if r["nfe"] == 0:
            print(f"{r['sde']:7s} {r['sampler']:34s} {'-':>5s} {r['sw']:10.4f}")
            continue
        print(
            f"{r['sde']:7s} {r['sampler']:34s} {r['nfe']:5d} {r['sw']:10.4f} {r['mean_err']:14.4f} "
            f"{r['std_ratio']:10.3f} {r['top_weight']:12.3f} {r['seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
