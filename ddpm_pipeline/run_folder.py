"""The one reader and writer of what a training run leaves in its folder, besides the pipeline's own files:
train_config.yaml, run_info.json, evaluation.json, guidance_sweep.json, samples.png, trajectory.png and the model
card (README.md), which is written from the others. Configs are redacted on the way in and out.

`python -m ddpm_pipeline.run_folder FOLDER [FOLDER ...]` writes each folder's card again from what it holds.
"""

import json
import sys
from pathlib import Path

import yaml

from .model_card import render_model_card, sampling_settings
from .redaction import redact_config
from .student_card import render_student_card
from .sweep_results import SWEEP_FILE

CONFIG_FILE = "train_config.yaml"
RUN_INFO_FILE = "run_info.json"
EVALUATION_FILE = "evaluation.json"
CARD_FILE = "README.md"
SAMPLES_FILE = "samples.png"
TRAJECTORY_FILE = "trajectory.png"
INDEX_FILE = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ reading
    def _json(self, name: str) -> dict | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def has_pipeline(self) -> bool:
        return (self.path / INDEX_FILE).is_file()

    def config(self) -> dict:
        """train_config.yaml, redacted ({} when the folder has none)."""
        path = self.path / CONFIG_FILE
        return redact_config(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def run_info(self) -> dict | None:
        return self._json(RUN_INFO_FILE)

    def evaluation(self) -> dict | None:
        return self._json(EVALUATION_FILE)

    def sweep(self) -> dict | None:
        return self._json(SWEEP_FILE)

    def sampling_settings(self, config: dict | None = None) -> dict:
        """What the saved pipeline does when called bare: its saved default call and its scheduler's settings."""
        config = self.config() if config is None else config
        return sampling_settings(config, self._json(INDEX_FILE), self._json(SCHEDULER_CONFIG))

    # ------------------------------------------------------------------ writing
    def save_pipeline(self, pipe):
        self.path.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(self.path, safe_serialization=True)

    def write_config(self, config: dict):
        self._write(CONFIG_FILE, yaml.safe_dump(redact_config(config), sort_keys=False))

    def write_run_info(self, run_info: dict):
        self._write(RUN_INFO_FILE, json.dumps(run_info, indent=2))

    def write_evaluation(self, evaluation: dict):
        self._write(EVALUATION_FILE, json.dumps(evaluation, indent=2))

    def write_sweep(self, result: dict):
        self._write(SWEEP_FILE, json.dumps(result, indent=2) + "\n")

    def write_pictures(self, grid, trajectory=None):
        """samples.png (the 6x6 grid) and trajectory.png (the denoising trajectory), as PIL images."""
        self.path.mkdir(parents=True, exist_ok=True)
        grid.save(self.path / SAMPLES_FILE)
        if trajectory is not None:
            trajectory.save(self.path / TRAJECTORY_FILE)

    def write_epoch_grid(self, epoch: int, grid):
        """samples/epoch_NNNN.png: the grid after an epoch (1-based), to watch a run learn."""
        path = self.path / "samples" / f"epoch_{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)

    def set_default_call(self, scale: float, interval: list[float] | None = None, steps: int | None = None):
        """Make ``scale`` (and ``interval``, ``steps``) the saved default call: model_index.json, and
        train_config.yaml if any."""
        index = self._json(INDEX_FILE)
        index["default_guidance_scale"] = scale
        if interval is not None:
            index["default_guidance_interval"] = [float(bound) for bound in interval]
        if steps is not None:
            index["default_num_inference_steps"] = steps
        self._write(INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
        if (self.path / CONFIG_FILE).is_file():
            config = self.config()
            config["guidance_scale"] = scale
            if interval is not None:
                config["guidance_interval"] = [float(bound) for bound in interval]
            if steps is not None:
                config["num_inference_steps"] = steps
            self.write_config(config)

    def write_card(self, repo_id: str | None = None, config: dict | None = None) -> Path:
        """README.md from what the folder holds (``config`` instead of its train_config.yaml, if given)."""
        run_info = self.run_info() or {}
        if run_info.get("teacher"):  # a distilled student
            return self._write(CARD_FILE, render_student_card(run_info, self.evaluation(), repo_id))
        config = self.config() if config is None else redact_config(config)
        card = render_model_card(
            config,
            self.run_info(),
            self.evaluation(),
            repo_id or config.get("hub_model_id"),
            sweep=self.sweep(),
            settings=self.sampling_settings(config),
        )
        return self._write(CARD_FILE, card)

    def _write(self, name: str, text: str) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


if __name__ == "__main__":
    for argument in sys.argv[1:] or ["--help"]:
        if argument.startswith("-"):
            print("usage: python -m ddpm_pipeline.run_folder FOLDER [FOLDER ...]  (writes each FOLDER/README.md again)")
            sys.exit(0 if argument in ("-h", "--help") else 2)
        print(f"wrote {RunFolder(argument).write_card()}")
