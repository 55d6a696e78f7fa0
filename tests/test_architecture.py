"""The package's layers (README, "Architecture"): a module imports only from its own layer or the ones below.

Read from the source with ``ast`` (top-level and function-local imports alike), so a new upward import fails
here instead of growing a cycle that only shows at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders and the package each one installs as (pyproject's package-dir).
SOURCES = {
    "sde_diffusers": "sde_diffusers",
    "pipelines": "sde_diffusers.pipelines",
    "training": "sde_diffusers.training",
}

# unit (first name below ``sde_diffusers``) -> layer; "__init__" is the top-level package's public namespace.
LAYERS: dict[str, int] = {
    # 0 maths: formulas, each written once; no network, no Diffusers classes
    "validation": 0,
    "sde": 0,
    "parameterization": 0,
    "toy": 0,
    "corruption": 0,
    # 1 numerics on tensors: step functions, the scheduler -> SDE mapping, losses, networks
    "sampling": 1,
    "scheduler_sde": 1,
    "losses": 1,
    "models": 1,
    # 2 Diffusers components and infrastructure: schedulers, likelihood, Hub I/O, process groups
    "schedulers": 2,
    "likelihood": 2,
    "hub_utils": 2,
    "distributed": 2,
    # 3 pipelines and what builds them
    "pipelines": 3,
    "convert": 3,
    # 4 applications: evaluation, data, training, the CLI, the demo, the public namespace
    "evaluation": 4,
    "data": 4,
    "training": 4,
    "commands": 4,
    "demo": 4,
    "cli": 4,
    "__init__": 4,
    "model_cards": 4,
}


def _module_name(path: Path, folder: str) -> str:
    rel = path.relative_to(ROOT / folder).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([SOURCES[folder], *parts])


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sde_diffusers":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "sde_diffusers":
                # ``from sde_diffusers import schedulers`` names a unit; ``__version__`` is a constant, not a layer.
                found += [
                    (node.lineno, f"{target}.{a.name}" if a.name in LAYERS else target)
                    for a in node.names
                    if a.name != "__version__"
                ]
            else:
                found.append((node.lineno, target))
    return found


def _sources() -> list[tuple[Path, str]]:
    return [(p, folder) for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize(
    "path,folder", _sources(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else ""
)
def test_imports_go_down_the_layers(path: Path, folder: str) -> None:
    module = _module_name(path, folder)
    unit = _unit(module)
    assert unit in LAYERS, f"{path.relative_to(ROOT)} is in no layer: add {unit!r} to LAYERS and the README"
    bad = []
    for line, target in _imports(path, module):
        other = _unit(target)
        if other is None or other == unit:
            continue
        assert other in LAYERS, f"{path.relative_to(ROOT)}:{line} imports {target}, which is in no layer"
        if LAYERS[other] > LAYERS[unit]:
            bad.append(
                f"{path.relative_to(ROOT)}:{line} ({unit}, layer {LAYERS[unit]}) "
                f"imports {target} (layer {LAYERS[other]})"
            )
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_sees_relative_and_function_local_imports(tmp_path: Path) -> None:
    # The walker must find the imports it polices, or the test above passes vacuously.
    src = (
        "from ..pipelines import X\n\ndef f():\n    from sde_diffusers.training import y\n    import sde_diffusers\n"
        "    from .. import schedulers, __version__\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(src)
    found = [t for _, t in _imports(path, "sde_diffusers.sampling.mod")]
    assert found == ["sde_diffusers.pipelines", "sde_diffusers.training", "sde_diffusers", "sde_diffusers.schedulers"]
    assert [LAYERS[_unit(t)] for t in found] == [3, 4, 4, 2]
