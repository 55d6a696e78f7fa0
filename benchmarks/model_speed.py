"""Speed of our NCSN++ / DDPM++ against Diffusers' ``UNet2DModel`` of the same structure, side by side in one run.

``--setting`` picks the networks (paper sizes, channel counts and block layouts):

* ``cifar10-ncsnpp`` (default), 32x32x3, nf 128, (1, 2, 2, 2), 4 residual blocks per level, attention at 16 px:
  ``ours (paper preset)`` = ``NCSNppModel.from_preset("ncsnpp-cifar10")`` (residual input pyramid, the released
  CIFAR-10 checkpoints), ``ours (google/ncsnpp structure)`` (output / input skip pyramids, as the google/ncsnpp-*
  repos) and Diffusers' ``UNet2DModel`` with ``SkipDownBlock2D`` / ``AttnSkip*`` blocks and a Fourier embedding;
* ``celebahq256-ncsnpp``, 256x256x3: ours = the exact converted architecture of
  ``ve/celebahq_256_ncsnpp_continuous`` (nf 128, (1, 1, 2, 2, 2, 2, 2), 2 blocks, skip pyramids) against
  ``UNet2DModel`` with the block layout of google/ncsnpp-celebahq-256;
* ``cifar10-ddpm``: ours = the converted original DDPM network (``vp/ddpm/cifar10``) against ``UNet2DModel`` with
  the layout of google/ddpm-cifar10-32 (the same network in Diffusers);
* ``cifar10-ddpmpp``: ours = DDPM++ cont. (``vp/cifar10_ddpmpp_continuous``, BigGAN blocks, 4 per level) against
  the DDPM-layout ``UNet2DModel`` with 4 blocks per level (Diffusers has no BigGAN-block counterpart).

For each it times a forward pass (eval mode, no grad) and a forward + backward pass (train mode, mean-square loss)
on the CPU (1 thread unless ``--threads``) and on CUDA when there is a GPU, where it also records the peak memory.
Models are timed in interleaved rounds (one call of each per round), so a load change on a shared machine hits all
of them alike; the table reports the median over rounds and the ratio to Diffusers from the same rounds. On the CPU
the ratio is taken from process CPU time (on an oversubscribed machine wall time also counts the wait for a core),
on CUDA from wall time.

    python benchmarks/model_speed.py [--setting cifar10-ncsnpp] [--batch 8] [--rounds 5] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from _report import write_report
from diffusers import UNet2DModel

from sde_diffusers import NCSNppModel
from sde_diffusers.convert.score_sde_plan import plan_score_sde_conversion

REFERENCE = "diffusers UNet2DModel"


def diffusers_ncsnpp(dropout: float, size: int = 32) -> UNet2DModel:
    """UNet2DModel with the block layout of google/ncsnpp-celebahq-256 (attention at 16 px), at ``size`` px."""
    channels = (128, 256, 256, 256) if size == 32 else (128, 128, 256, 256, 256, 256, 256)
    attention_level = int(math.log2(size // 16))  # the level at 16 px
    down = ["AttnSkipDownBlock2D" if i == attention_level else "SkipDownBlock2D" for i in range(len(channels))]
    up = [
        "AttnSkipUpBlock2D" if i == len(channels) - 1 - attention_level else "SkipUpBlock2D"
        for i in range(len(channels))
    ]
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=4 if size == 32 else 2,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        time_embedding_type="fourier",
        mid_block_scale_factor=math.sqrt(2.0),
        norm_eps=1e-6,
        norm_num_groups=None,
        act_fn="silu",
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=1,
        downsample_padding=1,
        dropout=dropout,
    )


def diffusers_ddpm(dropout: float, layers_per_block: int = 2) -> UNet2DModel:
    """UNet2DModel with the layout of google/ddpm-cifar10-32 (attention at 16 px)."""
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=dropout,
    )


def _converted(config: str, dropout: float) -> torch.nn.Module:
    plan = plan_score_sde_conversion(config)
    return plan.model_class(**{**plan.model_config, "dropout": dropout})


# setting -> (image size, what the networks take as time: "sigma" or "index", the models by name)
SETTINGS = {
    "cifar10-ncsnpp": (
        32,
        "sigma",
        lambda d: {
            "ours (paper preset)": NCSNppModel.from_preset("ncsnpp-cifar10", dropout=d),
            "ours (google/ncsnpp structure)": NCSNppModel.from_preset(
                "ncsnpp-cifar10", dropout=d, progressive="output_skip", progressive_input="input_skip"
            ),
            REFERENCE: diffusers_ncsnpp(d),
        },
    ),
    "celebahq256-ncsnpp": (
        256,
        "sigma",
        lambda d: {
            "ours (ve/celebahq_256_ncsnpp_continuous)": _converted("ve/celebahq_256_ncsnpp_continuous", d),
            REFERENCE: diffusers_ncsnpp(d, size=256),
        },
    ),
    "cifar10-ddpm": (
        32,
        "index",
        lambda d: {"ours (vp/ddpm/cifar10)": _converted("vp/ddpm/cifar10", d), REFERENCE: diffusers_ddpm(d)},
    ),
    "cifar10-ddpmpp": (
        32,
        "index",
        lambda d: {
            "ours (vp/cifar10_ddpmpp_continuous)": _converted("vp/cifar10_ddpmpp_continuous", d),
            REFERENCE: diffusers_ddpm(d, layers_per_block=4),
        },
    ),
}


def build_models(dropout: float, setting: str = "cifar10-ncsnpp") -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return SETTINGS[setting][2](dropout)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model, x, sigma):
    with torch.no_grad():
        return model(x, sigma).sample


def _forward_backward(model, x, sigma):
    model.zero_grad(set_to_none=True)
    loss = model(x, sigma).sample.square().mean()
    loss.backward()
    return loss


def time_models(
    models, device, batch: int, rounds: int, warmup: int, size: int = 32, time_input: str = "sigma"
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """Wall and process-CPU seconds per call and peak CUDA memory in MiB (NaN on the CPU):
    ``(wall[name][pass], cpu[name][pass], peak[name][pass])``."""
    x = torch.randn(batch, 3, size, size, device=device)
    if time_input == "sigma":
        sigma = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), batch, device=device))
    else:
        sigma = torch.linspace(0.0, 999.0, batch, device=device)
    times = {name: {"forward": [], "forward_backward": []} for name in models}
    cpu_times = {name: {"forward": [], "forward_backward": []} for name in models}
    peak = {name: {"forward": math.nan, "forward_backward": math.nan} for name in models}
    for kind, fn, train in (("forward", _forward, False), ("forward_backward", _forward_backward, True)):
        for name, model in models.items():
            model.to(device).train(train)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            for _ in range(warmup):
                fn(model, x, sigma)
            if device.type == "cuda":
                peak[name][kind] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        _sync(device)
        for _ in range(rounds):
            for name, model in models.items():
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                fn(model, x, sigma)
                _sync(device)
                times[name][kind].append(time.perf_counter() - start)
                cpu_times[name][kind].append(time.process_time() - cpu_start)
    for model in models.values():
        model.to("cpu")
    return times, cpu_times, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=list(SETTINGS), default="cifar10-ncsnpp", help="which networks")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one call of each model per round)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cuda-rounds", type=int, default=30)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable)")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout of every model (the paper's 0.1)")
    parser.add_argument("--out", default=None, help="default results/model_speed[_SETTING].json")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the peak memory is read during warm-up)")
    suffix = "" if args.setting == "cifar10-ncsnpp" else "_" + args.setting.replace("-", "_")
    args.out = args.out or str(Path(__file__).parent / "results" / f"model_speed{suffix}.json")
    torch.set_num_threads(args.threads)
    size, time_input, _ = SETTINGS[args.setting]
    models = build_models(args.dropout, args.setting)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    reference = REFERENCE
    rows = []
    for device_name in [d.strip() for d in args.devices.split(",") if d.strip()]:
        if device_name == "cuda" and not torch.cuda.is_available():
            print("cuda: no GPU, skipped")
            continue
        device = torch.device(device_name)
        rounds = args.cuda_rounds if device.type == "cuda" else args.rounds
        times, cpu_times, peak = time_models(models, device, args.batch, rounds, args.warmup, size, time_input)
        basis = cpu_times if device.type == "cpu" else times
        for name in models:
            for kind in ("forward", "forward_backward"):
                ratios = [a / b for a, b in zip(basis[name][kind], basis[reference][kind], strict=True)]
                wall_ratios = [a / b for a, b in zip(times[name][kind], times[reference][kind], strict=True)]
                rows.append(
                    {
                        "device": device_name,
                        "model": name,
                        "pass": kind,
                        "params": params[name],
                        "median_ms": 1e3 * statistics.median(times[name][kind]),
                        "min_ms": 1e3 * min(times[name][kind]),
                        "median_cpu_ms": 1e3 * statistics.median(cpu_times[name][kind]),
                        "ratio_to_diffusers": statistics.median(ratios),
                        "ratio_basis": "cpu time" if device.type == "cpu" else "wall time",
                        "wall_ratio_to_diffusers": statistics.median(wall_ratios),
                        "peak_cuda_mib": None if math.isnan(peak[name][kind]) else peak[name][kind],
                        "rounds": rounds,
                    }
                )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(
        f"{args.setting} at {size}x{size}x3, batch {args.batch}; CPU threads {args.threads}"
        + (f"; GPU {gpu}" if gpu else "")
    )
    print(
        f"{'device':6s} {'model':40s} {'params':>8s} {'pass':>17s} {'wall ms':>9s} {'CPU ms':>9s} "
        f"{'vs diffusers':>13s} {'(wall)':>7s} {'peak MiB':>9s}"
    )
    for r in rows:
        print(
            f"{r['device']:6s} {r['model']:40s} {r['params'] / 1e6:7.1f}M {r['pass']:>17s} {r['median_ms']:9.0f} "
            f"{r['median_cpu_ms']:9.0f} {r['ratio_to_diffusers']:12.2f}x {r['wall_ratio_to_diffusers']:6.2f}x "
            + ("" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:9.0f}")
        )
    out = {
        "benchmark": "model_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        + (f", {gpu}" if gpu else ""),
        "args": vars(args),
        "rows": rows,
    }
    write_report(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
