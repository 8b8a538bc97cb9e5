"""Share a trained pipeline on the Hugging Face Hub, laid out so that both loading ways work.

The pushed repository holds the pipeline (safetensors weights, configs), the model card and pictures, and a copy of the
component code: ``pipeline_ddpm_mnist.py`` at the root, ``unet/unet_mnist.py`` and
``scheduler/scheduling_ddpm_cosine.py``, with ``model_index.json`` naming those files. So
``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works without this package, and
``DDPMMnistPipeline.from_pretrained(repo_id)`` works with it. Training checkpoints, logs and optimizer states are
never pushed, and the token never reaches a file or a log line.
"""

import json
import shutil
import tempfile
from pathlib import Path

from .redaction import redact_text
from .repo_ids import repo_id_problem
from .run_folder import RunFolder

PACKAGE_DIR = Path(__file__).resolve().parent
REMOTE_CODE = {
    # component: (module file shipped in the component's folder, class)
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
    for component, (module, _) in REMOTE_CODE.items():
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

    index = json.loads((output_dir / "model_index.json").read_text())
    index["_class_name"] = list(REMOTE_PIPELINE)
    for component, (module, class_name) in REMOTE_CODE.items():
        index[component] = [module, class_name]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    source, target = RunFolder(output_dir), RunFolder(staging)
    config = source.config()
    if config:
        target.write_config(config)
    if config or not (staging / "README.md").is_file():  # the card, with this repository's id in its snippets
        target.write_card(repo_id=repo_id, config=config)
    return staging


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
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    validate_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ddpm-mnist-push-") as staging:
        stage_repository(output_dir, staging, repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=staging, repo_id=repo_id, commit_message=commit_message)
        except HfHubHTTPError as error:
            status = getattr(error.response, "status_code", None)
            raise HubError(_explain_http_error(status, repo_id, redact_text(error, token), output_dir)) from None
        except Exception as error:
            if not _is_connection_error(error):
                raise
            raise HubError(
                f"Could not reach the Hugging Face Hub ({redact_text(type(error).__name__, token)}): this machine "
                f"seems offline. Nothing was lost: the trained pipeline stays in {output_dir}; push it later with "
                f"`ddpm-mnist push {output_dir} --hub_model_id {repo_id}`."
            ) from None
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


def _is_connection_error(error: BaseException) -> bool:
    """Connection failures of the Hub client's HTTP transport (httpx or its fork), named by class, or OSError."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError) or bool(
        names & {"TransportError", "ConnectError", "TimeoutException", "NetworkError"}
    )


def _explain_http_error(status, repo_id, message, output_dir) -> str:
    keep = f" The local output in {output_dir} is untouched."
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
