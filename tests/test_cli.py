"""ddpm_pipeline.cli: the ddpm-mnist command (sample, trajectory, evaluate) on a tiny saved pipeline."""

import json

import numpy as np
import PIL.Image
import pytest

from ddpm_pipeline import cli
from tests.conftest import tiny_pipeline


@pytest.fixture
def saved(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_sample_and_trajectory(saved, tmp_path):
    assert (
        cli.main(
            [
                "sample",
                "--model",
                str(saved),
                "--num_images",
                "36",
                "--num_inference_steps",
                "3",
                "--digits",
                "0,1,7",
                "--out",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    grid = PIL.Image.open(tmp_path / "s.png")
    assert grid.width > 6 * 28 * 3
    assert (
        cli.main(
            [
                "trajectory",
                "--model",
                str(saved),
                "--num_inference_steps",
                "12",
                "--num_images",
                "2",
                "--out",
                str(tmp_path / "t.png"),
                "--gif",
                str(tmp_path / "t.gif"),
            ]
        )
        == 0
    )
    assert PIL.Image.open(tmp_path / "t.gif").n_frames >= 2
    assert PIL.Image.open(tmp_path / "t.png").width > PIL.Image.open(tmp_path / "t.png").height
    with pytest.raises(SystemExit):
        cli.main(["sample", "--model", str(saved), "--digits", "12"])


def test_cli_guidance_interval(saved, tmp_path, capsys):
    def grid(name, *flags):
        argv = ["sample", "--model", str(saved), "--num_images", "4", "--num_inference_steps", "3", *flags]
        assert cli.main([*argv, "--out", str(tmp_path / name)]) == 0
        return np.asarray(PIL.Image.open(tmp_path / name))

    guided = grid("guided.png", "--guidance_scale", "3", "--guidance_interval", "0,1")  # every step
    unguided = grid("unguided.png", "--guidance_scale", "1")
    # the 3 timesteps of the 50-step chain (49, 24, 0) all lie outside [1, 10): no step is guided
    np.testing.assert_array_equal(
        grid("outside.png", "--guidance_scale", "3", "--guidance_interval", "0.02,0.2"), unguided
    )
    partly = grid("partly.png", "--guidance_scale", "3", "--guidance_interval", "0.4,1")
    assert not np.array_equal(partly, guided) and not np.array_equal(partly, unguided)

    assert cli.main(["sample", "--model", str(saved), "--guidance_interval", "0.8,0.2"]) == 2
    assert "guidance_interval must be two fractions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sample", "--model", str(saved), "--guidance_interval", "high,low"])
    assert "LOW,HIGH" in capsys.readouterr().err


def test_cli_evaluate_writes_json(saved, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(saved),
                "--num_samples",
                "12",
                "--num_inference_steps",
                "2",
                "--nll_images",
                "2",
                "--nll_steps",
                "2",
                "--guidance_interval",
                "0.5,1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    for key in [
        "fid",
        "fid_real_floor",
        "fid_images_per_side",
        "clear_rate",
        "digit_accuracy",
        "coverage",
        "nll_bpd",
        "memorization",
        "images_per_second",
        "sampling_seconds",
    ]:
        assert key in result, key
    assert result["guidance_interval"] == [0.5, 1.0]
    assert "clear_rate" in capsys.readouterr().out


def test_cli_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["sample", "--model", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err
