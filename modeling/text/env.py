"""Importing paddlenlp safely: offline, with a riskstream-local home, without import-time noise.

paddlenlp (and the huggingface_hub / aistudio-sdk it pulls in) reads these environment variables
when first imported, so :func:`prepare_paddlenlp` must run before anything imports it. Every
module of ``modeling.text`` that needs paddlenlp calls it at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from modeling.settings import default_home

OFFLINE_ENV: Final = {
    "AISTUDIO_BOS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}

# Warnings paddle / paddlenlp raise while importing, none of which is ours to act on.
_IMPORT_NOISE: Final = (
    "No ccache found",
    "Setuptools is replacing distutils",
    r"`pydantic\.config\.Extra` is deprecated",
)

_prepared = False


def prepare_paddlenlp(home: Path | None = None) -> None:
    """Force offline mode, point ``PPNLP_HOME`` at ``home`` (default ``<riskstream home>/paddlenlp``)
    unless already set, then import paddle and paddlenlp with their import-time warnings silenced.

    Values already in the environment win, so an operator can still choose their own home.
    """
    global _prepared
    if _prepared:
        return
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    ppnlp_home = Path(os.environ.setdefault("PPNLP_HOME", str(home or default_home() / "paddlenlp")))
    ppnlp_home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        for pattern in _IMPORT_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        import paddle  # noqa: F401
        import paddlenlp.transformers  # noqa: F401
    _prepared = True


@contextlib.contextmanager
def quiet_paddlenlp(level: int = logging.WARNING) -> Iterator[None]:
    """Raise paddlenlp's logger to ``level`` for the duration (its INFO lines on every tokenizer or
    model load and save are noise in a serving log); the previous level is restored."""
    log = logging.getLogger("PaddleNLP")
    previous = log.level
    log.setLevel(max(level, previous))
    try:
        yield
    finally:
        log.setLevel(previous)
