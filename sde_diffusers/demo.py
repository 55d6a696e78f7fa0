"""The built-in demo (``make demo``): train a tiny score model on handwritten digits on the CPU, sample, evaluate.

Two sections:

1. Sampler check (a few seconds): every scheduler samples a two-component Gaussian mixture of 4x4 "images"
   from its *exact* score, so the numbers measure the samplers alone (a correct sampler reproduces the mixture's
   mean, std and mode weights up to sampling error). ``--exact`` runs only this section, at full size.
2. Training (a few minutes): the trainer (``sde_diffusers.training``) fits a tiny DDPM++ to scikit-learn's 8x8
   digits with the VP SDE and continuous denoising score matching, exports the EMA weights as a pipeline, and
   then the demo

   * samples a grid with the predictor-corrector sampler and writes it as a PNG,
   * reports held-out bits/dim (probability-flow ODE, uniform dequantization) next to a full-covariance
     Gaussian fitted to the same training images,
   * reports a domain FID against the held-out digits (features of the shipped digits classifier) next to the
     FID between the training and held-out digits themselves.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time

import torch

from .data import load_image_data
from .evaluation import extract_features, frechet_distance, load_feature_extractor
from .pipelines import ScoreSdePipeline
from .schedulers import SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler
from .toy import ExactScoreModel, GaussianMixture
from .training import TrainingConfig, train

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


# ---------------------------------------------------------------------------------------------------------
# Section 1: samplers against an exact score
# ---------------------------------------------------------------------------------------------------------
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
    """Sample the mixture with every configuration of :data:`CONFIGS`; one row of statistics each."""
    data = demo_data()
    exact = data.sample(num_samples, generator=torch.Generator().manual_seed(seed + 1))
    floor = sliced_wasserstein(exact, data.sample(num_samples, generator=torch.Generator().manual_seed(seed + 2)))
    rows = [{"sde": "exact", "sampler": "independent exact draws", "nfe": 0, "seconds": 0.0, "sw": floor}]
    for sde_name, cls, kwargs in CONFIGS:
        scheduler = cls(**kwargs)
        sde_type = {"VE": "ve", "VP": "vp", "sub-VP": "subvp"}[sde_name]
        prediction = "score" if sde_type == "ve" else "epsilon"
        model = ExactScoreModel(
            data.means.tolist(), 0.1, data.weights.tolist(), sde_type=sde_type, prediction_type=prediction
        )
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


def print_exact_table(num_samples: int, steps: int, seed: int) -> None:
    rows = run(num_samples, steps, seed)
    se = math.sqrt(0.3 * 0.7 / num_samples)
    print(f"{num_samples} samples, {steps} noise levels; truth: mode weight 0.300 (+-{se:.3f}), std ratio 1.000\n")
    print(
        f"{'SDE':7s} {'sampler':34s} {'NFE':>5s} {'sliced W1':>10s} {'max|mean err|':>14s} {'std ratio':>10s} "
        f"{'mode weight':>12s} {'s':>6s}"
    )
    for r in rows:
        if r["nfe"] == 0:
            print(f"{r['sde']:7s} {r['sampler']:34s} {'-':>5s} {r['sw']:10.4f}")
            continue
        print(
            f"{r['sde']:7s} {r['sampler']:34s} {r['nfe']:5d} {r['sw']:10.4f} {r['mean_err']:14.4f} "
            f"{r['std_ratio']:10.3f} {r['top_weight']:12.3f} {r['seconds']:6.1f}"
        )


# ---------------------------------------------------------------------------------------------------------
# Section 2: train on digits
# ---------------------------------------------------------------------------------------------------------
def gaussian_baseline_bits_per_dim(train: torch.Tensor, test: torch.Tensor, seed: int = 0) -> float:
    """Held-out bits/dim of a full-covariance Gaussian fitted to uniformly dequantized training images.

    ``train`` / ``test`` are uint8 ``(N, C, H, W)``; data are mapped to ``[-1, 1]`` as for the score model, so the
    offset is 7 bits (256 bins over a range of 2).
    """
    gen = torch.Generator().manual_seed(seed)

    def dequantize(images: torch.Tensor) -> torch.Tensor:
        u = torch.rand(images.shape, generator=gen, dtype=torch.float64)
        return ((images.double() + u) / 256.0 * 2.0 - 1.0).reshape(len(images), -1)

    x, y = dequantize(train), dequantize(test)
    dist = torch.distributions.MultivariateNormal(x.mean(0), covariance_matrix=torch.cov(x.T))
    dims = x.shape[1]
    return float(-dist.log_prob(y).mean() / (dims * math.log(2.0)) + 7.0)


def domain_fid(samples_01: torch.Tensor, reference_01: torch.Tensor) -> float:
    """Frechet distance in the feature space of the shipped digits classifier (images in ``[0, 1]``)."""
    extractor = load_feature_extractor("digits")
    fake = extract_features(extractor, samples_01).features
    real = extract_features(extractor, reference_01).features
    return float(frechet_distance(fake, real))


def train_digits(
    output_dir: str, steps: int, seed: int, num_fid_samples: int, sample_steps: int, bpd_images: int = 360
) -> dict:
    """Train, export, sample and evaluate; return the numbers the demo prints."""
    config = TrainingConfig(
        dataset_name="digits",
        model_preset="ddpmpp-tiny",
        sde="vp",
        train_batch_size=128,
        max_train_steps=steps,
        learning_rate=2e-3,
        lr_warmup_steps=100,
        ema_decay=0.999,
        seed=seed,
        output_dir=output_dir,
        overwrite_output_dir=True,
        checkpointing_steps=0,
        save_final_checkpoint=False,
        logging_steps=max(1, steps // 20),
        num_sample_images=64,
        num_inference_steps=sample_steps,
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=0.16,
        eval_bpd_images=bpd_images,
        eval_split="test",
    )
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start

    train_data = load_image_data("digits", split="train")
    test_data = load_image_data("digits", split="test")
    pipeline = ScoreSdePipeline.from_pretrained(result.pipeline_dir)  # the exported folder, as a user loads it
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed + 10)
    samples = pipeline(
        batch_size=num_fid_samples, num_inference_steps=sample_steps, generator=generator, output_type="pt"
    ).images
    return {
        "result": result,
        "train_seconds": seconds,
        "gaussian_bpd": gaussian_baseline_bits_per_dim(train_data.images, test_data.images, seed),
        "fid": domain_fid(samples, test_data.to_unit_range()),
        "fid_train_vs_test": domain_fid(train_data.to_unit_range(), test_data.to_unit_range()),
        "num_fid_samples": num_fid_samples,
        "sample_nfe": 2 * sample_steps,
        "bpd_images": min(bpd_images, len(test_data)),
    }


def print_training_report(numbers: dict, png_path: str) -> None:
    r = numbers["result"]
    print(
        f"trained {r.global_step} steps in {numbers['train_seconds']:.0f} s "
        f"({r.steps_per_second or float('nan'):.1f} steps/s); loss {r.initial_loss:.3f} -> {r.final_loss:.3f}"
    )
    curve = "  ".join(f"{step}:{loss:.3f}" for step, loss in r.loss_history[:: max(1, len(r.loss_history) // 8)])
    print(f"loss curve (step:loss)  {curve}")
    print(f"sample grid (PC sampler: reverse diffusion + Langevin, {numbers['sample_nfe']} NFE): {png_path}")
    print()
    heading = f"held-out digits ({numbers['bpd_images']} images)"
    print(f"{heading:44s} {'bits/dim':>10s}")
    print(f"{'score model (probability-flow ODE)':44s} {r.bits_per_dim:7.3f} +- {r.bits_per_dim_stderr:.3f}")
    print(f"{'full-covariance Gaussian, same training data':44s} {numbers['gaussian_bpd']:7.3f}")
    print()
    print(f"{'domain FID vs held-out digits (digits classifier features)':60s} {'FID':>7s}")
    label = f"score model, {numbers['num_fid_samples']} samples"
    print(f"{label:60s} {numbers['fid']:7.2f}")
    print(f"{'training digits (1437) vs held-out (floor)':60s} {numbers['fid_train_vs_test']:7.2f}")
    print(
        f"\nthe exported pipeline: {r.pipeline_dir}  (ScoreSdePipeline.from_pretrained(...) or "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True))"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact", action="store_true", help="only the exact-score sampler table, at full size")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (batch 128)")
    parser.add_argument("--sample-steps", type=int, default=250, help="noise levels of the PC sampler")
    parser.add_argument("--fid-samples", type=int, default=360, help="samples for the domain FID")
    parser.add_argument("--bpd-images", type=int, default=360, help="held-out images for bits/dim (at most 360)")
    parser.add_argument(
        "--output-dir",
        default=os.path.join("outputs", "demo"),
        help="where the run, the exported pipeline and the PNG go",
    )
    parser.add_argument("--num-samples", type=int, default=None, help="exact-score table: samples per sampler")
    parser.add_argument("--exact-steps", type=int, default=None, help="exact-score table: noise levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (the tiny model gains little from more; on a busy machine more threads can be much slower)",
    )
    args = parser.parse_args(argv)
    if args.fid_samples <= 64:
        parser.error("--fid-samples must exceed the 64 feature dimensions of the digits classifier")
    torch.set_num_threads(args.threads)

    print("== 1. samplers against an exact score (Gaussian mixture of 4x4 images) ==")
    if args.exact:
        print_exact_table(args.num_samples or 2000, args.exact_steps or 200, args.seed)
        return
    print_exact_table(args.num_samples or 500, args.exact_steps or 100, args.seed)

    print("\n== 2. train a tiny DDPM++ (VP SDE) on scikit-learn's 8x8 digits ==")
    numbers = train_digits(
        os.path.join(args.output_dir, "digits-vp"),
        args.steps,
        args.seed,
        args.fid_samples,
        args.sample_steps,
        args.bpd_images,
    )
    png = os.path.join(args.output_dir, "digits_samples.png")
    shutil.copyfile(os.path.join(numbers["result"].pipeline_dir, "samples.png"), png)
    print()
    print_training_report(numbers, png)


if __name__ == "__main__":
    main()
