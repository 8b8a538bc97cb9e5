"""DDPMMnistPipeline as the installed package loads it: diffusers' own loader, with two additions.

A missing or broken part is named (``model_index.json``, the unet, the scheduler, a saved default), and a repository
pushed with remote code (``ddpm-mnist push``) loads the installed package's classes instead of running its code, with
safetensors weights only (no pickle comes from the network). The sampling itself is in pipeline_ddpm_mnist.py, which
stands alone as the Hub's remote code; this subclass adds loading only, under the same name (model_index.json's
``_class_name``).
"""

import importlib
import importlib.util
import json
import os

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import pipeline_ddpm_mnist

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


class DDPMMnistPipeline(pipeline_ddpm_mnist.DDPMMnistPipeline):
    __doc__ = pipeline_ddpm_mnist.DDPMMnistPipeline.__doc__

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local folder or a Hub id through diffusers' own loader.

        Everything ``DiffusionPipeline.from_pretrained`` takes works as it does there: ``torch_dtype`` (also
        per component, ``{"unet": torch.bfloat16, "default": torch.float32}``), ``variant``, ``device_map``,
        ``low_cpu_mem_usage``, ``use_safetensors``, ``revision``, ``cache_dir``, ``local_files_only`` and components
        or ``default_*`` sampling settings passed in. Two things are added around it: a missing or broken part is
        named (``model_index.json``, the unet, the scheduler, a saved default), and a repository pushed with
        remote code (``ddpm-mnist push``) loads the installed package's classes instead of running its code.
        """
        path = str(pretrained_model_name_or_path)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        index, index_path = _read_model_index(path, hub_kwargs)
        local = os.path.isdir(path)
        folder = path if local else os.path.dirname(index_path)  # a Hub repository's snapshot in the cache
        package = cls.__module__.rsplit(".", 1)[0]
        for name in ("unet", "scheduler"):
            if name not in kwargs:
                _check_component_entry(index, name, index_path, folder if local else None, package)
        try:
            return super().from_pretrained(path, **kwargs)
        except Exception as error:  # diffusers' loader fails in many types: find the part at fault and name it
            raise _explain_load_error(error, index, index_path, folder, kwargs, package) from error

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """The repository's files for this pipeline, safetensors weights only (no pickle comes from the network).

        diffusers' own ``download`` would import a pushed repository's pipeline code to find its class; this class
        is known, so the files are fetched with ``huggingface_hub.snapshot_download`` and loaded from the cache.
        """
        hub = {key: kwargs[key] for key in (*HUB_KWARGS, "proxies") if kwargs.get(key) is not None}
        return snapshot_download(
            pretrained_model_name,
            allow_patterns=["model_index.json", "*/*.json", "*/*.safetensors"],  # configs, weights (and shard indexes)
            **hub,
        )

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' ``load_config``, with the remote-code class names of a pushed ``model_index.json``
        (``["unet_mnist", "MnistUNet"]``) mapped to the installed package's modules, so that no remote code runs."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        _use_installed_classes(loaded[0] if isinstance(loaded, tuple) else loaded, cls.__module__.rsplit(".", 1)[0])
        return loaded


def _read_model_index(path_or_repo_id: str, hub_kwargs: dict) -> tuple[dict, str]:
    """model_index.json of a local folder or a Hub repository, and where it was read, with a clear error when it is
    missing, unreadable or not a pipeline's."""
    if os.path.isdir(path_or_repo_id):
        index_path = os.path.join(path_or_repo_id, "model_index.json")
        if not os.path.isfile(index_path):
            raise OSError(f"{path_or_repo_id} has no model_index.json: it is not a saved pipeline.")
    else:
        index_path = _download_model_index(path_or_repo_id, hub_kwargs)
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OSError(f"{index_path} is not a readable model_index.json ({type(error).__name__}: {error}).") from None
    if not isinstance(index, dict):
        raise OSError(f"{index_path} must hold a JSON object naming the pipeline's components.")
    return index, index_path


def _download_model_index(path_or_repo_id: str, hub_kwargs: dict) -> str:
    try:
        return hf_hub_download(path_or_repo_id, "model_index.json", **hub_kwargs)
    except HFValidationError:
        raise OSError(
            f"{path_or_repo_id!r} is not a local folder (there is none at that path) and not a Hub repository id "
            "(namespace/name) either. Give the folder of a saved pipeline, or a Hub id."
        ) from None
    except RepositoryNotFoundError:
        raise OSError(
            f"{path_or_repo_id!r} is neither a local folder nor a Hub repository you can access. Check the id "
            "(namespace/name), log in for a private repository, or give the path of a saved pipeline."
        ) from None
    except RevisionNotFoundError:
        raise OSError(f"{path_or_repo_id!r} has no revision {hub_kwargs.get('revision')!r}.") from None
    except EntryNotFoundError:
        raise OSError(f"{path_or_repo_id!r} holds no model_index.json: it is not a saved pipeline.") from None
    except LocalEntryNotFoundError:
        raise OSError(
            f"There is no local folder {path_or_repo_id!r}, and the Hub repository of that name could not be "
            "reached (offline, or not in the cache). Check the path, or connect and try again."
        ) from None


def _use_installed_classes(index: dict, package: str) -> dict:
    """Map a pushed repository's remote-code names to the installed package, in place: ``_class_name``
    ``["pipeline_ddpm_mnist", "DDPMMnistPipeline"]`` becomes ``"DDPMMnistPipeline"`` and a component's
    ``["unet_mnist", "MnistUNet"]`` becomes ``["<package>.unet_mnist", "MnistUNet"]`` (diffusers would otherwise
    import the copies in the repository)."""
    if isinstance(index.get("_class_name"), list) and len(index["_class_name"]) == 2:
        index["_class_name"] = index["_class_name"][1]
    for name, entry in index.items():
        if name.startswith("_") or not _is_library_class_pair(entry) or "." in entry[0]:
            continue
        module = f"{package}.{entry[0]}"
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            index[name] = [module, entry[1]]
    return index


def _is_library_class_pair(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _component_class(index: dict, name: str, index_path: str, package: str):
    """The class model_index.json names for a component (after the remote-code mapping), or an OSError naming it."""
    entry = _use_installed_classes(dict(index), package).get(name)
    if not _is_library_class_pair(entry):
        raise OSError(f"{index_path} does not name the {name!r} component as [library, class]; got {entry!r}.")
    for library in (entry[0], package, "diffusers"):
        try:
            component_class = getattr(importlib.import_module(library), entry[1], None)
        except ImportError:
            component_class = None
        if component_class is not None:
            return component_class
    raise OSError(
        f"{index_path} names {name} class {entry[1]!r} in {entry[0]!r}, which neither that library, "
        f"{package} nor diffusers has."
    )


def _check_component_entry(index: dict, name: str, index_path: str, folder: str | None, package: str):
    """Before diffusers loads anything: the component is named as a class that exists, and its folder is there."""
    _component_class(index, name, index_path, package)
    if folder is not None and not os.path.isdir(os.path.join(folder, name)):
        raise OSError(f"{os.path.join(folder, name)} is missing: a saved pipeline has a {name}/ folder.")


def _explain_load_error(error: Exception, index: dict, index_path: str, folder: str, kwargs: dict, package: str):
    """The error of a failed load, naming the part at fault: each component is loaded alone until one fails; if
    none does, the fault is in model_index.json (e.g. a saved default)."""
    for name in ("unet", "scheduler"):
        if name in kwargs or not os.path.isdir(os.path.join(folder, name)):
            continue
        component_class = _component_class(index, name, index_path, package)
        try:
            component_class.from_pretrained(folder, subfolder=name)
        except Exception as part_error:  # noqa: BLE001 - any failure of this part is reported with its type
            return OSError(
                f"The {name} in {os.path.join(folder, name)} could not be loaded "
                f"({type(part_error).__name__}: {part_error})."
            )
    if isinstance(error, ValueError):
        return ValueError(f"{index_path}: {error}")
    return error
