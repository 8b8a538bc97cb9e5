"""Labelled synthetic digits as a `datasets` data set: `ddpm-mnist generate --model M --num_images N --out DIR`.

The digits come from the model's default call, or the call the sampling flags ask for (e.g. less guidance: more varied
digits).

The digits are balanced over the ones asked for (image i asks for ``digits[i % len(digits)]``) and made in batches,
each from a generator seeded by (seed, batch), so a batch's digits do not depend on the batches before it. Each batch
is written as its own parquet shard, renamed into place when whole: a run that is killed keeps every finished batch,
and the same command continues where it stopped and gives the same digits. ``generation.json`` records the call; a
re-run with another call is refused. The card (README.md) says how the digits were made, and `datasets.load_dataset(
DIR)` reads the folder.
"""

import io
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from tqdm.auto import tqdm

from .checkpointing import file_digest
from .data import scale_to_model_range

RECORD_FILE = "generation.json"
SHARD_DIGITS = 5  # data/train-00000.parquet ...
SEED_STRIDE = 1_000_003  # batch b of seed s draws from seed s * SEED_STRIDE + b
PARTIAL_SHARDS = shutil.ignore_patterns("*.partial-*")  # a shard being written (left behind by a kill)
UNET_WEIGHTS = Path("unet") / SAFETENSORS_WEIGHTS_NAME  # where save_pretrained writes them


class GenerationError(ValueError):
    """A generation that cannot go on as asked (another call in the same folder)."""


def generation_call(
    pipe, model: str, num_images: int, digits: list[int], seed: int, batch_size: int, sampling: dict | None = None
) -> dict:
    """Everything that decides the digits: the model and its call (``sampling``'s settings, the rest its default
    call's), the labels, the seed and the batches."""
    sampling = sampling or {}
    steps, scale, interval = pipe.resolve_sampling(
        sampling.get("num_inference_steps"), sampling.get("guidance_scale"), sampling.get("guidance_interval")
    )
    return {
        "model": str(model),
        "num_images": num_images,
        "digits": list(digits),
        "seed": seed,
        "batch_size": batch_size,
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "guidance_interval": list(interval),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "unet_sha256": unet_digest(model),
    }


def unet_digest(model: str) -> str | None:
    """SHA-256 of a local pipeline folder's UNet weights (None for a Hub id, whose name already says which model):
    digits made on one machine are still their model's when scored on another, from a copy in another folder."""
    weights = Path(model) / UNET_WEIGHTS
    return file_digest(weights) if weights.is_file() else None


def generate_dataset(pipe, out: Path, call: dict, progress: bool = True) -> Path:
    """Write (or finish writing) the data set of ``call`` into ``out``; returns ``out``."""
    import datasets  # ~1 s to import: only where a data set is written

    out = Path(out)
    shards = out / "data"
    shards.mkdir(parents=True, exist_ok=True)
    check_same_call(out, call)
    (out / RECORD_FILE).write_text(json.dumps(call, indent=2))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    total, size, digits = call["num_images"], call["batch_size"], call["digits"]
    batches = range((total + size - 1) // size)
    bar = tqdm(total=total, desc="generate", unit="img", disable=not progress)
    for batch in batches:
        start, stop = batch * size, min(total, (batch + 1) * size)
        shard = shards / f"train-{batch:0{SHARD_DIGITS}d}.parquet"
        if not shard.is_file():  # a finished batch of an earlier run stays as it is
            labels = [digits[i % len(digits)] for i in range(start, stop)]
            generator = torch.Generator().manual_seed(call["seed"] * SEED_STRIDE + batch)
            images = pipe(
                batch_size=stop - start,
                class_labels=labels,
                generator=generator,
                num_inference_steps=call["num_inference_steps"],
                guidance_scale=call["guidance_scale"],
                guidance_interval=call["guidance_interval"],
            ).images
            partial = shard.with_name(f"{shard.name}.partial-{os.getpid()}")  # PARTIAL_SHARDS
            datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(partial))
            os.replace(partial, shard)
        bar.update(stop - start)
    bar.close()
    (out / "README.md").write_text(dataset_card(call))
    return out


def load_generated_digits(folder: Path, model: str, num_images: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The first ``num_images`` digits of a finished generation in ``folder`` (in [-1, 1]) with their labels and
    the call that made them, checked to be ``model``'s: a score read from them is that model's."""
    import numpy as np
    import PIL.Image
    import pyarrow.parquet

    record = Path(folder) / RECORD_FILE
    if not record.is_file():
        raise GenerationError(f"{folder} holds no generation ({RECORD_FILE}): write one with `ddpm-mnist generate`.")
    call = json.loads(record.read_text())
    if not _same_model(call, model):
        raise GenerationError(
            f"{folder} holds digits of {call['model']!r}, not of {model!r} (another folder with other UNet weights): "
            "score the model that made them."
        )
    written = len(list((Path(folder) / "data").glob("train-*.parquet")))  # batches are written in order
    available = min(written * call["batch_size"], call["num_images"])
    if available < num_images:
        raise GenerationError(
            f"{folder} holds {available:,} digits, fewer than the {num_images:,} asked for: finish its generation "
            "with the same `ddpm-mnist generate` command, or ask for fewer."
        )
    images, labels = [], []
    for shard in sorted((Path(folder) / "data").glob("train-*.parquet")):  # read directly: no cache to go stale
        table = pyarrow.parquet.read_table(shard).to_pydict()
        images += [np.asarray(PIL.Image.open(io.BytesIO(image["bytes"]))) for image in table["image"]]
        labels += table["label"]
        if len(images) >= num_images:
            break
    pixels = torch.from_numpy(np.stack(images[:num_images]))[:, None]  # uint8, as the real digits are read
    return scale_to_model_range(pixels), torch.tensor(labels[:num_images]), call


def _same_model(call: dict, model: str) -> bool:
    recorded = call["model"]
    digest = unet_digest(model) if call.get("unet_sha256") else None  # older records name the model only
    if digest:
        return call["unet_sha256"] == digest  # the same weights, wherever they are now (and not a retrained folder)
    if os.path.isdir(recorded) and os.path.isdir(model):
        return os.path.samefile(recorded, model)
    return recorded == model


def check_same_call(out: Path, call: dict):
    """A folder that holds part of another generation is not continued with this one."""
    record = out / RECORD_FILE
    if not record.is_file():
        return
    earlier = json.loads(record.read_text())
    if "unet_sha256" not in earlier:  # recorded before the weights' digest was: the model's name still decides
        call = {key: value for key, value in call.items() if key != "unet_sha256"}
    changed = sorted(key for key in set(earlier) | set(call) if earlier.get(key) != call.get(key))
    if changed:
        differences = "; ".join(f"{key}: {earlier.get(key)!r} there, {call.get(key)!r} now" for key in changed)
        raise GenerationError(
            f"{out} holds a generation made with another call ({differences}). Run the same command to finish it, "
            "or write this one to another --out."
        )


def dataset_card(call: dict) -> str:
    """The data set's README.md: metadata for `datasets` and the Hub, and how the digits were made."""
    digits, digit_flag = ", ".join(map(str, call["digits"])), ",".join(map(str, call["digits"]))
    low, high = call["guidance_interval"]
    digest = call.get("unet_sha256")
    weights_line = f" The model's UNet weights have SHA-256 `{digest}`." if digest else ""
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{"".join(f"          '{d}': '{d}'{chr(10)}" for d in range(10))}task_categories:
- image-classification
tags:
- synthetic
- mnist
- ddpm-mnist
---

# Synthetic MNIST digits

{call["num_images"]:,} 28x28 digits made by the DDPM at `{call["model"]}`, balanced over the digits {digits} (image i
asks for the i-th of them in turn; its label is the digit asked for). Each batch of {call["batch_size"]} was sampled
with {call["num_inference_steps"]} steps, classifier-free guidance {call["guidance_scale"]}
where {low} T <= t < {high} T; UNet in {call["dtype"]}) from a generator seeded with seed x {SEED_STRIDE} + batch, seed
{call["seed"]}. The same command makes the same digits on the same machine.{weights_line}

```bash
ddpm-mnist generate --model {call["model"]} --num_images {call["num_images"]} --digits {digit_flag} \\
    --seed {call["seed"]} --batch_size {call["batch_size"]} --num_inference_steps {call["num_inference_steps"]} \\
    --guidance_scale {call["guidance_scale"]} --guidance_interval {low},{high} --out DIR
```

```python
import datasets

digits = datasets.load_dataset("DIR")["train"]
```
"""
