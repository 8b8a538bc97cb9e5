"""Share a trained pipeline on the Hugging Face Hub, laid out so that both loading ways work.

The pushed repository holds the pipeline (safetensors weights, configs), the model card and pictures, and a copy of the
component code: ``pipeline_ddpm_mnist.py`` at the root, ``unet/unet_mnist.py`` and
``scheduler/scheduling_ddpm_cosine.py``, with ``model_index.json`` naming those files. So
``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works without this package, and
``DDPMMnistPipeline.from_pretrained(repo_id)`` works with it. Training checkpoints, logs and optimizer states are
never pushed, and the token never reaches a file or a log line. The demo goes to a Space of its own (``push_space``),
and a generated data set to a dataset repository (``push_folder``), by the same upload.
"""

import json
import shutil
import tempfile
from pathlib import Path

from .redaction import redact_text
from .repo_ids import repo_id_problem
from .run_folder import RunFolder

PACKAGE_DIR = Path(__file__).resolve().parent
SPACE_DIR = PACKAGE_DIR.parent / "space"  # the demo's Space, beside the package in a clone
SPACE_FILES = ("app.py", "requirements.txt")  # copied as they are; README.md gets the models' ids
REMOTE_CODE = {
    # component: (module file shipped in the component's folder, class), unless model_index.json names another
    # module of this package
    "unet": ("unet_mnist", "MnistUNet"),
    "scheduler": ("scheduling_ddpm_cosine", "CosineDDPMScheduler"),
}
REMOTE_PIPELINE = ("pipeline_ddpm_mnist", "DDPMMnistPipeline")
PUSHED_FILES = (
    "model_index.json",
    "README.md",
    "samples.png",
    "trajectory.png",
    "train_config.yaml",
    "evaluation.json",
    "guidance_sweep.json",
    "run_info.json",
    "trajectory.gif",
)


class HubError(RuntimeError):
    """A push or load that failed, with what to do about it (and never the token)."""


def validate_repo_id(repo_id: str) -> str:
    problem = repo_id_problem(repo_id)
    if problem:
        raise HubError(
            f"Repository id {repo_id!r} is not of the form namespace/name (e.g. your-username/ddpm-mnist): {problem}."
        )
    return repo_id


def stage_repository(output_dir: str | Path, staging_dir: str | Path, repo_id: str | None = None) -> Path:
    """Copy what is pushed into ``staging_dir``: the pipeline, card, pictures and the remote-code layout."""
    output_dir, staging = Path(output_dir), Path(staging_dir)
    if not (output_dir / "model_index.json").is_file():
        raise HubError(
            f"{output_dir} holds no saved pipeline (no model_index.json). Push the output folder of a finished "
            "training run, or save one with pipe.save_pretrained(dir)."
        )
    staging.mkdir(parents=True, exist_ok=True)
    index = json.loads((output_dir / "model_index.json").read_text())
    remote_code = remote_code_of(index)
    for component, (module, _) in remote_code.items():
        source = output_dir / component
        if not source.is_dir():
            raise HubError(f"{output_dir} has no {component}/ folder; it is not a complete DDPMMnistPipeline.")
        target = staging / component
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl"))
        shutil.copy2(PACKAGE_DIR / f"{module}.py", target / f"{module}.py")
    shutil.copy2(PACKAGE_DIR / f"{REMOTE_PIPELINE[0]}.py", staging / f"{REMOTE_PIPELINE[0]}.py")
    for name in PUSHED_FILES:
        if (output_dir / name).is_file():
            shutil.copy2(output_dir / name, staging / name)

    index["_class_name"] = list(REMOTE_PIPELINE)
    for component, (module, class_name) in remote_code.items():
        index[component] = [module, class_name]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    source, target = RunFolder(output_dir), RunFolder(staging)
    config = source.config()
    if config:
        target.write_config(config)
    if config or not (staging / "README.md").is_file():  # the card, with this repository's id in its snippets
        target.write_card(repo_id=repo_id, config=config)
    return staging


def remote_code_of(index: dict) -> dict[str, tuple[str, str]]:
    """Each component's module file and class in the remote-code layout: the package's own module the saved
    model_index.json names (a distilled student's scheduler is scheduling_distilled), else REMOTE_CODE's."""
    code = {}
    for component, default in REMOTE_CODE.items():
        library, class_name = (index.get(component) or [None, None])[:2]
        module = str(library).rsplit(".", 1)[-1]
        code[component] = (module, class_name) if (PACKAGE_DIR / f"{module}.py").is_file() else default
    return code


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload DDPM MNIST pipeline",
) -> str:
    """Create ``repo_id`` if needed and upload the staged folder in one commit; returns the commit URL.

    ``token`` falls back to HF_TOKEN or the `hf auth login` store (huggingface_hub's own lookup).
    """
    return push_folder(
        lambda staging: stage_repository(output_dir, staging, repo_id),
        repo_id,
        token=token,
        private=private,
        commit_message=commit_message,
        kept=f"the trained pipeline stays in {output_dir}; push it later with `ddpm-mnist push {output_dir} "
        f"--hub_model_id {repo_id}`",
    )


def stage_space(staging_dir: str | Path, model_ids: list[str]) -> Path:
    """The demo as a Space: ``space/`` (app, requirements, README with its metadata, ``models:`` set to
    ``model_ids``) and a copy of this package's code, which the app imports (no weights: it loads the models)."""
    from huggingface_hub import SpaceCard

    if not (SPACE_DIR / "app.py").is_file():
        raise HubError(
            f"The demo's Space folder ({SPACE_DIR}) is not here: push a Space from a clone of ddpm-mnist, where "
            "space/ sits beside ddpm_pipeline/."
        )
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, staging / name)
    card = SpaceCard.load(SPACE_DIR / "README.md")
    card.data.models = list(model_ids)
    card.save(staging / "README.md")
    shutil.copytree(
        PACKAGE_DIR, staging / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "weights")
    )
    return staging


def push_space(
    space_id: str, model_ids: list[str], token: str | None = None, private: bool = False, output_dir: str = "."
) -> str:
    """Create the Space ``space_id`` (Gradio) if needed and upload the demo for ``model_ids``; returns the commit
    URL."""
    return push_folder(
        lambda staging: stage_space(staging, model_ids),
        space_id,
        repo_type="space",
        token=token,
        private=private,
        commit_message=f"Demo of {', '.join(model_ids)}",
        kept=f"the model is pushed; push the Space again with `ddpm-mnist push {output_dir} --hub_model_id "
        f"{model_ids[0]} --space_id {space_id}`",
    )


def push_folder(
    stage,
    repo_id: str,
    repo_type: str = "model",
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload",
    kept: str = "nothing local was changed",
) -> str:
    """Stage a folder with ``stage(staging_dir)``, create the repository if needed and upload it in one commit;
    returns the commit URL. Failures are HubErrors that say why, what was kept (``kept``) and never the token."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    validate_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ddpm-mnist-push-") as staging:
        stage(staging)
        try:
            api.create_repo(
                repo_id,
                repo_type=repo_type,
                private=private,
                exist_ok=True,
                space_sdk="gradio" if repo_type == "space" else None,
            )
            commit = api.upload_folder(
                folder_path=staging, repo_id=repo_id, repo_type=repo_type, commit_message=commit_message
            )
        except HfHubHTTPError as error:
            status = getattr(error.response, "status_code", None)
            raise HubError(_explain_http_error(status, repo_id, redact_text(error, token), kept)) from None
        except Exception as error:
            if not _is_connection_error(error):
                raise
            raise HubError(
                f"Could not reach the Hugging Face Hub ({redact_text(type(error).__name__, token)}): this machine "
                f"seems offline. Nothing was lost: {kept}."
            ) from None
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


def _is_connection_error(error: BaseException) -> bool:
    """Connection failures of the Hub client's HTTP transport (httpx or its fork), named by class, or OSError."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError) or bool(
        names & {"TransportError", "ConnectError", "TimeoutException", "NetworkError"}
    )


def _explain_http_error(status, repo_id, message, kept) -> str:
    keep = f" Nothing was lost: {kept}."
    if status == 401:
        return (
            "The Hub refused the credentials (401): not logged in, or the token is invalid or expired. Run "
            "`hf auth login`, set HF_TOKEN, or pass --hub_token." + keep
        )
    if status == 403:
        return (
            f"No write access to {repo_id} (403): the token cannot create or write to this repository. Use a token "
            "with write permission, or a namespace you own." + keep
        )
    if status == 404:
        return f"{repo_id} was not found on the Hub (404)." + keep
    return f"The Hub answered with an error ({status}): {message}." + keep
