"""The released configurations of score_sde_pytorch (Song et al., 2021), as data.

Every config of ``configs/ve``, ``configs/vp`` and ``configs/subvp`` whose network is NCSN++ / DDPM++ (``ncsnpp``)
or the original DDPM network (``ddpm``) is encoded with the sections the conversion reads -- ``model``, ``data``,
``training``, ``sampling`` -- exactly as the official ``get_config()`` builds them (the dataset defaults of
``default_{cifar10,celeba,lsun}_configs.py`` plus the file's own settings). Checkpoint folders of the official
README that are named differently from their config (``vp/cifar10_ddpm`` is ``vp/ddpm/cifar10``,
``ve/ffhq_1024_ncsnpp_continuous`` is ``ve/ffhq_ncsnpp_continuous``) are aliases.

Configs whose network this package does not implement (NCSN, NCSNv2, the DDPM network without time conditioning)
are listed in :data:`UNSUPPORTED_CONFIGS` with the reason, so asking for one fails with that reason.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "SCORE_SDE_CONFIGS",
    "CONFIG_ALIASES",
    "UNSUPPORTED_CONFIGS",
    "REPORTED_RESULTS",
    "list_score_sde_configs",
]


def _defaults(
    dataset: str, image_size: int, snr: float, sigma_max: float, num_scales: int, dropout: float, n_iters: int
) -> dict[str, dict[str, Any]]:
    """The sections of one of score_sde's ``default_*_configs.py`` that the conversion reads."""
    return {
        "training": {"continuous": True, "reduce_mean": False, "likelihood_weighting": False, "n_iters": n_iters},
        "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": snr},
        "data": {
            "dataset": dataset,
            "image_size": image_size,
            "random_flip": True,
            "centered": False,
            "uniform_dequantization": False,
            "num_channels": 3,
        },
        "model": {
            "sigma_min": 0.01,
            "sigma_max": sigma_max,
            "num_scales": num_scales,
            "beta_min": 0.1,
            "beta_max": 20.0,
            "dropout": dropout,
            "embedding_type": "fourier",
        },
    }


_CIFAR10 = _defaults("CIFAR10", 32, 0.16, 50.0, 1000, 0.1, 1300001)
_CELEBA = _defaults("CELEBA", 64, 0.17, 90.0, 1000, 0.1, 1300001)
_LSUN = _defaults("LSUN", 256, 0.075, 378.0, 2000, 0.0, 2400001)

# The model settings shared by the NCSN++ / DDPM++ files (configs/*/cifar10_ncsnpp*.py, *_ddpmpp*.py).
_NCSNPP = {
    "name": "ncsnpp",
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 4,
    "attn_resolutions": [16],
    "resamp_with_conv": True,
    "conditional": True,
    "fir": True,
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "residual",
    "progressive_combine": "sum",
    "attention_type": "ddpm",
    "init_scale": 0.0,
    "conv_size": 3,
}
# NCSN++ at 256 px (LSUN, CelebA-HQ 256, FFHQ 256): output and input skip pyramids, 7 resolutions.
_NCSNPP_256 = dict(
    _NCSNPP, ch_mult=[1, 1, 2, 2, 2, 2, 2], num_res_blocks=2, progressive="output_skip", progressive_input="input_skip"
)
# DDPM++: NCSN++ without FIR and pyramids.
_DDPMPP = dict(_NCSNPP, fir=False, progressive_input="none")
# The original DDPM network (models/ddpm.py).
_DDPM = {
    "name": "ddpm",
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "resamp_with_conv": True,
    "conditional": True,
}


def _config(
    name: str, defaults: dict, *, training: dict, sampling: dict, model: dict, data: dict | None = None
) -> dict[str, Any]:
    config = copy.deepcopy(defaults)
    config["training"].update(training)
    config["sampling"].update(sampling)
    config["model"].update(copy.deepcopy(model))
    config["data"].update(data or {})
    config["name"] = name
    return config


_PC_VE = {"method": "pc", "predictor": "reverse_diffusion", "corrector": "langevin"}
_PC_EM = {"method": "pc", "predictor": "euler_maruyama", "corrector": "none"}
_PC_ANCESTRAL = {"method": "pc", "predictor": "ancestral_sampling", "corrector": "none"}
_CENTERED = {"centered": True}


def _ve_1024(name: str, dataset: str, reduce_mean: bool) -> dict[str, Any]:
    """configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py: stand-alone configs (no dataset defaults)."""
    return {
        "name": name,
        "training": {
            "sde": "vesde",
            "continuous": True,
            "reduce_mean": reduce_mean,
            "likelihood_weighting": False,
            "n_iters": 2400001,
        },
        "sampling": dict(_PC_VE, probability_flow=False, snr=0.15, n_steps_each=1, noise_removal=True),
        "data": {
            "dataset": dataset,
            "image_size": 1024,
            "centered": False,
            "random_flip": True,
            "uniform_dequantization": False,
            "num_channels": 3,
        },
        "model": dict(
            _NCSNPP,
            scale_by_sigma=True,
            sigma_max=1348.0,
            num_scales=2000,
            ema_rate=0.9999,
            sigma_min=0.01,
            nf=16,
            ch_mult=[1, 2, 4, 8, 16, 32, 32, 32],
            num_res_blocks=1,
            dropout=0.0,
            progressive="output_skip",
            progressive_input="input_skip",
            fourier_scale=16,
            embedding_type="fourier",
        ),
    }


def _build_table() -> dict[str, dict[str, Any]]:
    ve_discrete = {"sde": "vesde", "continuous": False}
    ve_continuous = {"sde": "vesde", "continuous": True}
    vp_discrete = {"sde": "vpsde", "continuous": False, "reduce_mean": True}
    vp_continuous = {"sde": "vpsde", "continuous": True, "reduce_mean": True}
    subvp = {"sde": "subvpsde", "continuous": True, "reduce_mean": True}
    deep = {"n_iters": 950001}
    ncsnpp_ve = dict(_NCSNPP, scale_by_sigma=True, ema_rate=0.999)
    configs = [
        # ---- VE ------------------------------------------------------------------------------------
        _config(
            "ve/cifar10_ncsnpp",
            _CIFAR10,
            training=ve_discrete,
            sampling=_PC_VE,
            model=dict(ncsnpp_ve, embedding_type="positional"),
        ),
        _config(
            "ve/cifar10_ncsnpp_continuous",
            _CIFAR10,
            training=ve_continuous,
            sampling=_PC_VE,
            model=dict(ncsnpp_ve, fourier_scale=16),
        ),
        _config(
            "ve/cifar10_ncsnpp_deep_continuous",
            _CIFAR10,
            training=dict(ve_continuous, **deep),
            sampling=_PC_VE,
            model=dict(ncsnpp_ve, fourier_scale=16, num_res_blocks=8),
        ),
        _config(
            "ve/cifar10_ddpm",
            _CIFAR10,
            training=ve_discrete,
            sampling=_PC_VE,
            model=dict(_DDPM, scale_by_sigma=True, ema_rate=0.999, conv_size=3),
        ),
        _config(
            "ve/celeba_ncsnpp",
            _CELEBA,
            training=ve_discrete,
            sampling=_PC_VE,
            model=dict(ncsnpp_ve, sigma_begin=90, embedding_type="positional"),
        ),
        _config(
            "ve/celebahq_256_ncsnpp_continuous",
            _LSUN,
            training=ve_continuous,
            sampling=_PC_VE,
            data={"dataset": "CelebAHQ", "image_size": 256},
            model=dict(_NCSNPP_256, sigma_max=348.0, scale_by_sigma=True, ema_rate=0.999, fourier_scale=16),
        ),
        _config(
            "ve/ffhq_256_ncsnpp_continuous",
            _LSUN,
            training=ve_continuous,
            sampling=_PC_VE,
            data={"dataset": "FFHQ", "image_size": 256},
            model=dict(_NCSNPP_256, sigma_max=348.0, scale_by_sigma=True, ema_rate=0.999, fourier_scale=16),
        ),
        _config(
            "ve/bedroom_ncsnpp_continuous",
            _LSUN,
            training=ve_continuous,
            sampling=_PC_VE,
            data={"category": "bedroom"},
            model=dict(_NCSNPP_256, scale_by_sigma=True, ema_rate=0.999, fourier_scale=16),
        ),
        _config(
            "ve/church_ncsnpp_continuous",
            _LSUN,
            training=ve_continuous,
            sampling=_PC_VE,
            data={"category": "church_outdoor"},
            model=dict(_NCSNPP_256, sigma_max=380.0, scale_by_sigma=True, ema_rate=0.999, fourier_scale=16),
        ),
        _ve_1024("ve/celebahq_ncsnpp_continuous", "CelebAHQ", reduce_mean=False),
        _ve_1024("ve/ffhq_ncsnpp_continuous", "FFHQ", reduce_mean=True),
        # ---- VP ------------------------------------------------------------------------------------
        _config(
            "vp/cifar10_ddpmpp",
            _CIFAR10,
            training=vp_discrete,
            sampling=_PC_ANCESTRAL,
            data=_CENTERED,
            model=dict(_DDPMPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional", fourier_scale=16),
        ),
        _config(
            "vp/cifar10_ddpmpp_continuous",
            _CIFAR10,
            training=vp_continuous,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_DDPMPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional", fourier_scale=16),
        ),
        _config(
            "vp/cifar10_ddpmpp_deep_continuous",
            _CIFAR10,
            training=dict(vp_continuous, **deep),
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(
                _DDPMPP,
                scale_by_sigma=False,
                ema_rate=0.9999,
                num_res_blocks=8,
                embedding_type="positional",
                fourier_scale=16,
            ),
        ),
        _config(
            "vp/cifar10_ncsnpp",
            _CIFAR10,
            training=vp_discrete,
            sampling={"method": "pc", "predictor": "reverse_diffusion", "corrector": "none"},
            data=_CENTERED,
            model=dict(_NCSNPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional"),
        ),
        _config(
            "vp/cifar10_ncsnpp_continuous",
            _CIFAR10,
            training=vp_continuous,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_NCSNPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional", fourier_scale=16),
        ),
        _config(
            "vp/cifar10_ncsnpp_deep_continuous",
            _CIFAR10,
            training=dict(vp_continuous, **deep),
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(
                _NCSNPP,
                scale_by_sigma=False,
                ema_rate=0.9999,
                num_res_blocks=8,
                embedding_type="positional",
                fourier_scale=16,
            ),
        ),
        _config(
            "vp/ddpm/cifar10",
            _CIFAR10,
            training=vp_discrete,
            sampling=_PC_ANCESTRAL,
            data=_CENTERED,
            model=dict(_DDPM, scale_by_sigma=False, ema_rate=0.9999),
        ),
        _config(
            "vp/ddpm/cifar10_continuous",
            _CIFAR10,
            training=vp_continuous,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_DDPM, scale_by_sigma=False, ema_rate=0.9999),
        ),
        *(
            _config(
                f"vp/ddpm/{name}",
                _LSUN,
                training=vp_discrete,
                sampling=_PC_ANCESTRAL,
                data=dict(_CENTERED, **data),
                model=dict(_DDPM, scale_by_sigma=False, num_scales=1000, ema_rate=0.9999, ch_mult=[1, 1, 2, 2, 4, 4]),
            )
            for name, data in (
                ("celebahq", {"dataset": "CelebAHQ", "image_size": 256}),
                ("church", {"category": "church_outdoor"}),
                ("bedroom", {"category": "bedroom"}),
            )
        ),
        # ---- sub-VP --------------------------------------------------------------------------------
        _config(
            "subvp/cifar10_ddpm_continuous",
            _CIFAR10,
            training=subvp,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_DDPM, scale_by_sigma=False, ema_rate=0.9999),
        ),
        _config(
            "subvp/cifar10_ddpmpp_continuous",
            _CIFAR10,
            training=subvp,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_DDPMPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional", fourier_scale=16),
        ),
        _config(
            "subvp/cifar10_ddpmpp_deep_continuous",
            _CIFAR10,
            training=dict(subvp, **deep),
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(
                _DDPMPP,
                scale_by_sigma=False,
                ema_rate=0.9999,
                num_res_blocks=8,
                embedding_type="positional",
                fourier_scale=16,
            ),
        ),
        _config(
            "subvp/cifar10_ncsnpp_continuous",
            _CIFAR10,
            training=subvp,
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(_NCSNPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional", fourier_scale=16),
        ),
        _config(
            "subvp/cifar10_ncsnpp_deep_continuous",
            _CIFAR10,
            training=dict(subvp, **deep),
            sampling=_PC_EM,
            data=_CENTERED,
            model=dict(
                _NCSNPP,
                scale_by_sigma=False,
                ema_rate=0.9999,
                num_res_blocks=8,
                embedding_type="positional",
                fourier_scale=16,
            ),
        ),
    ]
    return {config["name"]: config for config in configs}


#: Every released NCSN++ / DDPM++ / DDPM configuration of score_sde_pytorch, by config path (without ``.py``).
SCORE_SDE_CONFIGS: dict[str, dict[str, Any]] = _build_table()

#: Checkpoint folder names of the official README that differ from the config path.
CONFIG_ALIASES: dict[str, str] = {
    "vp/cifar10_ddpm": "vp/ddpm/cifar10",
    "vp/cifar10_ddpm_continuous": "vp/ddpm/cifar10_continuous",
    "ve/ffhq_1024_ncsnpp_continuous": "ve/ffhq_ncsnpp_continuous",
    "ve/celebahq_1024_ncsnpp_continuous": "ve/celebahq_ncsnpp_continuous",
}

_NCSN = "model.name = 'ncsn' (NCSN, a RefineNet with conditional instance normalisation) is not implemented here"
_NCSNV2 = "model.name = 'ncsnv2' (NCSNv2, a RefineNet with instance normalisation++) is not implemented here"

#: Released configs that cannot be represented, with the reason (what is missing).
UNSUPPORTED_CONFIGS: dict[str, str] = {
    **{f"ve/ncsn/{name}": _NCSN for name in ("cifar10", "cifar10_5", "cifar10_124", "cifar10_1245")},
    **{f"ve/ncsn/{name}": _NCSN for name in ("celeba", "celeba_5", "celeba_124", "celeba_1245")},
    **{f"ve/ncsnv2/{name}": _NCSNV2 for name in ("cifar10", "celeba", "bedroom")},
    "vp/ddpm/cifar10_unconditional": (
        "model.conditional = False (a DDPM network without any time conditioning) is not supported: the score "
        "networks here are always conditioned on the noise level"
    ),
}


#: What the score_sde_pytorch README reports for the released CIFAR-10 checkpoints (FID / IS of the PC sampler,
#: FID of the black-box ODE sampler, NLL in bits/dim on uniformly dequantised test data).
REPORTED_RESULTS: dict[str, dict[str, float]] = {
    "ve/cifar10_ncsnpp": {"fid": 2.45, "inception_score": 9.73},
    "ve/cifar10_ncsnpp_continuous": {"fid": 2.38, "inception_score": 9.83},
    "ve/cifar10_ncsnpp_deep_continuous": {"fid": 2.20, "inception_score": 9.89},
    "vp/ddpm/cifar10": {"fid": 3.24, "fid_ode": 3.37, "bits_per_dim": 3.28},
    "vp/ddpm/cifar10_continuous": {"fid_ode": 3.69, "bits_per_dim": 3.21},
    "vp/cifar10_ddpmpp": {"fid": 2.78, "inception_score": 9.64},
    "vp/cifar10_ddpmpp_continuous": {"fid": 2.55, "inception_score": 9.58, "fid_ode": 3.93, "bits_per_dim": 3.16},
    "vp/cifar10_ddpmpp_deep_continuous": {
        "fid": 2.41,
        "inception_score": 9.68,
        "fid_ode": 3.08,
        "bits_per_dim": 3.13,
    },
    "subvp/cifar10_ddpm_continuous": {"fid_ode": 3.56, "bits_per_dim": 3.05},
    "subvp/cifar10_ddpmpp_continuous": {"fid": 2.61, "inception_score": 9.56, "fid_ode": 3.16, "bits_per_dim": 3.02},
    "subvp/cifar10_ddpmpp_deep_continuous": {
        "fid": 2.41,
        "inception_score": 9.57,
        "fid_ode": 2.92,
        "bits_per_dim": 2.99,
    },
}


def list_score_sde_configs() -> list[str]:
    """Names of the released configurations that convert (see :data:`SCORE_SDE_CONFIGS`), sorted."""
    return sorted(SCORE_SDE_CONFIGS)
