"""Cost of the DCT Gaussian blur against blur strength, beside scipy's sampled-kernel filter.

For every image size and blur sigma (0.5 px up to the image size) it times, on a batch of RGB images:

* ``dct``: :class:`sde_diffusers.corruption.DCTBlur` with one sigma for the batch (a sampling step);
* ``dct_per_sample``: the same with a different sigma per image (a training batch);
* ``scipy``: ``scipy.ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="reflect")`` (default truncate 4).

The DCT blur is two small matrix products whose size depends only on the image, so its cost is flat in
sigma; scipy's kernel has ``2 * ceil(4 sigma) + 1`` taps, so its cost grows with sigma. Prints a table and
writes ``benchmarks/results/blur_cost.json``.

    python benchmarks/blur_cost.py [--sizes 32 64 128] [--batch 8] [--repeats 15] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.ndimage
import torch

from sde_diffusers.corruption import DCTBlur

SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: torch.device | None = None) -> float:
    """Best (minimum) wall time of ``fn()`` in milliseconds, after two warm-up calls.

    The minimum, as ``timeit`` recommends: on a shared machine the other runs measure the neighbours' load.
    """
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device is not None:
            sync(device)
        start = time.perf_counter()
        fn()
        if device is not None:
            sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (scipy is single-threaded)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "blur_cost.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    blur = DCTBlur()
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        x_np = rng.random((args.batch, args.channels, size, size), dtype=np.float32)
        x = torch.from_numpy(x_np).to(device)
        for sigma in (s for s in SIGMAS if s <= size):
            per_sample = torch.linspace(0.5 * sigma, sigma, args.batch, device=device)
            dct_ms = best_time(lambda x=x, s=sigma: blur(x, s), args.repeats, device)
            dct_ps_ms = best_time(lambda x=x, s=per_sample: blur(x, s), args.repeats, device)
            scipy_ms = best_time(
                lambda x=x_np, s=sigma: scipy.ndimage.gaussian_filter(x, (0, 0, s, s), mode="reflect"),
                args.repeats,
            )
            ref = scipy.ndimage.gaussian_filter(x_np.astype(np.float64), (0, 0, sigma, sigma), mode="reflect")
            max_abs = float(np.abs(blur(x, sigma).double().cpu().numpy() - ref).max())
            rows.append(
                {
                    "size": size,
                    "sigma": sigma,
                    "dct_ms": dct_ms,
                    "dct_per_sample_ms": dct_ps_ms,
                    "scipy_ms": scipy_ms,
                    "max_abs_diff_vs_scipy": max_abs,
                }
            )

    header = (
        f"{'size':>5} {'sigma':>6} {'dct ms':>9} {'dct/sample ms':>14} "
        f"{'scipy ms':>10} {'scipy/dct':>10} {'max|diff|':>10}"
    )
    print(
        f"batch {args.batch} x {args.channels} channels, float32, {device}, torch threads {args.threads}, "
        f"best of {args.repeats}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['size']:>5} {r['sigma']:>6g} {r['dct_ms']:>9.3f} {r['dct_per_sample_ms']:>14.3f} "
            f"{r['scipy_ms']:>10.3f} {r['scipy_ms'] / r['dct_ms']:>10.1f} {r['max_abs_diff_vs_scipy']:>10.1e}"
        )
    summary = {}
    for size in args.sizes:
        sel = [r for r in rows if r["size"] == size]
        summary[str(size)] = {
            "dct_max_over_min": max(r["dct_ms"] for r in sel) / min(r["dct_ms"] for r in sel),
            "dct_per_sample_max_over_min": max(r["dct_per_sample_ms"] for r in sel)
            / min(r["dct_per_sample_ms"] for r in sel),
            "scipy_max_over_min": max(r["scipy_ms"] for r in sel) / min(r["scipy_ms"] for r in sel),
        }
        print(
            f"size {size}: slowest/fastest over sigma: dct {summary[str(size)]['dct_max_over_min']:.2f}, "
            f"dct per-sample {summary[str(size)]['dct_per_sample_max_over_min']:.2f}, "
            f"scipy {summary[str(size)]['scipy_max_over_min']:.2f}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "blur_cost",
        "config": {
            "sizes": args.sizes,
            "batch": args.batch,
            "channels": args.channels,
            "repeats": args.repeats,
            "threads": args.threads,
            "device": str(device),
            "dtype": "float32",
            "scipy_truncate": 4.0,
            "timing": "best of repeats, milliseconds per batch",
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "rows": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
