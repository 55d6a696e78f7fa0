"""The base class of every sde-diffusers pipeline: a Hub layout that plain Diffusers can load.

`DiffusionPipeline.from_pretrained` looks a pipeline's `_class_name` up only in `diffusers`, and a component
class from another library only in modules the caller has already imported. A checkpoint of ours therefore
needs a "shim" layout to load with nothing but Diffusers (verified on diffusers 0.42.1)::

    model_index.json                  "_class_name": ["pipeline_sde_diffusers_<name>", "<OurPipeline>"],
                                      "unet": ["diffusers", "UNet2DModel"],
                                      "<component>": ["sde_diffusers_<class_name>", "<OurComponent>"]
    pipeline_sde_diffusers_<name>.py  from sde_diffusers import <OurPipeline>
    <component>/sde_diffusers_<class_name>.py
                                      from sde_diffusers import <OurComponent>
    <component>/...                   weights and config as Diffusers writes them

`DiffusionPipeline.from_pretrained(path_or_repo, trust_remote_code=True)` runs the one-line shims, which import
the real classes from the installed `sde_diffusers`. [`SDEDiffusionPipeline.from_pretrained`] reads the same
folder or Hub repo without `trust_remote_code`: it never executes the shims, it parses them and maps each entry
back to the class of ours that it names.

Module names carry the project name and the class name, so they are distinct from Diffusers' own modules and
from each other: Diffusers copies every local shim into one flat package (`diffusers_modules.local`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from typing import Any

# ModelMixin and SchedulerMixin are unused here but looked up by name in this module (see COMPONENT_LIBRARY).
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401
from diffusers.pipelines.pipeline_loading_utils import ALL_IMPORTABLE_CLASSES, LOADABLE_CLASSES, _unwrap_model
from diffusers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "SDEDiffusionPipeline",
    "COMPONENT_LIBRARY",
    "PIPELINE_MODULE_PREFIX",
    "COMPONENT_MODULE_PREFIX",
    "component_module_name",
    "pipeline_module_name",
    "shim_source",
]

# `SDEDiffusionPipeline.load_config` writes this module as the "library" of our components: Diffusers resolves a
# component's class *and* its loading base class (ModelMixin, SchedulerMixin, ...) by name in the library module,
# and the modules our classes are defined in do not all bind those base names. This module binds them (imports
# above) and resolves every class exported from `sde_diffusers` through `__getattr__` below.
COMPONENT_LIBRARY = __name__
PIPELINE_MODULE_PREFIX = "pipeline_sde_diffusers_"
COMPONENT_MODULE_PREFIX = "sde_diffusers_"
_PACKAGE = "sde_diffusers"
# The one statement a shim may contain; anything else is left to Diffusers (and `trust_remote_code`).
_SHIM_RE = re.compile(r"^from[ \t]+sde_diffusers[ \t]+import[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*$")
# Keyword arguments of `from_pretrained` that only matter for downloading from the Hub.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def __getattr__(name: str) -> Any:
    # Resolve `getattr(<this module>, "OurClass")` for Diffusers' loader (see COMPONENT_LIBRARY).
    if not name.startswith("_"):
        package = importlib.import_module(_PACKAGE)
        obj = getattr(package, name, None)
        if isinstance(obj, type):
            return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def pipeline_module_name(pipeline_class: type) -> str:
    """Name of the root shim module of a pipeline class, e.g. `pipeline_sde_diffusers_score_sde`.

    Args:
        pipeline_class (`type`): a pipeline class; a trailing `Pipeline` in its name is dropped.

    Returns:
        `str`: the module name (without `.py`).
    """
    stem = re.sub(r"_?pipeline$", "", _snake_case(pipeline_class.__name__)) or "pipeline"
    return PIPELINE_MODULE_PREFIX + stem


def component_module_name(component_class: type) -> str:
    """Name of the shim module of a component class, e.g. `sde_diffusers_ncsn_pp_model`.

    Args:
        component_class (`type`): the component's class.

    Returns:
        `str`: the module name (without `.py`).
    """
    return COMPONENT_MODULE_PREFIX + _snake_case(component_class.__name__)


def shim_source(class_name: str) -> str:
    """Content of a shim file: the one line that imports `class_name` from the installed `sde_diffusers`."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", class_name):
        raise ValueError(f"`class_name` must be a Python identifier, got {class_name!r}.")
    return f"from {_PACKAGE} import {class_name}\n"


def _package():
    return importlib.import_module(_PACKAGE)


def _is_ours(cls: type) -> bool:
    """Whether `cls` belongs to sde-diffusers: defined in it, or exported from it (as test doubles are).

    Classes of the libraries Diffusers loads from by itself (`diffusers`, `transformers`, ...) never are, even
    if `sde_diffusers` re-exports one.
    """
    top_level = cls.__module__.split(".")[0]
    if top_level in {library.split(".")[0] for library in LOADABLE_CLASSES}:
        return False
    return top_level == _PACKAGE or getattr(_package(), cls.__name__, None) is cls


def _check_exported(cls: type, role: str) -> None:
    if getattr(_package(), cls.__name__, None) is not cls:
        raise TypeError(
            f"{role} class {cls.__module__}.{cls.__qualname__} must be importable as `sde_diffusers."
            f"{cls.__name__}` (export it from sde_diffusers/__init__.py): the saved shim file imports it from there."
        )


def _check_loadable(cls: type) -> None:
    # Mirrors Diffusers' `load_sub_model`: the class must subclass a loadable base bound in the library module.
    module = sys.modules[__name__]
    bases = [getattr(module, name, None) for name in ALL_IMPORTABLE_CLASSES]
    if not any(isinstance(base, type) and issubclass(cls, base) for base in bases):
        raise TypeError(
            f"Component class {cls.__name__} must subclass diffusers' ModelMixin or SchedulerMixin to be saved "
            "and loaded as a pipeline component."
        )


def _parse_shim(path: str, class_name: str) -> type | None:
    """The class of ours that the shim at `path` imports, or None if `path` is not such a shim for `class_name`.

    The file is read, never executed. Blank lines and comments are tolerated around the import.
    """
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh.read().splitlines()]
    statements = [line for line in lines if line and not line.startswith("#")]
    match = _SHIM_RE.match(statements[0]) if len(statements) == 1 else None
    if match is None or match.group(1) != class_name:
        return None
    cls = getattr(_package(), class_name, None)
    if not isinstance(cls, type):
        raise ImportError(
            f"{path} loads `sde_diffusers.{class_name}`, which the installed sde-diffusers does not provide; "
            "install the version this checkpoint was saved with."
        )
    return cls


def _saved_pipeline_class(folder: str, config: dict) -> type | None:
    entry = config.get("_class_name")
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
        return _parse_shim(os.path.join(folder, f"{entry[0]}.py"), entry[1])
    if isinstance(entry, str):  # a folder written by a plain `DiffusionPipeline.save_pretrained`
        cls = getattr(_package(), entry, None)
        return cls if isinstance(cls, type) and issubclass(cls, SDEDiffusionPipeline) else None
    return None


def _resolve_shims(config: dict, folder: str) -> dict:
    """Rewrite the shim entries of a `model_index.json` dict (in place) to names Diffusers resolves itself."""
    pipeline_class = _saved_pipeline_class(folder, config)
    if pipeline_class is not None:
        config["_class_name"] = pipeline_class.__name__
    for name, entry in config.items():
        if name.startswith("_") or not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            continue
        module_name, class_name = entry
        if not (isinstance(module_name, str) and isinstance(class_name, str)):
            continue
        if module_name.split(".")[0] == _PACKAGE:
            # Written by a plain `save_pretrained` (the defining module's path): resolve it the same way.
            cls = getattr(_package(), class_name, None)
        else:
            cls = _parse_shim(os.path.join(folder, name, f"{module_name}.py"), class_name)
        if isinstance(cls, type) and _is_ours(cls):
            config[name] = [COMPONENT_LIBRARY, class_name]
    return config


class SDEDiffusionPipeline(DiffusionPipeline):
    r"""
    Base class of the sde-diffusers pipelines: [`~diffusers.DiffusionPipeline`] plus a Hub layout that loads
    both with plain Diffusers (`trust_remote_code=True`) and with our classes (no remote code).

    Subclass it exactly like `DiffusionPipeline` (an `__init__` that calls `register_modules`, a `__call__`) and
    export the subclass, and every component class of ours it holds, from `sde_diffusers/__init__.py`:

    ```python
    class ScoreSdePipeline(SDEDiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)
    ```

    [`save_pretrained`] writes the shim layout described in this module's docstring (and can push it to the Hub);
    [`from_pretrained`] reads it from a folder or a Hub repo id. Called on `SDEDiffusionPipeline` itself,
    `from_pretrained` returns an instance of the pipeline class the checkpoint was saved from.
    """

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        r"""
        Save the pipeline in the shim layout, optionally pushing the folder to the Hub.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write (created if missing).
            safe_serialization (`bool`, defaults to `True`):
                Save weights as safetensors (`False` uses pickle; avoid it).
            variant (`str`, *optional*):
                Weight file variant, e.g. `"fp16"` gives `diffusion_pytorch_model.fp16.safetensors`.
            max_shard_size (`int` or `str`, *optional*):
                Largest weight shard, e.g. `"5GB"`.
            push_to_hub (`bool`, defaults to `False`):
                Upload the folder with [`~sde_diffusers.hub_utils.push_pipeline_to_hub`] after saving. The token is
                checked before anything is written. Put a model card (`README.md`) into the folder first if you
                want one; none is generated here.
            kwargs:
                With `push_to_hub`: `repo_id` (defaults to the folder's name), `token`, `private`,
                `commit_message`, `create_pr`. Anything else goes to `DiffusionPipeline.save_pretrained`.
        """
        from sde_diffusers.hub_utils import check_push_arguments, push_pipeline_to_hub

        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a str or os.PathLike, got {type(save_directory).__name__}.")
        save_directory = os.fspath(save_directory)
        push_kwargs = {
            k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr") if k in kwargs
        }
        if push_kwargs and not push_to_hub:
            raise TypeError(f"{sorted(push_kwargs)} only apply with `push_to_hub=True`.")
        # Every check runs before the first file is written.
        _check_exported(type(self), "Pipeline")
        ours = self._components_of_ours()
        if push_to_hub:
            if push_kwargs.get("repo_id") is None:
                push_kwargs["repo_id"] = os.path.basename(os.path.abspath(save_directory))
            push_kwargs["token"] = check_push_arguments(
                push_kwargs["repo_id"],
                token=push_kwargs.get("token"),
                private=push_kwargs.get("private", False),
                commit_message=push_kwargs.get("commit_message", "Upload sde-diffusers pipeline"),
            )

        super().save_pretrained(
            save_directory,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            push_to_hub=False,
            **kwargs,
        )
        self._write_shims(save_directory, ours)

        if push_to_hub:
            push_pipeline_to_hub(save_directory, push_kwargs.pop("repo_id"), **push_kwargs)

    def _components_of_ours(self) -> dict[str, type]:
        ours = {}
        for name, entry in self.config.items():
            if name.startswith("_") or not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                continue
            component = getattr(self, name, None)
            if component is None or entry[0] is None:
                continue
            cls = type(_unwrap_model(component))
            if _is_ours(cls):
                _check_exported(cls, "Component")
                _check_loadable(cls)
                ours[name] = cls
        return ours

    def _write_shims(self, save_directory: str, ours: dict[str, type]) -> None:
        index_path = os.path.join(save_directory, self.config_name)
        with open(index_path, encoding="utf-8") as fh:
            index = json.load(fh)
        # Where a loaded pipeline came from (a cache path or repo id) is no part of the checkpoint.
        index.pop("_name_or_path", None)
        pipeline_module = pipeline_module_name(type(self))
        index["_class_name"] = [pipeline_module, type(self).__name__]
        _write_text(os.path.join(save_directory, f"{pipeline_module}.py"), shim_source(type(self).__name__))
        for name, entry in index.items():
            if not name.startswith("_") and isinstance(entry, list) and entry and entry[0] is not None:
                _drop_name_or_path(save_directory, name, getattr(self, name, None))
        for name, cls in ours.items():
            saved = index.get(name)
            if not (isinstance(saved, list) and saved and saved[0] is not None):
                continue  # Diffusers could not save it and recorded it as absent
            module = component_module_name(cls)
            index[name] = [module, cls.__name__]
            _write_text(os.path.join(save_directory, name, f"{module}.py"), shim_source(cls.__name__))
        # Same formatting as `ConfigMixin.to_json_string`.
        _write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        return_unused_kwargs: bool = False,
        return_commit_hash: bool = False,
        **kwargs,
    ):
        r"""
        Read `model_index.json` with the shim entries mapped to our classes (no code from the folder runs).

        `_class_name` becomes the pipeline's class name and each component shim `["sde_diffusers_...", "Cls"]`
        becomes `[COMPONENT_LIBRARY, "Cls"]`. Arguments are those of
        [`~diffusers.ConfigMixin.load_config`]; a Hub repo id fetches only `model_index.json` and the shim files.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.exists(path):
            hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
            path = _snapshot(path, allow_patterns=[cls.config_name, "*.py"], **hub_kwargs)
        outputs = super().load_config(
            path, return_unused_kwargs=return_unused_kwargs, return_commit_hash=return_commit_hash, **kwargs
        )
        config = outputs[0] if isinstance(outputs, tuple) else outputs
        subfolder = kwargs.get("subfolder")
        if os.path.isfile(path):
            folder = os.path.dirname(path)
        elif subfolder and os.path.isfile(os.path.join(path, subfolder, cls.config_name)):
            folder = os.path.join(path, subfolder)
        else:
            folder = path
        _resolve_shims(config, folder)
        return outputs

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        r"""
        Download a whole pipeline repo from the Hub into the cache and return the local folder.

        Args:
            pretrained_model_name (`str`): Hub repo id, e.g. `"user/score-sde-digits"`.
            kwargs: `cache_dir`, `force_download`, `local_files_only`, `token`, `revision`
                (as for [`huggingface_hub.snapshot_download`]).

        Returns:
            `str`: the snapshot folder.
        """
        unknown = set(kwargs) - set(_HUB_KWARGS)
        if unknown:
            raise TypeError(f"Unexpected arguments for `download`: {sorted(unknown)}.")
        return _snapshot(pretrained_model_name, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""
        Load a pipeline saved by [`save_pretrained`] from a folder or a Hub repo id, without `trust_remote_code`.

        The shim files are parsed, not run. A Hub repo is fetched whole with `snapshot_download` first. If the
        checkpoint was saved from a subclass of `cls` (e.g. `cls` is `SDEDiffusionPipeline`), that subclass is
        instantiated.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder or a Hub repo id.
            kwargs:
                Download options (`cache_dir`, `force_download`, `local_files_only`, `token`, `revision`) and any
                option of [`~diffusers.DiffusionPipeline.from_pretrained`] (`torch_dtype`, `variant`,
                components to override, ...).

        Returns:
            The loaded pipeline.
        """
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "`pretrained_model_name_or_path` must be a folder or a Hub repo id, got "
                f"{type(pretrained_model_name_or_path).__name__}."
            )
        name_or_path = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        folder = name_or_path if os.path.isdir(name_or_path) else cls.download(name_or_path, **hub_kwargs)

        index_path = os.path.join(folder, cls.config_name)
        if not os.path.isfile(index_path):
            raise OSError(f"{name_or_path} is not a saved pipeline: it has no {cls.config_name}.")
        with open(index_path, encoding="utf-8") as fh:
            saved_class = _saved_pipeline_class(folder, json.load(fh))
        if saved_class is not None and saved_class is not cls:
            if issubclass(saved_class, cls):
                pipeline = saved_class.from_pretrained(folder, **kwargs)
                pipeline.register_to_config(_name_or_path=name_or_path)
                return pipeline
            logger.warning(f"{name_or_path} was saved from {saved_class.__name__}; loading it as {cls.__name__}.")
        if cls is SDEDiffusionPipeline:
            raise ValueError(
                f"{name_or_path} does not name a pipeline class of sde-diffusers; load it with its own pipeline "
                "class or with `DiffusionPipeline.from_pretrained`."
            )
        pipeline = super().from_pretrained(folder, **kwargs)
        pipeline.register_to_config(_name_or_path=name_or_path)
        return pipeline


def _snapshot(repo_id: str, **kwargs) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"`pretrained_model_name_or_path` {repo_id!r} is neither an existing folder nor a valid Hub repo id "
            "('name' or 'namespace/name')."
        ) from err
    if kwargs.pop("proxies", None) is not None:  # `snapshot_download` has no such argument since hub 1.0
        logger.warning("`proxies` is ignored; configure proxies with the HTTP(S)_PROXY environment variables.")
    return snapshot_download(repo_id, repo_type="model", **kwargs)


def _drop_name_or_path(save_directory: str, name: str, component: Any) -> None:
    # A component loaded with `from_pretrained` saves where it came from (often a local cache path) as
    # `_name_or_path`; that is no part of the checkpoint and would publish a machine path.
    config_name = getattr(component, "config_name", None)
    if not isinstance(config_name, str):
        return
    path = os.path.join(save_directory, name, config_name)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
        _write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
