"""Train, evaluate, export and publish the Chinese text risk model.

``train_text`` cleans the text with :mod:`modeling.text.filters`, splits it (stratified, seeded)
into train/validation/test, builds a character vocabulary from the training split (or loads a
pretrained tokenizer and model from a local directory), trains an ERNIE classifier with early
stopping on validation loss, picks the F1-best threshold on validation, and reports precision,
recall, F1 and AUC on the held-out test split beside two baselines:

* **length only**: logistic regression on text length, which shows whether length alone separates
  the classes (the shared TeleAntiFraud file is length-matched, so it should not);
* **character bigrams**: multinomial naive Bayes, a bag-of-words model with no notion of order,
  which shows how much of the task is topic vocabulary.

``export_bundle`` writes the inference program and tokenizer into a staging directory and returns
the manifest; ``publish_text_model`` hands both to the model registry as kind ``"text"``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeling.decisions import Thresholds
from modeling.errors import ValidationError
from modeling.registry import ModelRegistry
from modeling.text.filters import FilterConfig, clean_text
from modeling.text.model import (
    EXPORT_PREFIX,
    ErnieSize,
    build_model,
    export_inference,
    load_pretrained,
    predict_proba,
)
from modeling.text.scorer import (
    DEFAULT_BUCKETS,
    TEXT_INPUTS,
    TEXT_KIND,
    effective_buckets,
    pad_batch,
    text_feature_set,
)
from modeling.text.tokenizer import TextTokenizer
from training.text_metrics import (
    CharBigramNB,
    LengthBaseline,
    best_f1_threshold,
    binary_metrics,
    stratified_split,
    threshold_for_precision,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TextTrainOptions:
    max_len: int = 128
    batch_size: int = 32
    max_epochs: int = 10
    patience: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    seed: int = 7
    val_frac: float = 0.15
    test_frac: float = 0.15
    vocab_min_freq: int = 2
    vocab_max_size: int = 8000
    size: ErnieSize = field(default_factory=ErnieSize)
    pretrained_dir: Path | None = None
    filter: FilterConfig = field(default_factory=FilterConfig)
    threads: int = 1
    #: validation precision the ``decline`` threshold must reach (``review`` is the F1-best cut)
    decline_precision: float = 0.99

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_len": self.max_len,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "warmup_frac": self.warmup_frac,
            "seed": self.seed,
            "val_frac": self.val_frac,
            "test_frac": self.test_frac,
            "vocab_min_freq": self.vocab_min_freq,
            "vocab_max_size": self.vocab_max_size,
            "architecture": self.size.to_dict(),
            "pretrained_dir": None if self.pretrained_dir is None else str(self.pretrained_dir),
            "filter": self.filter.to_dict(),
            "decline_precision": self.decline_precision,
        }


@dataclass
class TextTrainResult:
    tokenizer: TextTokenizer
    model: Any
    options: TextTrainOptions
    threshold: float
    decline_threshold: float
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------- data


def read_labeled_csv(path: Path) -> tuple[list[str], IntArray]:
    """Rows of a UTF-8 CSV with columns ``text,label`` (label 0 or 1)."""
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ValidationError(
                "<header>", f"expected columns text,label, got {reader.fieldnames}", path=str(path)
            )
        for line, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label not in ("0", "1"):
                raise ValidationError("label", f"expected 0 or 1, got {label!r}", path=str(path), line=line)
            texts.append(row["text"] or "")
            labels.append(int(label))
    if not texts:
        raise ValidationError("<rows>", "no rows", path=str(path))
    return texts, np.asarray(labels, dtype=np.int64)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def training_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, pool: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort pools of ``pool`` batches by length, cut,
    shuffle the batches. Keeps padding small without always presenting the same neighbours."""
    order = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    span = batch_size * pool
    for s in range(0, len(order), span):
        chunk = sorted(order[s : s + span].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------------------ training


def _probabilities(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> FloatArray:
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros(len(rows), dtype=np.float64)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(rows[i]) for i in idx)
        out[idx] = predict_proba(model, pad_batch([rows[i] for i in idx], width, pad_id))
    return out


def _log_loss(y: IntArray, p: FloatArray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def train_text(
    texts: Sequence[str],
    labels: IntArray,
    options: TextTrainOptions,
    workdir: Path,
    *,
    log: Callable[[str], None] = print,
) -> TextTrainResult:
    """Train and evaluate (see the module docstring). ``workdir`` receives the tokenizer files."""
    import paddle
    from paddlenlp.transformers import LinearDecayWithWarmup

    started = time.perf_counter()
    paddle.seed(options.seed)
    paddle.base.core.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)

    cleaned = [clean_text(t, options.filter) for t in texts]
    keep = np.asarray([i for i, c in enumerate(cleaned) if c is not None], dtype=np.int64)
    if len(keep) < len(texts):
        log(f"dropped {len(texts) - len(keep)} rows with no text left after filtering")
    docs = [cleaned[i] or "" for i in keep]
    raw_lengths = np.asarray([len(texts[i]) for i in keep], dtype=np.float64)
    y = labels[keep]
    split = stratified_split(y, options.val_frac, options.test_frac, options.seed)

    if options.pretrained_dir is not None:
        tokenizer = TextTokenizer.from_pretrained(options.pretrained_dir)
        model = load_pretrained(options.pretrained_dir, vocab_size=tokenizer.vocab_size)
    else:
        tokenizer = TextTokenizer.build(
            (docs[i] for i in split.train),
            workdir / "tokenizer",
            min_freq=options.vocab_min_freq,
            max_size=options.vocab_max_size,
        )
        model = build_model(tokenizer.vocab_size, options.size, pad_token_id=tokenizer.pad_id)
    max_len = min(options.max_len, int(model.config.max_position_embeddings))
    if max_len != options.max_len:
        options = replace(options, max_len=max_len)
    ids = tokenizer.encode(docs, max_len)
    log(
        f"{len(docs)} rows (train {len(split.train)}, val {len(split.val)}, test {len(split.test)}), "
        f"vocabulary {tokenizer.vocab_size}, max_len {max_len}"
    )

    train_rows = [ids[i] for i in split.train]
    val_rows = [ids[i] for i in split.val]
    steps_per_epoch = math.ceil(len(train_rows) / options.batch_size)
    total = steps_per_epoch * options.max_epochs
    schedule = LinearDecayWithWarmup(options.learning_rate, total, options.warmup_frac)
    decay = [p.name for n, p in model.named_parameters() if not any(k in n for k in ("bias", "norm"))]
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=model.parameters(),
        weight_decay=options.weight_decay,
        apply_decay_param_fun=lambda name: name in decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    loss_fn = paddle.nn.CrossEntropyLoss()

    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, options.max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses: list[float] = []
        for batch in training_batches([len(r) for r in train_rows], options.batch_size, rng):
            rows = [train_rows[i] for i in batch]
            x = paddle.to_tensor(pad_batch(rows, max(len(r) for r in rows), tokenizer.pad_id))
            target = paddle.to_tensor(y[split.train[batch]])
            loss = loss_fn(model(x), target)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.clear_grad()
            losses.append(float(loss))
        p_val = _probabilities(model, val_rows, tokenizer.pad_id, 64)
        val_loss = _log_loss(y[split.val], p_val)
        val_auc = binary_metrics(y[split.val], p_val, 0.5)["auc"]
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_auc": val_auc,
                "seconds": time.perf_counter() - t0,
            }
        )
        log(
            f"epoch {epoch}: train loss {np.mean(losses):.4f}, val loss {val_loss:.4f}, "
            f"val AUC {val_auc:.4f} ({time.perf_counter() - t0:.1f} s)"
        )
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= options.patience:
                log(f"early stop: no validation improvement for {stale} epochs; best epoch {best_epoch}")
                break
    if best_state is not None:
        model.set_state_dict(best_state)
    model.eval()
    train_seconds = time.perf_counter() - started

    p_val = _probabilities(model, val_rows, tokenizer.pad_id, 64)
    threshold = best_f1_threshold(y[split.val], p_val)
    strict = threshold_for_precision(y[split.val], p_val, options.decline_precision)
    decline_threshold = 1.0 if strict is None else max(strict, threshold)
    p_test = _probabilities(model, [ids[i] for i in split.test], tokenizer.pad_id, 64)
    y_test = y[split.test]

    length = LengthBaseline.fit(raw_lengths[split.train], y[split.train])
    length_thr = best_f1_threshold(y[split.val], length.predict_proba(raw_lengths[split.val]))
    nb = CharBigramNB.fit([docs[i] for i in split.train], y[split.train])
    nb_thr = best_f1_threshold(y[split.val], nb.log_odds([docs[i] for i in split.val]))
    metrics = {
        "test": binary_metrics(y_test, p_test, threshold),
        "validation": binary_metrics(y[split.val], p_val, threshold),
        "length_baseline": binary_metrics(y_test, length.predict_proba(raw_lengths[split.test]), length_thr),
        "char_bigram_nb_baseline": binary_metrics(y_test, nb.log_odds([docs[i] for i in split.test]), nb_thr),
    }
    data = {
        "rows": len(texts),
        "rows_used": len(docs),
        "split": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "positives": {
            "train": int(y[split.train].sum()),
            "val": int(y[split.val].sum()),
            "test": int(y_test.sum()),
        },
    }
    return TextTrainResult(
        tokenizer=tokenizer,
        model=model,
        options=options,
        threshold=threshold,
        decline_threshold=decline_threshold,
        metrics=metrics,
        history=history,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        data=data,
    )


# ------------------------------------------------------------------------------- export and publish


def export_bundle(
    result: TextTrainResult, staging: Path, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the inference program and tokenizer into ``staging``; return the manifest (without the
    fields the registry adds). ``source`` describes the training file (name, sha256)."""
    program, params = export_inference(result.model, staging, EXPORT_PREFIX)
    result.tokenizer.save(staging)
    sha = result.tokenizer.sha256
    max_len = result.options.max_len
    return {
        "model_type": "ernie-sequence-classification",
        "feature_set": text_feature_set(sha, max_len),
        "vocab_sha256": sha,
        "vocab_size": result.tokenizer.vocab_size,
        "max_len": max_len,
        "buckets": list(effective_buckets(DEFAULT_BUCKETS, max_len)),
        "filter": result.options.filter.to_dict(),
        "thresholds": Thresholds(review=result.threshold, decline=result.decline_threshold).to_dict(),
        "threshold_rule": (
            f"review: F1-best cut on validation; decline: lowest validation cut with precision >= "
            f"{result.options.decline_precision} (1.0 when none)"
        ),
        "model": {
            "model_file": program.name,
            "params_file": params.name,
            "inputs": [d.to_dict() for d in TEXT_INPUTS],
        },
        "output": {"dtype": "float32", "shape": [-1], "meaning": "P(fraud), softmax inside the program"},
        "metrics": result.metrics,
        "hyperparameters": result.options.to_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 2),
        "training_data": {**result.data, **(source or {})},
    }


def publish_text_model(
    result: TextTrainResult,
    registry_root: Path,
    staging: Path,
    source: dict[str, Any] | None = None,
    *,
    shadow: bool = False,
) -> str:
    """Export into ``staging`` and publish it into the registry at ``registry_root`` (with
    ``shadow``: as the text model in shadow, scored beside the served one); the version."""
    manifest = export_bundle(result, staging, source)
    return ModelRegistry(registry_root).publish(TEXT_KIND, staging, manifest, shadow=shadow)
