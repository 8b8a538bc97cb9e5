"""A Hub token never reaches a file, a log line, a card or a printed command: every place that writes one of those
passes it through here."""

import re

TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
SECRET_KEYS = ("hub_token",)
SECRET_FLAGS = tuple(f"--{key}" for key in SECRET_KEYS)


def redact_config(config: dict) -> dict:
    """A config as it may be saved or shown: secret keys set to None."""
    return {key: None if key in SECRET_KEYS else value for key, value in config.items()}


def redact_text(text, token: str | None = None) -> str:
    """Text (an error message, say) with ``token`` and anything shaped like a Hub token replaced."""
    text = str(text)
    if token:
        text = text.replace(token, "***")
    return TOKEN_PATTERN.sub("hf_***", text)


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line arguments without secret flags and their values (``--hub_token X`` or ``--hub_token=X``)."""
    return drop_flags(argv, SECRET_FLAGS)


def drop_flags(argv: list[str], flags) -> list[str]:
    """``argv`` without the ``flags`` named and their values (``--flag VALUE`` or ``--flag=VALUE``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in flags:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept
