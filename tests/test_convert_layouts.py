"""The released score_sde configs at full size: the converter's key / shape / order mapping for every one of them.

`official_state` below enumerates the parameters of score_sde's `NCSNpp` / `DDPM` models the way their constructors
register them (models/ncsnpp.py, models/ddpm.py): one entry of `all_modules` after another, each module's tensors
in registration order. It is written from the official constructors, independently of the converter (which walks
our model instead), so comparing the two checks the converter on structures the shrunk fixtures do not have:
4-8 residual blocks per level, attention at 16 px, output / input skip pyramids, 7-8 resolutions at 256-1024 px.
Models are built on the meta device: no memory, no time.
"""

import math

import pytest
import torch

from sde_diffusers import convert_score_sde_checkpoint
from sde_diffusers.convert import SCORE_SDE_CONFIGS, official_parameter_names, plan_score_sde_conversion
from sde_diffusers.models.layers import fir_downsample_2d, fir_upsample_2d

torch.set_num_threads(1)


def official_state(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key without "module.", shape) of every parameter of the official network, in registration order."""
    m, d = config["model"], config["data"]
    nf, ch_mult, blocks = m["nf"], m["ch_mult"], m["num_res_blocks"]
    channels, levels = d["num_channels"], len(ch_mult)
    resolutions = [d["image_size"] // 2**i for i in range(levels)]
    ddpm = m["name"] == "ddpm"
    biggan = not ddpm and m["resblock_type"] == "biggan"
    fir = not ddpm and m["fir"]
    progressive = "none" if ddpm else m["progressive"]
    progressive_input = "none" if ddpm else m["progressive_input"]
    combine_cat = not ddpm and m["progressive_combine"] == "cat"
    state: list[tuple[str, tuple[int, ...]]] = []
    index = 0

    def module(*params):
        nonlocal index
        state.extend((f"all_modules.{index}.{name}", shape) for name, shape in params)
        index += 1

    def pair(prefix, weight):  # a layer with a weight and a bias
        return [(f"{prefix}weight", weight), (f"{prefix}bias", (weight[0],))]

    def nin(prefix, cin, cout):
        return [(f"{prefix}W", (cin, cout)), (f"{prefix}b", (cout,))]

    def resblock(cin, cout=None, resample=False):
        cout = cout or cin
        params = pair("GroupNorm_0.", (cin,)) + pair("Conv_0.", (cout, cin, 3, 3)) + pair("Dense_0.", (cout, 4 * nf))
        params += pair("GroupNorm_1.", (cout,)) + pair("Conv_1.", (cout, cout, 3, 3))
        if biggan and (cin != cout or resample):
            params += pair("Conv_2.", (cout, cin, 1, 1))
        elif not biggan and cin != cout:
            params += nin("NIN_0.", cin, cout)
        module(*params)

    def attnblock(ch):
        module(*pair("GroupNorm_0.", (ch,)), *[p for i in range(4) for p in nin(f"NIN_{i}.", ch, ch)])

    def resample(cin, cout, with_conv):  # Upsample / Downsample: always an entry, a conv only with_conv
        module(*(pair("Conv2d_0." if fir else "Conv_0.", (cout, cin, 3, 3)) if with_conv else []))

    if not ddpm and m["embedding_type"] == "fourier":
        module(("W", (nf,)))
        embed = 2 * nf
    else:
        embed = nf
    module(*pair("", (4 * nf, embed)))
    module(*pair("", (4 * nf, 4 * nf)))
    module(*pair("", (nf, channels, 3, 3)))
    skips, in_ch, pyramid_ch = [nf], nf, channels
    for level in range(levels):
        for _ in range(blocks):
            resblock(in_ch, nf * ch_mult[level])
            in_ch = nf * ch_mult[level]
            if resolutions[level] in m["attn_resolutions"]:
                attnblock(in_ch)
            skips.append(in_ch)
        if level != levels - 1:
            if biggan:
                resblock(in_ch, resample=True)
            else:
                resample(in_ch, in_ch, m["resamp_with_conv"])
            if progressive_input == "input_skip":
                module(*pair("Conv.", (in_ch, pyramid_ch, 1, 1)))
                in_ch *= 2 if combine_cat else 1
            elif progressive_input == "residual":
                resample(pyramid_ch, in_ch, True)
                pyramid_ch = in_ch
            skips.append(in_ch)
    in_ch = skips[-1]
    resblock(in_ch)
    attnblock(in_ch)
    resblock(in_ch)
    pyramid_ch = 0
    for level in reversed(range(levels)):
        for _ in range(blocks + 1):
            resblock(in_ch + skips.pop(), nf * ch_mult[level])
            in_ch = nf * ch_mult[level]
        if resolutions[level] in m["attn_resolutions"]:
            attnblock(in_ch)
        if progressive != "none":
            if level == levels - 1 or progressive == "output_skip":
                out = channels if progressive == "output_skip" else in_ch
                module(*pair("", (in_ch,)))
                module(*pair("", (out, in_ch, 3, 3)))
                pyramid_ch = out
            else:
                resample(pyramid_ch, in_ch, True)
                pyramid_ch = in_ch
        if level != 0:
            if biggan:
                resblock(in_ch, resample=True)
            else:
                resample(in_ch, in_ch, m["resamp_with_conv"])
    assert not skips
    if progressive != "output_skip":
        module(*pair("", (in_ch,)))
        module(*pair("", (channels, in_ch, 3, 3)))
    return state


def _meta_model(plan):
    with torch.device("meta"):
        return plan.build_model()


@pytest.mark.parametrize("name", sorted(SCORE_SDE_CONFIGS))
def test_layout_of_every_released_config(name):
    plan = plan_score_sde_conversion(name)
    model = _meta_model(plan)
    official = official_state(SCORE_SDE_CONFIGS[name])
    names = official_parameter_names(model, plan.fourier)
    assert list(names) == [key for key, _ in official]
    ours = dict(model.state_dict())
    assert sorted(names.values()) == sorted(ours), "every tensor of ours is mapped exactly once"
    for key, shape in official:
        mine = tuple(ours[names[key]].shape)
        if ".NIN_" in key and key.endswith(".W"):
            mine = (mine[1], mine[0])
        assert mine == shape, key
    # GroupNorm groups: min(ch // 4, 32) in NCSN++ / DDPM++, a fixed 32 in the original DDPM network.
    for norm in (mod for mod in model.modules() if isinstance(mod, torch.nn.GroupNorm)):
        expected = 32 if plan.network == "ddpm" else min(norm.num_channels // 4, 32)
        assert norm.num_groups == expected


# NCSN++ cont. about 62M and 108M (deep); DDPM++ deep about 107M. The DDPM network: Ho et al.'s 35.7M less two
# attention blocks (2 x 0.26M), because score_sde's port attends once per level on the way up, not after every block.
@pytest.mark.parametrize(
    "name,millions",
    [
        ("ve/cifar10_ncsnpp_continuous", 62.8),
        ("ve/cifar10_ncsnpp_deep_continuous", 107.6),
        ("vp/cifar10_ddpmpp_deep_continuous", 106.6),
        ("vp/ddpm/cifar10", 35.2),
    ],
)
def test_parameter_counts(name, millions):
    model = _meta_model(plan_score_sde_conversion(name))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - millions) < 0.01 * millions, count


def _shrink(config: dict, nf: int) -> dict:
    """A released config at a CPU-friendly width and size, keeping its structure (levels, blocks, pyramids)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    levels = len(config["model"]["ch_mult"])
    config["model"]["nf"] = nf
    config["data"]["image_size"] = max(16, 2 ** (levels - 1))  # keeps the 16 px attention level
    return config


def _random(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random weights at a scale that keeps activations finite through a deep network."""
    fan = math.prod(shape[1:]) if len(shape) > 1 else 100
    return torch.randn(shape, generator=generator) / math.sqrt(fan)


def _random_checkpoint(config: dict, generator: torch.Generator) -> dict:
    state = official_state(config)
    model = {f"module.{key}": _random(shape, generator) for key, shape in state}
    m = config["model"]
    model["module.sigmas"] = torch.exp(
        torch.linspace(math.log(m["sigma_max"]), math.log(m["sigma_min"]), m["num_scales"], dtype=torch.float64)
    )
    trainable = [key for key, _ in state if not key.endswith(".W") or ".NIN_" in key]
    shadow = [_random(dict(state)[key], generator) for key in trainable]
    return {"model": model, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1}


@pytest.mark.parametrize(
    "name,nf",
    [
        ("ve/ffhq_ncsnpp_continuous", 2),  # 8 levels, 1024 px structure, output / input skip pyramids
        ("ve/church_ncsnpp_continuous", 4),  # 7 levels, 2 blocks
        ("ve/cifar10_ncsnpp_deep_continuous", 4),  # 8 blocks per level, residual input pyramid
        ("vp/ddpm/church", 8),  # the original DDPM network, 6 levels
        ("ve/celeba_ncsnpp", 4),  # discrete SMLD, positional embedding
    ],
)
def test_real_structures_round_trip(name, nf):
    config = _shrink(SCORE_SDE_CONFIGS[name], nf)
    if name == "vp/ddpm/church":
        config["model"]["nf"] = 32  # its GroupNorm has a fixed 32 groups
    generator = torch.Generator().manual_seed(0)
    checkpoint = _random_checkpoint(config, generator)
    pipe = convert_score_sde_checkpoint(checkpoint, config)
    plan = pipe.conversion
    names = official_parameter_names(pipe.unet, plan.fourier)
    ours = pipe.unet.state_dict()
    shadow = iter(checkpoint["ema"]["shadow_params"])
    for key, our_key in names.items():
        fourier_w = key.endswith(".W") and ".NIN_" not in key
        tensor = checkpoint["model"][f"module.{key}"] if fourier_w else next(shadow)
        if ".NIN_" in key and key.endswith(".W"):
            tensor = tensor.t()
        assert torch.equal(ours[our_key].reshape(tensor.shape), tensor), key
    size = config["data"]["image_size"]
    x = torch.randn(1, 3, size, size, generator=generator)
    t = torch.full((1,), 500.0) if pipe.unet.time_input != "sigma" else torch.full((1,), 3.0)
    with torch.no_grad():
        out = pipe.unet(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---- forward wiring: the official forward pass, run on our modules ------------------------------------------
_SUBMODULES = ("norm_0", "conv_0", "temb_proj", "norm_1", "conv_1", "shortcut", "norm", "to_q", "to_k", "to_v")
_SUBMODULES += ("to_out", "conv")


def _flat_modules(model, fourier):
    """Our modules in the order of the official `all_modules` list, from the converter's key mapping."""
    by_index = {}
    for official, ours in official_parameter_names(model, fourier).items():
        index = int(official.split(".")[1])
        path = ours.rsplit(".", 1)[0]
        if path.rsplit(".", 1)[-1] in _SUBMODULES and official.count(".") == 3:
            path = path.rsplit(".", 1)[0]  # a parameter inside a composite official module
        by_index.setdefault(index, path)
    assert sorted(by_index) == list(range(len(by_index))), "every official module has parameters here"
    return [
        model.get_submodule(by_index[i]) if by_index[i] != "fourier_proj" else model.fourier_proj
        for i in sorted(by_index)
    ]


def official_forward(model, config, x, sigma):
    """models/ncsnpp.py's NCSNpp.forward (centred input, Fourier embedding), written against the flat module list."""
    m = config["model"]
    modules = _flat_modules(model, True)
    levels, blocks = len(m["ch_mult"]), m["num_res_blocks"]
    progressive, progressive_input = m["progressive"], m["progressive_input"]
    act, rescale = torch.nn.functional.silu, (lambda a: a / math.sqrt(2.0)) if m["skip_rescale"] else (lambda a: a)
    kernel = next(mod.fir_filter for mod in model.modules() if hasattr(mod, "fir_filter"))  # the model's own

    i = 0

    def nxt():
        nonlocal i
        i += 1
        return modules[i - 1]

    def head(h):  # GroupNorm, act, conv: two entries of the list, in this order
        norm, conv = nxt(), nxt()
        return conv(act(norm(h)))

    temb = nxt()(torch.log(sigma))
    temb = nxt()(temb)
    temb = nxt()(act(temb))
    input_pyramid = x if progressive_input != "none" else None
    hs = [nxt()(x)]
    for level in range(levels):
        for _ in range(blocks):
            h = nxt()(hs[-1], temb)
            if h.shape[-1] in m["attn_resolutions"]:
                h = nxt()(h)
            hs.append(h)
        if level != levels - 1:
            h = nxt()(hs[-1], temb)
            if progressive_input == "input_skip":
                input_pyramid = fir_downsample_2d(input_pyramid, kernel)
                h = nxt()(input_pyramid, h)
            elif progressive_input == "residual":
                input_pyramid = rescale(nxt()(input_pyramid) + h)
                h = input_pyramid
            hs.append(h)
    h = nxt()(hs[-1], temb)
    h = nxt()(h)
    h = nxt()(h, temb)
    pyramid = None
    for level in reversed(range(levels)):
        for _ in range(blocks + 1):
            h = nxt()(torch.cat([h, hs.pop()], dim=1), temb)
        if h.shape[-1] in m["attn_resolutions"]:
            h = nxt()(h)
        if progressive != "none":
            if level == levels - 1:
                pyramid = head(h)
            elif progressive == "output_skip":
                pyramid = fir_upsample_2d(pyramid, kernel) + head(h)
            else:
                pyramid = rescale(nxt()(pyramid) + h)
                h = pyramid
        if level != 0:
            h = nxt()(h, temb)
    h = pyramid if progressive == "output_skip" else head(h)
    assert i == len(modules)
    return h / sigma.view(-1, 1, 1, 1)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("ve/ffhq_256_ncsnpp_continuous", {}),  # output / input skip pyramids, the high-resolution VE models
        ("ve/ffhq_ncsnpp_continuous", {}),  # 8 levels, one block
        ("ve/cifar10_ncsnpp_continuous", {}),  # residual input pyramid
        ("ve/ffhq_256_ncsnpp_continuous", {"progressive_combine": "cat"}),
        ("ve/cifar10_ncsnpp_continuous", {"progressive": "residual", "progressive_input": "input_skip"}),
    ],
)
def test_forward_wiring_is_the_official_one(name, overrides):
    """Our forward equals the official control flow run on our own modules, for every pyramid setting."""
    config = _shrink(SCORE_SDE_CONFIGS[name], 4)
    config["model"].update(overrides, init_scale=1.0, dropout=0.0)
    plan = plan_score_sde_conversion(config)
    torch.manual_seed(0)
    model = plan.build_model().double().eval()
    size = config["data"]["image_size"]
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    sigma = torch.tensor([0.3, 40.0], dtype=torch.float64)
    with torch.no_grad():
        ours = model(x, sigma * 2.0).sample * 2.0  # [0, 1] models: doubled sigma, score halved
        official = official_forward(model, config, x, sigma)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)


def test_discrete_vp_score_uses_the_ddpm_chain():
    """vp/cifar10_ddpmpp (continuous = False): score = -eps(x, t (N - 1)) / sqrt(1 - alphas_cumprod[floor(t (N - 1))]),
    as the official get_score_fn(continuous=False), with sde_lib's betas linspace(beta_min / N, beta_max / N, N)."""
    from sde_diffusers.parameterization import make_score_fn

    config = _shrink(SCORE_SDE_CONFIGS["vp/cifar10_ddpmpp"], 8)
    pipe = convert_score_sde_checkpoint(_random_checkpoint(config, torch.Generator().manual_seed(1)), config)
    unet, sde = pipe.unet, pipe.scheduler.sde
    assert unet.time_input == pipe.scheduler.config.time_input == "discrete_index"
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.3337, 1.0], dtype=torch.float64)
    unet = unet.double()
    with torch.no_grad():
        score = make_score_fn(unet, sde, unet.prediction_type, unet.time_input)(x, t)
        eps = unet(x, t * 999).sample
    betas = torch.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=torch.float64)
    std = torch.sqrt(1 - torch.cumprod(1 - betas, dim=0))[(t * 999).long()]
    torch.testing.assert_close(score, -eps / std.view(-1, 1, 1, 1), rtol=1e-9, atol=0)
    continuous_std = sde.marginal_coeffs(t)[1]
    assert not torch.allclose(std, continuous_std, rtol=1e-4), "the test tells the two marginals apart"
