"""ddpm_pipeline.guidance_sweep: the saved guidance scale is chosen by measurement, and the card shows the sweep."""

import json

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.guidance_sweep import ACCURACY_FLOOR, CLEAR_MARGIN, SWEEP_FILE, choose, main
from tests.conftest import tiny_pipeline


def row(scale, fid, clear, real_clear=0.96, accuracy=0.995, real_accuracy=0.993):
    return {
        "guidance_scale": scale,
        "fid": fid,
        "clear_rate": clear,
        "real_clear_rate": real_clear,
        "digit_accuracy": accuracy,
        "real_digit_accuracy": real_accuracy,
    }


def test_the_lowest_fid_among_readable_scales_wins():
    rows = [row(1.0, 10.0, 0.80), row(1.5, 12.0, 0.96 - CLEAR_MARGIN), row(2.0, 15.0, 0.98), row(2.5, 20.0, 0.99)]
    assert choose(rows)["guidance_scale"] == 1.5  # 1.0 has the lowest FID, but its digits are not readable
    assert choose([row(1.0, 10.0, 0.5), row(2.0, 30.0, 0.7)])["guidance_scale"] == 2.0  # none readable: the clearest


def test_readable_but_wrong_digits_lose_to_a_scale_that_draws_the_asked_for_ones():
    """The flagship's sweep (2026-12-02): at 1.5 the digits were readable but 0.989 right, at 1.75 0.994 right."""
    rows = [row(1.5, 15.1, 0.967, 0.975, 0.989), row(1.75, 17.1, 0.974, 0.975, 0.994), row(2.0, 19.3, 0.979)]
    assert choose(rows)["guidance_scale"] == 1.75
    # the floor is absolute: real digits the classifier reads 0.98 right do not lower it to 0.975
    weaker = [row(1.5, 15.0, 0.96, accuracy=0.985, real_accuracy=0.98), row(2.0, 18.0, 0.97, accuracy=ACCURACY_FLOOR)]
    assert choose(weaker)["guidance_scale"] == 2.0
    # no scale right enough: the lowest FID among the readable, as before
    assert choose([row(1.5, 15.0, 0.96, accuracy=0.98), row(2.0, 18.0, 0.97, accuracy=0.985)])["guidance_scale"] == 1.5


def test_a_sweep_is_saved_and_becomes_the_default_call_and_the_cards_table(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    main([str(tmp_path), "--scales", "1,3", "--num_samples", "20", "--save"])
    result = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [r["guidance_scale"] for r in result["rows"]] == [1.0, 3.0] and result["chosen"] in (1.0, 3.0)
    assert result["reference"] == "embedded" and result["num_samples"] == 20
    reloaded = DDPMMnistPipeline.from_pretrained(tmp_path)
    assert reloaded.config.default_guidance_scale == result["chosen"]
    card = (tmp_path / "README.md").read_text()
    assert "How the default guidance was chosen" in card and "| real held-out digits |" in card
    assert f"**{result['chosen']:g}**" in card


def test_saving_a_choice_redraws_the_pictures_and_scores_the_new_default_call(tmp_path):
    """After --save, samples.png, trajectory.png and evaluation.json show the call pipe() now makes, not the old one."""
    import yaml

    from ddpm_pipeline.evaluation import evaluate_pipeline
    from ddpm_pipeline.outputs import save_sample_grid, save_trajectory_picture
    from ddpm_pipeline.training_config import TrainingConfig

    pipe = tiny_pipeline()
    pipe.register_to_config(default_guidance_scale=1.0, default_num_inference_steps=4)
    pipe.save_pretrained(tmp_path)
    config = TrainingConfig(guidance_scale=1.0, num_inference_steps=4)
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    save_sample_grid(pipe, tmp_path / "samples.png", config)
    save_trajectory_picture(pipe, tmp_path / "trajectory.png", config)
    before = evaluate_pipeline(pipe, num_samples=20, nll_images=0)
    (tmp_path / "evaluation.json").write_text(json.dumps({**before, "reference": "embedded"}))
    old_pictures = {name: (tmp_path / name).read_bytes() for name in ("samples.png", "trajectory.png")}

    main([str(tmp_path), "--scales", "4,6", "--num_samples", "20", "--save"])
    chosen = json.loads((tmp_path / SWEEP_FILE).read_text())["chosen"]
    reloaded = DDPMMnistPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    redrawn = tmp_path / "redrawn"
    save_sample_grid(reloaded, redrawn / "samples.png", TrainingConfig(guidance_scale=chosen, num_inference_steps=4))
    assert (tmp_path / "samples.png").read_bytes() == (redrawn / "samples.png").read_bytes()
    assert (tmp_path / "samples.png").read_bytes() != old_pictures["samples.png"]
    assert (tmp_path / "trajectory.png").read_bytes() != old_pictures["trajectory.png"]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["guidance_scale"] == chosen and evaluation["num_samples"] == 20
    assert evaluation["reference"] == "embedded"
