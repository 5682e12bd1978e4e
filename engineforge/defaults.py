"""Names and addresses every command agrees on, and the one rule for model names. No heavy imports."""

from __future__ import annotations

import re

from engineforge.errors import ConfigError

DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_REPO = "model_repo"
DEFAULT_MODEL_NAME = "classifier"
# Directory of a bundle (and of the tokenizer model's version directory) holding the Hugging Face tokenizer.
TOKENIZER_DIRNAME = "tokenizer"

# Triton model names are directory names in the repository; engineforge adds `_engine` and `.vN.tokenizer`,
# `.vN.engine` (serve/model_layout.py).
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_model_name(name: object, what: str = "model name") -> str:
    """Return `name` if Triton and engineforge can both use it, else raise ConfigError with the rule."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ConfigError(f"{what} {name!r} is invalid: use letters, digits, '_', '-' and '.', starting with a "
                          "letter or digit, at most 100 characters (e.g. 'intent-v2')")
    return name
