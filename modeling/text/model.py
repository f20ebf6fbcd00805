"""The text classifier: ``ErnieForSequenceClassification`` from ``paddlenlp.transformers``.

Built from an :class:`ErnieSize` (a small ERNIE trained from scratch) when no pretrained weights
exist, which is the case offline; loaded with ``from_pretrained(local_dir)`` when a user has weights
saved locally (e.g. ``ernie-3.0-mini-zh``). :func:`export_inference` writes a static program
taking ``input_ids`` int64 ``[batch, seq]`` (``[PAD]`` positions are masked inside) and returning
the fraud probability float32 ``[batch]``, softmax included, for Paddle Inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from modeling.errors import ModelLoadError
from modeling.text.env import prepare_paddlenlp, quiet_paddlenlp

prepare_paddlenlp()

import paddle  # noqa: E402
from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification  # noqa: E402

INPUT_NAME: Final = "input_ids"
NUM_LABELS: Final = 2
EXPORT_PREFIX: Final = "inference"


@dataclass(frozen=True, slots=True)
class ErnieSize:
    """Architecture of a from-scratch ERNIE. The default (2 layers, 128 hidden) runs a 64 × 64 batch in
    about 47 ms on one CPU thread through Paddle Inference with oneDNN."""

    num_hidden_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(vocab_size: int, size: ErnieSize = ErnieSize(), *, pad_token_id: int = 0) -> Any:
    """A randomly initialised ERNIE classifier (2 labels) for a vocabulary of ``vocab_size``."""
    config = ErnieConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        type_vocab_size=2,
        num_labels=NUM_LABELS,
        **size.to_dict(),
    )
    return ErnieForSequenceClassification(config)


def load_pretrained(directory: str | Path, *, vocab_size: int | None = None) -> Any:
    """``ErnieForSequenceClassification.from_pretrained(directory)``, local directories only.

    ``vocab_size`` larger than the checkpoint's (the tokenizer added the mask tokens) resizes the
    word embeddings. A checkpoint without a classifier head gets a fresh one."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ModelLoadError("no model config.json in directory", path=str(path))
    with quiet_paddlenlp():
        model = ErnieForSequenceClassification.from_pretrained(str(path), num_labels=NUM_LABELS)
    if vocab_size is not None and vocab_size != model.config.vocab_size:
        if vocab_size < model.config.vocab_size:
            raise ModelLoadError(
                "tokenizer vocabulary is smaller than the model's",
                path=str(path),
                tokenizer=vocab_size,
                model=model.config.vocab_size,
            )
        model.resize_token_embeddings(vocab_size)
    return model


def save_pretrained(model: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_paddlenlp():
        model.save_pretrained(str(directory))


def max_positions(model: Any) -> int:
    return int(model.config.max_position_embeddings)


class FraudProbability(paddle.nn.Layer):
    """Wraps the classifier so that the exported program outputs P(fraud) per row."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: Any) -> Any:
        logits = self.classifier(input_ids)
        return paddle.nn.functional.softmax(logits, axis=-1)[:, 1]


def predict_proba(model: Any, batch_ids: Any) -> Any:
    """Eager P(fraud) for an int64 ``[batch, seq]`` array (``[PAD]``-padded); numpy float32 ``[batch]``."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            probs = FraudProbability(model)(paddle.to_tensor(batch_ids, dtype="int64"))
        return probs.numpy()
    finally:
        if was_training:
            model.train()


def export_inference(model: Any, directory: Path, prefix: str = EXPORT_PREFIX) -> tuple[Path, Path]:
    """``paddle.jit.save`` the eval-mode model; returns (model file, params file).

    Input ``input_ids`` int64 ``[None, None]``; output P(fraud) float32 ``[None]``."""
    directory.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        spec = [paddle.static.InputSpec([None, None], "int64", name=INPUT_NAME)]
        static = paddle.jit.to_static(FraudProbability(model), input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(directory / prefix))
    finally:
        if was_training:
            model.train()
    return find_exported(directory, prefix)


def find_exported(directory: Path, prefix: str = EXPORT_PREFIX) -> tuple[Path, Path]:
    """The (program, params) pair ``paddle.jit.save`` wrote: ``.json`` under PIR, ``.pdmodel`` before."""
    params = directory / f"{prefix}.pdiparams"
    for suffix in (".json", ".pdmodel"):
        program = directory / f"{prefix}{suffix}"
        if program.is_file() and params.is_file():
            return program, params
    raise ModelLoadError("no exported inference program", path=str(directory), prefix=prefix)
