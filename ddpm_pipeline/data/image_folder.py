"""A local folder of digit images (`--train_data_dir`), read by `datasets`' imagefolder builder after a check of
every file: one subfolder per digit, named 0 to 9, and images Pillow can read. An unreadable file is named, and
either stops the run or (`--skip_unreadable_images`) is left out and counted."""

import logging
from pathlib import Path

import PIL.Image

from .common import IMAGE_SUFFIXES, DatasetError

logger = logging.getLogger(__name__)
DIGIT_FOLDERS = {str(digit) for digit in range(10)}


def load_image_folder(folder: str, skip_unreadable: bool = False):
    """A DatasetDict with a ``train`` split: the readable images under ``folder``, labelled by their digit folder
    (unlabelled when the images lie in ``folder`` itself)."""
    import datasets  # ~1 s to import: only where a dataset is built or loaded

    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"train_data_dir {folder!r} is not a directory of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(
            f"train_data_dir {folder!r} holds no image files (.png, .jpg, .bmp, ...): put the digits in it as image "
            "files, one subfolder per digit (e.g. 3/0001.png)."
        )
    check_digit_folders(root, files)
    readable, unreadable = [], []
    for path in files:
        try:
            with PIL.Image.open(path) as image:
                image.load()
            readable.append(path)
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's ways of saying a file is not an image it reads
            unreadable.append((path, error))
    if unreadable and not skip_unreadable:
        path, error = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DatasetError(
            f"{path} cannot be read as an image ({type(error).__name__}: {error}){more}. Fix or remove it, or add "
            "--skip_unreadable_images true to train on the other images."
        )
    if unreadable:
        logger.warning("Skipped %d unreadable image(s) of %d in %s, e.g. %s.", len(unreadable), len(files), folder,
                       unreadable[0][0])  # fmt: skip
    if not readable:
        raise DatasetError(f"None of the {len(files)} image files in {folder!r} can be read.")
    try:
        return datasets.load_dataset("imagefolder", data_files={"train": [str(path) for path in readable]})
    except Exception as error:  # datasets raises several types for an unusable folder
        raise DatasetError(f"Could not read images from {folder!r}: {error}") from error


def check_digit_folders(root: Path, files: list[Path]):
    """Class folders must be the digits they hold: a folder ``cat/`` would otherwise train as some digit."""
    folders = sorted({path.relative_to(root).parts[0] for path in files if len(path.relative_to(root).parts) > 1})
    loose = [path for path in files if len(path.relative_to(root).parts) == 1]
    if folders and loose:
        raise DatasetError(
            f"train_data_dir {str(root)!r} has images both in subfolders ({', '.join(folders)}) and directly in it "
            f"(e.g. {loose[0].name}): put every image in the subfolder of its digit, 0 to 9."
        )
    not_digits = [name for name in folders if name not in DIGIT_FOLDERS]
    if not_digits:
        raise DatasetError(
            f"train_data_dir {str(root)!r}: class folders must be named by their digit, 0 to 9; "
            f"{', '.join(repr(name) for name in not_digits)} {'is' if len(not_digits) == 1 else 'are'} not. Rename "
            "each folder to the digit its images show (e.g. three/ -> 3/)."
        )
    nested = [path for path in files if len(path.relative_to(root).parts) > 2]
    if nested:
        raise DatasetError(
            f"{nested[0]} lies below a digit folder's subfolder: keep each digit's images directly in its folder "
            f"(e.g. {root / nested[0].relative_to(root).parts[0] / nested[0].name})."
        )
