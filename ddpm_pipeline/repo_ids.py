"""What a Hub repository id must be: huggingface_hub's own rules, and a namespace (a push must know whose it is)."""

from huggingface_hub.utils import HFValidationError, validate_repo_id


def repo_id_problem(repo_id) -> str | None:
    """None for a usable ``namespace/name``, else what is wrong with it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return str(error).split("\n")[0]
    return None if repo_id.count("/") == 1 else "it has no namespace"
