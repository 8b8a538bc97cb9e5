"""The demo page as a person uses it: gradio_client against the app launched in-process on a tiny pipeline, the
refusals of bad inputs, and the Space folder served as the Hub would serve it."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from ddpm_pipeline import cli
from ddpm_pipeline.demo import MAX_IMAGES, DemoInputError, Sampler, build_demo, parse_request
from ddpm_pipeline.hub import stage_space
from ddpm_pipeline.visualization import make_grid
from tests.conftest import tiny_pipeline

MODELS = ["tiny-a", "tiny-b"]


class OutsideCalls:
    """Records every connection this process opens to an address that is not this machine's loopback."""

    def __init__(self):
        self.addresses = []

    def guard(self, connect):
        def guarded(sock, address, *args):
            host = address[0] if isinstance(address, tuple) else address
            if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
                self.addresses.append(address)
            return connect(sock, address, *args)

        return guarded


@pytest.fixture(scope="module")
def outside_calls():
    calls = OutsideCalls()
    original = socket.socket.connect
    socket.socket.connect = calls.guard(original)
    yield calls
    socket.socket.connect = original


@pytest.fixture(scope="module")
def pipelines():
    return {"tiny-a": tiny_pipeline(seed=0), "tiny-b": tiny_pipeline(seed=1)}


@pytest.fixture(scope="module")
def app(pipelines, outside_calls):
    sampler = Sampler(MODELS, load=pipelines.__getitem__)
    demo = build_demo(sampler)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    yield Client(url, verbose=False)
    demo.close()


def expected_grid(pipe, digits, count, seed):
    labels = [digits[i % len(digits)] for i in range(count)]
    out = pipe(batch_size=count, class_labels=labels, generator=torch.Generator().manual_seed(seed), output_type="np")
    return make_grid(out.images, labels=labels)


def test_the_page_returns_the_grid_of_the_asked_digits_and_their_animation(app, pipelines, outside_calls):
    grid, gif, timing = app.predict("tiny-b", ["7", "3"], 5, "12", api_name="/generate")
    # the pipeline's own output for that seed and those digits, captioned: the page shows exactly it
    expected = np.asarray(expected_grid(pipelines["tiny-b"], [3, 7], 5, 12))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(grid).convert("L")), expected)
    animation = PIL.Image.open(gif)
    assert animation.format == "GIF" and animation.n_frames == pipelines["tiny-b"].resolve_sampling()[0] + 1
    assert "5 digits in" in timing and "network evaluations per digit" in timing
    assert outside_calls.addresses == []  # no analytics, fonts or update checks: the page works offline


def test_a_full_grid_by_default_and_the_models_differ(app, pipelines):
    first, _, timing = app.predict("tiny-a", [str(d) for d in range(10)], MAX_IMAGES, "0", api_name="/generate")
    second, _, _ = app.predict("tiny-b", [str(d) for d in range(10)], MAX_IMAGES, "0", api_name="/generate")
    assert PIL.Image.open(first).size == expected_grid(pipelines["tiny-a"], list(range(10)), 36, 0).size
    assert not np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(second)))
    # the evaluations the page reports are the images the UNet saw (a guided step sends each one twice)
    seen = []
    hook = pipelines["tiny-a"].unet.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        expected_grid(pipelines["tiny-a"], list(range(10)), MAX_IMAGES, 0)
    finally:
        hook.remove()
    assert f"{MAX_IMAGES} digits in" in timing and f": {sum(seen) / MAX_IMAGES:g} network evaluations" in timing


@pytest.mark.parametrize(
    "model,digits,count,seed,message",
    [
        ("tiny-a", [], 5, "0", "No digit chosen"),
        ("tiny-a", ["1"], 0, "0", "from 1 to 36"),
        ("tiny-a", ["1"], 1000, "0", "got 1,000"),
        ("tiny-a", ["1"], 2.5, "0", "whole number from 1 to 36"),
        ("tiny-a", ["1"], 3, "abc", "Seed: enter a whole number"),
        ("tiny-a", ["1"], 3, "-4", "Seed: enter a whole number"),
        ("nope", ["1"], 3, "0", "nope is not in the list of choices"),  # Gradio's own check
    ],
)
def test_bad_inputs_get_a_message_on_the_page(app, model, digits, count, seed, message):
    with pytest.raises(AppError, match=message) as error:
        app.predict(model, digits, count, seed, api_name="/generate")
    assert "Traceback" not in str(error.value)


@pytest.mark.parametrize(
    "digits,count,seed,message",
    [
        (None, 3, "0", "No digit chosen"),
        (["1", "x"], 3, "0", "among 0-9"),
        (["12"], 3, "0", "among 0-9"),
        (["1"], None, "0", "whole number"),
        (["1"], True, "0", "whole number"),
        (["1"], 37, "0", "from 1 to 36"),
        (["1"], 3, None, "got 'nothing'"),
        (["1"], 3, "  ", "got 'nothing'"),
        (["1"], 3, "1.5", "Seed"),
        (["1"], 3, str(2**64), "Seed"),
    ],
)
def test_parse_request_refuses(digits, count, seed, message):
    with pytest.raises(DemoInputError, match=message):
        parse_request(MODELS, "tiny-a", digits, count, seed)


def test_parse_request_refuses_a_model_it_does_not_offer():
    with pytest.raises(DemoInputError, match="Unknown model 'nope': choose one of tiny-a, tiny-b"):
        parse_request(MODELS, "nope", ["1"], 3, "0")


def test_parse_request_reads_what_the_page_sends():
    request = parse_request(MODELS, "tiny-b", ["7", "3", "7"], 36.0, " 42 ")
    assert (request.model, request.digits, request.count, request.seed) == ("tiny-b", [3, 7], 36, 42)


def test_demo_command_without_a_model_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no pretrained/ddpm-mnist here
    assert cli.main(["demo"]) == 2
    assert "Pass --model" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.end_to_end  # in .ci/run, not the README command: ~10 s of processes
def test_the_space_folder_serves_the_models_in_its_metadata(tmp_path):
    """The Space as pushed: app.py, requirements, the card with ``models:``, and its own copy of the package."""
    model = tmp_path / "model"
    tiny_pipeline().save_pretrained(model)
    space = stage_space(tmp_path / "space", [str(model)])
    assert (space / "ddpm_pipeline" / "demo.py").is_file() and not (space / "ddpm_pipeline" / "weights").exists()
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "PYTHONPATH": ""}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()[-3000:]
                time.sleep(0.5)
        grid, _, timing = client.predict(str(model), ["4"], 2, "1", api_name="/generate")
        assert PIL.Image.open(grid).size == expected_grid(tiny_pipeline(), [4], 2, 1).size and "2 digits" in timing
    finally:
        server.terminate()
        server.wait(timeout=30)
