"""Scoring raw text with a published text bundle through Paddle Inference.

``TextScorer.score(texts)``: filter → tokenize → group by length bucket (so a 20-token memo is not
padded to 256) → one predictor run per (bucket, slice of ``max_batch``) → P(fraud) per text in the
original order. Text that is ``None`` or empty after filtering gets ``None``: no text score.

A bundle directory holds the exported program (``inference.json``/``.pdiparams``) and the
tokenizer files (``vocab.txt`` …); its manifest holds ``max_len``, ``vocab_sha256``, ``filter`` and
``feature_set`` (``text/<vocab sha256[:12]>/<max_len>``), checked on load.

Inference goes through :class:`modeling.predictor.Predictor` (CPU with oneDNN and a thread count,
or GPU). A predictor is not thread-safe: use one ``TextScorer`` per thread (``clone()``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modeling.errors import FeatureSetMismatch, ModelLoadError
from modeling.networks import InputDesc
from modeling.predictor import Device, Predictor, PredictorOptions
from modeling.registry import TEXT, ModelRegistry
from modeling.text.filters import FilterConfig, clean_text
from modeling.text.model import INPUT_NAME, find_exported
from modeling.text.tokenizer import TextTokenizer

TEXT_KIND: Final = TEXT
DEFAULT_BUCKETS: Final = (16, 32, 64, 128, 256)
TEXT_INPUTS: Final = (InputDesc(INPUT_NAME, "int64", (-1, -1)),)


def text_feature_set(vocab_sha256: str, max_len: int) -> str:
    """Identity of what a text model reads: its vocabulary and its maximum length."""
    return f"{TEXT_KIND}/{vocab_sha256[:12]}/{max_len}"


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``length`` ids; the last bucket when none does."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def effective_buckets(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
    """Buckets below ``max_len``, then ``max_len`` itself: no bucket exceeds what the model was trained on."""
    return (*sorted({b for b in buckets if 0 < b < max_len}), max_len)


def plan_batches(
    lengths: Sequence[int], buckets: Sequence[int], max_batch: int
) -> list[tuple[int, list[int]]]:
    """Group item indices by length bucket, each group cut into slices of at most ``max_batch``.

    Returns ``(bucket_len, indices)`` per model batch, shortest buckets first."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(bucket_for(n, buckets), []).append(i)
    plan: list[tuple[int, list[int]]] = []
    for b in sorted(groups):
        idx = groups[b]
        plan.extend((b, idx[s : s + max_batch]) for s in range(0, len(idx), max_batch))
    return plan


def pad_batch(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> npt.NDArray[np.int64]:
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for r, ids in enumerate(rows):
        n = min(len(ids), width)
        out[r, :n] = ids[:n]
    return out


@dataclass(frozen=True, slots=True)
class TextBundleSpec:
    """What a text bundle's manifest says about reading text."""

    max_len: int
    vocab_sha256: str
    filter: FilterConfig
    feature_set: str
    version: str
    threshold: float

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TextBundleSpec:
        try:
            max_len = int(manifest["max_len"])
            sha = str(manifest["vocab_sha256"])
            spec = cls(
                max_len=max_len,
                vocab_sha256=sha,
                filter=FilterConfig.from_dict(dict(manifest.get("filter", {}))),
                feature_set=str(manifest.get("feature_set", text_feature_set(sha, max_len))),
                version=str(manifest.get("version", "unversioned")),
                threshold=float(manifest.get("threshold", 0.5)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"text manifest is incomplete: {exc}") from exc
        if spec.feature_set != text_feature_set(sha, max_len):
            raise FeatureSetMismatch(
                "manifest feature_set disagrees with its vocabulary and max_len",
                feature_set=spec.feature_set,
                expected=text_feature_set(sha, max_len),
            )
        return spec


class TextScorer:
    """P(fraud) for raw strings from one published text bundle."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Mapping[str, Any],
        *,
        device: Device = "cpu",
        cpu_threads: int = 1,
        use_onednn: bool = True,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_batch: int = 64,
        _predictor: Predictor | None = None,
        _tokenizer: TextTokenizer | None = None,
    ) -> None:
        self.path = Path(bundle_dir)
        self.manifest = dict(manifest)
        self.spec = TextBundleSpec.from_manifest(manifest)
        self.tokenizer = _tokenizer or TextTokenizer.from_pretrained(self.path)
        if self.tokenizer.sha256 != self.spec.vocab_sha256:
            raise FeatureSetMismatch(
                "bundle vocabulary does not match its manifest",
                path=str(self.path),
                manifest=self.spec.vocab_sha256[:12],
                found=self.tokenizer.sha256[:12],
            )
        self.buckets = effective_buckets(buckets, self.spec.max_len)
        self.max_batch = max_batch
        if _predictor is None:
            program, params = find_exported(self.path)
            options = PredictorOptions(
                device=device,
                cpu_threads=cpu_threads,
                use_onednn=use_onednn,
                model_max_batch=max_batch,
                warmup=False,  # the generic warm-up knows one length; see warmup()
                # oneDNN caches primitives per input shape: room for a few batch sizes per bucket
                onednn_cache_capacity=4 * len(self.buckets) + 8,
            )
            _predictor = Predictor(
                program, params, TEXT_INPUTS, options, version=self.spec.version, manifest=self.manifest
            )
        self.predictor = _predictor
        self.device = _predictor.device
        self.last_timings_ms: dict[str, float] = {}

    @classmethod
    def from_registry(
        cls, registry_root: str | Path, version: str | None = None, **options: Any
    ) -> TextScorer:
        """Load ``version`` (default: the current ``text`` model) from a model registry."""
        registry = ModelRegistry(registry_root)
        bundle = registry.load(version) if version is not None else registry.load_current(TEXT_KIND)
        if bundle.kind != TEXT_KIND:
            raise ModelLoadError(f"{bundle.version} is a {bundle.kind!r} model, not a text model")
        return cls(bundle.path, bundle.manifest, **options)

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def feature_set(self) -> str:
        return self.spec.feature_set

    def clone(self) -> TextScorer:
        """A scorer for another thread: its own predictor, sharing the weights and the tokenizer."""
        return TextScorer(
            self.path,
            self.manifest,
            buckets=self.buckets,
            max_batch=self.max_batch,
            _predictor=self.predictor.clone(),
            _tokenizer=self.tokenizer,
        )

    def warmup(self) -> float:
        """One run per bucket at batch 1 and ``max_batch``, so oneDNN primitives exist before traffic."""
        t0 = time.perf_counter()
        for width in self.buckets:
            for b in sorted({1, self.max_batch}):
                self.predict_ids(np.full((b, width), self.tokenizer.pad_id, dtype=np.int64))
        return time.perf_counter() - t0

    def predict_ids(self, batch: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """P(fraud) for one padded ``[batch, seq]`` id array (raises ``PredictorError``)."""
        return self.predictor.predict({INPUT_NAME: batch})

    def encode(self, texts: Sequence[str | None]) -> list[list[int] | None]:
        """Filtered and tokenized ids per text (``None`` where nothing is left to score)."""
        cleaned = [clean_text(t, self.spec.filter) for t in texts]
        present = [i for i, c in enumerate(cleaned) if c is not None]
        ids = self.tokenizer.encode([c for c in cleaned if c is not None], self.spec.max_len)
        out: list[list[int] | None] = [None] * len(texts)
        for i, row in zip(present, ids, strict=True):
            out[i] = row
        return out

    def score(self, texts: Sequence[str | None]) -> list[float | None]:
        """P(fraud) per text, in order; ``None`` for missing or empty text."""
        t0 = time.perf_counter()
        encoded = self.encode(texts)
        t1 = time.perf_counter()
        present = [i for i, e in enumerate(encoded) if e is not None]
        rows = [e for e in encoded if e is not None]
        scores: list[float | None] = [None] * len(texts)
        plan = plan_batches([len(r) for r in rows], self.buckets, self.max_batch)
        for width, idx in plan:
            probs = self.predict_ids(pad_batch([rows[i] for i in idx], width, self.tokenizer.pad_id))
            for j, p in zip(idx, probs, strict=True):
                scores[present[j]] = float(p)
        t2 = time.perf_counter()
        self.last_timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}
        return scores
