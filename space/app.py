"""The Hugging Face Space: the ddpm-mnist demo on the models its README.md names in the metadata (`models:`).

`ddpm-mnist push --space_id` uploads this folder with a copy of the package beside it and the pushed model's id in
the metadata. From a clone's root, `python space/app.py` serves the flagship in pretrained/ddpm-mnist. The Space's
address and port come from Gradio's own settings (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT), which Spaces set.
"""

from pathlib import Path

from huggingface_hub import SpaceCard

from ddpm_pipeline.demo import launch

if __name__ == "__main__":
    launch(SpaceCard.load(Path(__file__).with_name("README.md")).data.models)
