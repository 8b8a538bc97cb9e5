"""ddpm_pipeline.guidance_sweep: the saved guidance scale is chosen by measurement, and the card shows the sweep."""

import json

import pytest

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.guidance_sweep import ACCURACY_FLOOR, CLEAR_MARGIN, choose, main
from ddpm_pipeline.sweep_results import SWEEP_FILE
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
    """The flagship's sweep: at 1.5 the digits were readable but 0.989 right, at 1.75 0.994 right."""
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
    from ddpm_pipeline.pictures import sample_grid, trajectory_picture
    from ddpm_pipeline.run_folder import RunFolder
    from ddpm_pipeline.training_config import TrainingConfig

    pipe = tiny_pipeline()
    pipe.register_to_config(default_guidance_scale=1.0, default_num_inference_steps=4)
    pipe.save_pretrained(tmp_path)
    config = TrainingConfig(guidance_scale=1.0, num_inference_steps=4)
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    RunFolder(tmp_path).write_pictures(sample_grid(pipe, config.to_dict()), trajectory_picture(pipe, config.to_dict()))
    before = evaluate_pipeline(pipe, num_samples=20, nll_images=0)
    (tmp_path / "evaluation.json").write_text(json.dumps({**before, "reference": "embedded"}))
    old_pictures = {name: (tmp_path / name).read_bytes() for name in ("samples.png", "trajectory.png")}

    main([str(tmp_path), "--scales", "4,6", "--num_samples", "20", "--save"])
    chosen = json.loads((tmp_path / SWEEP_FILE).read_text())["chosen"]
    reloaded = DDPMMnistPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    redrawn = tmp_path / "redrawn"
    redrawn_config = TrainingConfig(guidance_scale=chosen, num_inference_steps=4).to_dict()
    RunFolder(redrawn).write_pictures(sample_grid(reloaded, redrawn_config))
    assert (tmp_path / "samples.png").read_bytes() == (redrawn / "samples.png").read_bytes()
    assert (tmp_path / "samples.png").read_bytes() != old_pictures["samples.png"]
    assert (tmp_path / "trajectory.png").read_bytes() != old_pictures["trajectory.png"]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["guidance_scale"] == chosen and evaluation["num_samples"] == 20
    assert evaluation["reference"] == "embedded"


def test_intervals_are_choices_too_and_the_table_names_them():
    """Guidance that reaches T makes readable digits where a larger scale does not (the quickstart trained in float32
    with AVX2 kernels: clear 0.942 at 4 on [0.4 T, 0.8 T), 0.968 at 3 on [0.4 T, 1.0 T))."""
    from ddpm_pipeline.sweep_results import sweep_table

    narrow, wide = [0.4, 0.8], [0.4, 1.0]
    rows = [
        dict(row(4.0, 69.0, 0.942, 0.975, 0.987), guidance_interval=narrow),
        dict(row(3.0, 73.0, 0.968, 0.975, 0.990), guidance_interval=wide),
        dict(row(4.0, 88.0, 0.970, 0.975, 0.993), guidance_interval=wide),
    ]
    for each in rows:
        each.update(fid_real_floor=13.4, coverage=1.0, memorization=0.93)
    chosen = choose(rows)
    assert (chosen["guidance_scale"], chosen["guidance_interval"]) == (3.0, wide)
    result = {"rows": rows, "chosen": 3.0, "chosen_interval": wide, "guidance_interval": narrow}
    table = sweep_table(result)
    assert "| interval |" in table and "[0.4 T, 1 T)" in table and "[0.4 T, 0.8 T)" in table
    bold = [line for line in table.splitlines() if "**" in line]
    assert len(bold) == 1 and "**3**" in bold[0] and "1 T)" in bold[0]  # scale 3 at the chosen interval only
    # one interval swept (every sweep before intervals were): no interval column
    assert "interval" not in sweep_table({**result, "rows": rows[:1], "chosen": 4.0, "chosen_interval": narrow})


def test_one_choice_for_several_runs_is_made_on_their_worst_figures():
    from ddpm_pipeline.guidance_sweep import worst_rows

    bf16_run = {"rows": [row(3.0, 50.0, 0.969), row(4.0, 45.0, 0.968)], "guidance_interval": [0.4, 0.8]}
    float32_run = {"rows": [row(3.0, 55.0, 0.968), row(4.0, 47.0, 0.942)], "guidance_interval": [0.4, 0.8]}
    assert choose(bf16_run["rows"])["guidance_scale"] == 4.0  # alone, the bf16 run would take 4
    worst = {r["guidance_scale"]: r for r in worst_rows([bf16_run, float32_run])}
    assert (worst[4.0]["clear_rate"], worst[4.0]["fid"]) == (0.942, 47.0) and worst[3.0]["fid"] == 55.0
    assert choose(list(worst.values()))["guidance_scale"] == 3.0  # 4 is unreadable on the float32 run


def test_several_folders_are_swept_alike_and_saved_with_one_choice(tmp_path):
    from ddpm_pipeline.guidance_sweep import worst_rows

    folders = [tmp_path / "a", tmp_path / "b"]
    for seed, folder in enumerate(folders):
        tiny_pipeline(seed=seed).save_pretrained(folder)
    args = ["--scales", "1,3", "--intervals", "0.4-0.8,0-1", "--num_samples", "20", "--save"]
    main([*map(str, folders), *args])
    results = [json.loads((folder / SWEEP_FILE).read_text()) for folder in folders]
    assert results[0]["rows"] != results[1]["rows"]  # two models, each with its own figures
    expected = choose(worst_rows(results))
    for folder, result in zip(folders, results):
        assert len(result["rows"]) == 4
        assert (result["chosen"], result["chosen_interval"]) == (
            expected["guidance_scale"],
            expected["guidance_interval"],
        )
        assert result["chosen_with"] == [str(other) for other in folders if other != folder]
        assert result["chosen_with_training"] == [""]  # saved pipelines, not training runs: no run_info.json
        config = DDPMMnistPipeline.from_pretrained(folder).config
        assert config.default_guidance_scale == expected["guidance_scale"]
        assert list(config.default_guidance_interval) == expected["guidance_interval"]
        assert "worst figures across this model and" in (folder / "README.md").read_text()


@pytest.mark.parametrize("bad", ["0.4", "0.8-0.4", "0.4-1.5", "a-b"])
def test_a_bad_interval_is_refused_naming_the_flag(tmp_path, capsys, bad):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--intervals", f"0.4-0.8,{bad}"])
    assert "--intervals" in capsys.readouterr().err


def test_the_card_says_how_the_runs_chosen_with_were_trained(tmp_path):
    from ddpm_pipeline.guidance_sweep import describe_training

    machine = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "aten_cpu_capability_env": "avx2"}
    info = {"global_step": 1540, "mixed_precision": "no", "machine": machine}
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    described = describe_training(tmp_path)
    assert described.startswith("trained in float32, 1540 steps") and "AVX2" in described and "held" in described
    info.update(mixed_precision="bf16", machine={"cpu": "AMD EPYC", "cpu_capability": "AVX512"})
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    assert "bf16" in describe_training(tmp_path) and "held" not in describe_training(tmp_path)


def test_step_counts_are_choices_too_and_the_choice_becomes_the_default_call(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    main([str(tmp_path), "--steps", "2,4", "--scales", "1,3", "--num_samples", "20", "--save"])
    result = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [(r["num_inference_steps"], r["guidance_scale"]) for r in result["rows"]] == [(2, 1), (2, 3), (4, 1), (4, 3)]
    chosen = choose(result["rows"])
    assert (result["chosen_steps"], result["chosen"]) == (chosen["num_inference_steps"], chosen["guidance_scale"])
    reloaded = DDPMMnistPipeline.from_pretrained(tmp_path)
    assert reloaded.config.default_num_inference_steps == result["chosen_steps"]
    assert reloaded.config.default_guidance_scale == result["chosen"]
    card = (tmp_path / "README.md").read_text()
    assert "| steps | guidance |" in card and f"at {result['chosen_steps']} steps." in card
    bold = [line for line in card.splitlines() if line.startswith("| **")]
    assert len(bold) == 1 and bold[0].startswith(f"| **{result['chosen_steps']}** | **{result['chosen']:g}**")


def test_wider_margins_let_fid_choose_among_more_settings():
    """The quickstart's trade: at the flagship's margins only strong guidance is right enough (FID 5x its floor); at
    wider ones (clear within 0.02, accuracy >= 0.985) the lower FID wins."""
    from ddpm_pipeline.guidance_sweep import rule_text

    rows = [row(2.0, 30.0, 0.955, 0.975, 0.986), row(3.0, 60.0, 0.969, 0.975, 0.992)]
    assert choose(rows)["guidance_scale"] == 3.0
    assert choose(rows, clear_margin=0.02, accuracy_floor=0.985, accuracy_margin=0.01)["guidance_scale"] == 2.0
    assert "- 0.02 and digit accuracy >= max(0.985," in rule_text(0.02, 0.985, 0.01)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "0"], "--steps: takes whole numbers of at least 1; '0' is not one"),
        (["--steps", "2.5"], "--steps: takes whole numbers of at least 1; '2.5' is not one"),
        (["--clear_margin", "2"], "--clear_margin: must be between 0 and 1"),
        (["--accuracy_floor", "x"], "--accuracy_floor: takes a number"),
    ],
)
def test_bad_steps_and_margins_are_refused_naming_the_flag(tmp_path, capsys, flags, words):
    tiny_pipeline().save_pretrained(tmp_path)
    with pytest.raises(SystemExit):
        main([str(tmp_path), *flags])
    assert words in capsys.readouterr().err
