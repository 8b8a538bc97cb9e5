"""ddpm-mnist generate: a balanced, labelled data set that datasets loads, written in batches a kill does not lose."""

import json

import datasets
import numpy as np
import pytest

from ddpm_pipeline import cli
from ddpm_pipeline.synthetic_data import RECORD_FILE
from tests.conftest import tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "pipe"
    pipe = tiny_pipeline()
    pipe.register_to_config(default_num_inference_steps=3)
    pipe.save_pretrained(path)
    return path


def generate(model, out, *flags):
    return cli.main(["generate", "--model", str(model), "--out", str(out), "--batch_size", "8", *flags])


def pixels(folder):
    # rebuilt every time: datasets' cache can hand back an earlier run's folder of the same name
    rows = datasets.load_dataset(str(folder), download_mode="force_redownload")["train"]
    return np.stack([np.asarray(image) for image in rows["image"]]), rows["label"]


def test_a_balanced_labelled_data_set_that_datasets_loads(model, tmp_path):
    out = tmp_path / "digits"
    assert generate(model, out, "--num_images", "20", "--digits", "3,7") == 0
    images, labels = pixels(out)
    assert images.shape == (20, 28, 28) and labels == [3, 7] * 10
    assert len(list((out / "data").glob("train-*.parquet"))) == 3  # 8 + 8 + 4
    card = (out / "README.md").read_text()
    assert "--digits 3,7" in card and "3 steps" in card and "data/train-*.parquet" in card
    assert json.loads((out / RECORD_FILE).read_text())["digits"] == [3, 7]


def test_a_killed_run_continues_to_the_same_digits(model, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert generate(model, straight, "--num_images", "20") == 0
    from ddpm_pipeline import pipeline_ddpm_mnist

    real, calls = pipeline_ddpm_mnist.DDPMMnistPipeline.__call__, {"n": 0}

    def killed_in_the_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill would end it: mid-batch, nothing of that batch written
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_ddpm_mnist.DDPMMnistPipeline, "__call__", killed_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(model, killed, "--num_images", "20")
    monkeypatch.undo()
    assert [p.name for p in sorted((killed / "data").iterdir())] == ["train-00000.parquet"]  # no partial shard
    assert generate(model, killed, "--num_images", "20") == 0
    a, b = pixels(straight), pixels(killed)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_another_call_in_the_same_folder_is_refused(model, tmp_path, capsys):
    out = tmp_path / "digits"
    assert generate(model, out, "--num_images", "8") == 0
    assert generate(model, out, "--num_images", "8", "--seed", "1") == 2
    message = capsys.readouterr().err
    assert "seed: 0 there, 1 now" in message and "another --out" in message


@pytest.mark.parametrize("flags, flag", [(["--num_images", "0"], "--num_images"), (["--digits", "1,12"], "--digits"),
                                         (["--batch_size", "x"], "--batch_size")])  # fmt: skip
def test_bad_generate_flags(model, tmp_path, capsys, flags, flag):
    with pytest.raises(SystemExit) as caught:
        generate(model, tmp_path / "out", *flags)
    assert caught.value.code == 2 and flag in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused(model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        generate(model, tmp_path / "file")
    assert "--out" in capsys.readouterr().err


def test_a_classification_accuracy_score_reads_the_first_digits_of_a_generation(model, tmp_path, monkeypatch):
    from ddpm_pipeline import evaluation
    from ddpm_pipeline.synthetic_data import load_generated_digits

    out = tmp_path / "digits-4-9"  # datasets' cache tells local folders apart by name (and sizes, times)
    assert generate(model, out, "--num_images", "20", "--digits", "4,9") == 0
    images, labels, call = load_generated_digits(out, str(model), 12)
    stored, stored_labels = pixels(out)
    assert images.shape == (12, 1, 28, 28) and labels.tolist() == stored_labels[:12] == [4, 9] * 6
    np.testing.assert_allclose(images[:, 0].numpy(), stored[:12] / 127.5 - 1, atol=1e-6)
    assert call["num_images"] == 20 and call["digits"] == [4, 9]

    trained_on = []  # what each of CAS's two classifiers is fitted to: the generation's digits, then real ones

    def fit(images, labels, epochs, **kwargs):
        trained_on.append((images, labels))
        return evaluation.load_classifier()

    monkeypatch.setattr(evaluation, "fit_classifier", fit)
    monkeypatch.setattr(evaluation, "generate", lambda *args, **kwargs: pytest.fail("sampled instead of reading"))
    score = evaluation.classification_accuracy_score(None, 12, "embedded", synthetic=(images, labels))
    assert trained_on[0][0] is not None and torch_equal(trained_on[0][0], images) and len(trained_on[1][0]) == 12
    assert score["synthetic_accuracy"] == score["real_accuracy"]  # the same (shipped) classifier read both


def test_a_classification_accuracy_score_over_several_classifier_seeds_reports_their_means(monkeypatch):
    """--cas_seeds K trains both classifiers at seeds seed, ..., seed + K - 1 (the real digits chosen again for each)
    and reports the means, each seed's figures beside them; the card says it is a mean."""
    from ddpm_pipeline import evaluation, model_card

    fitted, reports = [], iter([0.90, 0.95, 0.80, 0.96, 0.85, 0.97])  # synthetic, real for seeds 2, 3, 4

    def fit(images, labels, epochs, seed, **kwargs):
        fitted.append((seed, labels.tolist()))
        return evaluation.load_classifier()

    monkeypatch.setattr(evaluation, "fit_classifier", fit)
    monkeypatch.setattr(evaluation, "held_out_report", lambda *a, **k: {"held_out_accuracy": next(reports)})
    images, labels = torch_zeros_digits(12)
    score = evaluation.classification_accuracy_score(None, 12, "embedded", 2, synthetic=(images, labels), num_seeds=3)
    assert [seed for seed, _ in fitted] == [2, 2, 3, 3, 4, 4]
    assert fitted[1][1] != fitted[3][1], "each seed draws its own real digits"
    assert [run["seed"] for run in score["classifier_seeds"]] == [2, 3, 4]
    assert [round(run["gap"], 6) for run in score["classifier_seeds"]] == [0.05, 0.16, 0.12]
    assert score["synthetic_accuracy"] == pytest.approx(0.85) and score["real_accuracy"] == pytest.approx(0.96)
    assert score["gap"] == pytest.approx(0.11)
    card = model_card._evaluation_section({"cas": {**score, "generated_by": {"guidance_scale": 1.0}}})
    assert "mean of 3 classifier seeds | 0.85 / 0.96 |" in card
    with pytest.raises(ValueError, match="at least one classifier seed"):
        evaluation.classification_accuracy_score(None, 12, "embedded", synthetic=(images, labels), num_seeds=0)


def torch_zeros_digits(count):
    import torch

    return torch.zeros(count, 1, 28, 28), torch.arange(count) % 10


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_a_generation_of_another_model_or_too_few_digits_is_refused(model, tmp_path, capsys):
    from ddpm_pipeline.synthetic_data import GenerationError, load_generated_digits

    out = tmp_path / "digits"
    assert generate(model, out, "--num_images", "10") == 0
    with pytest.raises(GenerationError, match="not of 'someone/else'"):
        load_generated_digits(out, "someone/else", 10)
    with pytest.raises(GenerationError, match="holds 10 digits, fewer than the 11 asked for"):
        load_generated_digits(out, str(model), 11)
    with pytest.raises(GenerationError, match="holds no generation"):
        load_generated_digits(tmp_path, str(model), 10)
    assert cli.main(["evaluate", "--model", str(model), "--cas_data", str(out)]) == 2
    assert "give --cas N too" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(model), "--cas_seeds", "3"]) == 2
    assert "give --cas N too" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--model", str(model), "--cas", "10", "--cas_seeds", "0"])
    assert caught.value.code == 2 and "--cas_seeds" in capsys.readouterr().err


def test_a_copy_of_the_model_elsewhere_scores_its_digits_and_other_weights_do_not(model, tmp_path, monkeypatch):
    """Digits made on one machine are scored on another from a copy of the model in another folder: the UNet
    weights' digest, recorded in generation.json, decides; a folder with other weights is refused before any
    sampling starts."""
    import shutil

    import torch

    from ddpm_pipeline import evaluation
    from ddpm_pipeline.pipeline_ddpm_mnist import DDPMMnistPipeline
    from ddpm_pipeline.synthetic_data import GenerationError, load_generated_digits

    out = tmp_path / "digits"
    assert generate(model, out, "--num_images", "10") == 0
    copy = tmp_path / "elsewhere" / "pipe"
    shutil.copytree(model, copy)
    images, labels, call = load_generated_digits(out, str(copy), 10)
    assert call["model"] == str(model) and len(call["unet_sha256"]) == 64 and len(images) == 10
    assert call["unet_sha256"] in (out / "README.md").read_text()

    retrained = DDPMMnistPipeline.from_pretrained(copy)
    with torch.no_grad():
        next(retrained.unet.parameters()).add_(1.0)
    retrained.save_pretrained(copy)
    with pytest.raises(GenerationError, match="another folder with other UNet weights"):
        load_generated_digits(out, str(copy), 10)
    monkeypatch.setattr(evaluation, "evaluate_pipeline", lambda *a, **k: pytest.fail("sampled before the check"))
    flags = ["--cas", "10", "--cas_data", str(out), "--out", str(tmp_path / "e.json")]
    assert cli.main(["evaluate", "--model", str(copy), *flags]) == 2


def test_the_sampling_flags_choose_the_call_and_are_recorded(model, tmp_path):
    default, unguided = tmp_path / "default-call", tmp_path / "unguided"
    assert generate(model, default, "--num_images", "8") == 0
    assert generate(model, unguided, "--num_images", "8", "--guidance_scale", "1", "--num_inference_steps", "2") == 0
    call = json.loads((unguided / RECORD_FILE).read_text())
    assert (call["guidance_scale"], call["num_inference_steps"]) == (1.0, 2)
    assert "--guidance_scale 1.0" in (unguided / "README.md").read_text()
    assert not np.array_equal(pixels(default)[0], pixels(unguided)[0])


def test_a_sampled_classification_accuracy_score_uses_the_evaluations_call(model, tmp_path, monkeypatch):
    """`evaluate --cas N` with sampling flags samples its N digits at those flags (not the saved default call) and
    records the call it used."""
    from ddpm_pipeline import evaluation

    calls = []  # (steps, guidance, interval) of each generate: the evaluation's samples, then CAS's digits
    real_generate = evaluation.generate

    def spy(pipe, num, steps=None, scale=None, seed=0, batch_size=250, guidance_interval=None):
        calls.append((num, steps, scale, tuple(guidance_interval)))
        return real_generate(pipe, num, steps, scale, seed, batch_size, guidance_interval)

    monkeypatch.setattr(evaluation, "generate", spy)
    monkeypatch.setattr(evaluation, "fit_classifier", lambda *args, **kwargs: evaluation.load_classifier())
    out = tmp_path / "evaluation.json"
    flags = ["--num_samples", "4", "--nll_images", "0", "--cas", "10", "--out", str(out)]
    flags += ["--num_inference_steps", "2", "--guidance_scale", "1", "--guidance_interval", "0.2,0.9"]
    assert cli.main(["evaluate", "--model", str(model), *flags]) == 0
    assert calls == [(4, 2, 1.0, (0.2, 0.9)), (10, 2, 1.0, (0.2, 0.9))]
    recorded = json.loads(out.read_text())["cas"]["sampled_with"]
    assert recorded == {
        "scheduler": "CosineDDPMScheduler",
        "num_inference_steps": 2,
        "guidance_scale": 1.0,
        "guidance_interval": [0.2, 0.9],
        "seed": 0,
    }
