"""Hot model refresh: poll the registry, verify and load a newly current version off the event
loop, then swap it in between batches. A bundle that fails verification is refused, logged and
counted; the old model keeps serving.

The registry's shadow versions (challengers, ``modeling/registry.py``), a behaviour model, a
text model or both, are loaded the same way and scored on every batch after the current models:
one shadow scorer made of the challengers and the served model of a kind with none in shadow
(shared, so that model runs once for both). Its verdicts go into the risk events and metrics,
never into the decision. A shadow bundle that fails verification is refused and counted
(``kind="shadow"``) without touching the current models.
"""

from __future__ import annotations

import asyncio
import logging

from modeling.errors import RiskstreamError
from modeling.features import FeatureConfig
from modeling.predictor import Predictor, PredictorOptions
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer
from modeling.settings import Settings
from modeling.text.scorer import TextScorer
from streams.metrics import Metrics

log = logging.getLogger("riskstream.models")

BEHAVIOUR, TEXT, SHADOW = "behaviour", "text", "shadow"
# What the shadow scorer was built from: (behaviour challenger, text challenger, served behaviour,
# served text); a challenger is None for a kind with none in shadow
ShadowKey = tuple[str | None, str | None, str | None, str | None]


def _challengers(key: ShadowKey) -> str:
    return " and ".join(v for v in key[:2] if v is not None) or "none"


class ModelWatcher:
    def __init__(self, settings: Settings, config: FeatureConfig, metrics: Metrics) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.registry = ModelRegistry(settings.registry_dir)
        self.options = PredictorOptions.from_settings(settings)
        self._refused: set[str] = set()
        self._versions: tuple[str | None, str | None] = (None, None)
        self._scorer: Scorer | None = None
        self._shadow: Scorer | None = None
        self._shadow_key: ShadowKey = (None, None, None, None)
        self._lock = asyncio.Lock()
        wanted = self._wanted()
        if wanted[0] is None:
            raise RiskstreamError(
                f"no behaviour model is published in {settings.registry_dir}; run `riskstream train` first"
            )
        self._scorer = self._load(wanted)
        self._versions = wanted
        self._refresh_shadow_now()
        self._publish_info()

    def scorer(self) -> Scorer:
        assert self._scorer is not None
        return self._scorer

    def shadow(self) -> Scorer | None:
        """The shadow model's scorer, if one is in shadow and loaded."""
        return self._shadow

    def _wanted(self) -> tuple[str | None, str | None]:
        return self.registry.current(BEHAVIOUR), self.registry.current(TEXT)

    def _wanted_shadow(self) -> ShadowKey:
        """(behaviour challenger, text challenger, served behaviour, served text): a kind's
        challenger is None when none is in shadow or it is the served version (promoted)."""
        behaviour, text = self.registry.shadow(BEHAVIOUR), self.registry.shadow(TEXT)
        served_b, served_t = self._versions
        return (
            None if behaviour == served_b else behaviour,
            None if text == served_t else text,
            served_b,
            served_t,
        )

    def _load_shadow(self, key: ShadowKey) -> Scorer:
        """The challengers with the served models of the other kind: the shadow scorer shares the
        served behaviour predictor or text model (the batch then runs it once for both)."""
        behaviour, text, _, _ = key
        current = self.scorer()
        predictor = current.behaviour
        if behaviour is not None:
            fs = self.config.feature_set
            predictor = Predictor.load(
                self.registry, BEHAVIOUR, self.options, version=behaviour, expected_feature_set=fs
            )
        text_model = current.text if text is None else self._load_text(text)
        return Scorer(predictor, self.config, text_model, text_weight=self.settings.text_weight)

    def _refresh_shadow_now(self) -> None:
        """At start: load the shadow synchronously (a refused one is counted, not fatal)."""
        key = self._wanted_shadow()
        if key[0] is not None or key[1] is not None:
            try:
                self._shadow = self._load_shadow(key)
            except RiskstreamError as exc:
                self._refuse_shadow(key, exc)
        self._shadow_key = key

    def _refuse_shadow(self, key: ShadowKey, exc: Exception) -> None:
        self._refused.add("shadow|" + "|".join(map(str, key)))
        self.metrics.model_rejections.labels(SHADOW).inc()
        log.error("refused shadow model %s: %s; scoring without a shadow", _challengers(key), exc)

    def _load(self, versions: tuple[str | None, str | None]) -> Scorer:
        b, t = versions
        assert b is not None
        predictor = Predictor.load(
            self.registry, BEHAVIOUR, self.options, version=b, expected_feature_set=self.config.feature_set
        )
        text = None if t is None else self._load_text(t)
        return Scorer(predictor, self.config, text, text_weight=self.settings.text_weight)

    def _load_text(self, version: str) -> TextScorer:
        return TextScorer.from_registry(
            self.settings.registry_dir,
            version,
            device=self.options.device,
            cpu_threads=self.settings.cpu_threads,
            use_onednn=self.settings.use_onednn,
        )

    async def poll(self) -> bool:
        """Swap to the registry's current (and shadow) versions if they changed; True if a swap
        happened."""
        async with self._lock:
            swapped = await self._poll_current()
            return await self._poll_shadow() or swapped

    async def _poll_shadow(self) -> bool:
        key = self._wanted_shadow()
        if key == self._shadow_key or "shadow|" + "|".join(map(str, key)) in self._refused:
            return False
        old = self._shadow.version if self._shadow is not None else None
        shadow = None
        if key[0] is not None or key[1] is not None:
            try:
                shadow = await asyncio.get_running_loop().run_in_executor(None, self._load_shadow, key)
            except RiskstreamError as exc:
                self._refuse_shadow(key, exc)
                return False
        self._shadow, self._shadow_key = shadow, key
        self.metrics.model_swaps.labels(SHADOW).inc()
        self._publish_info()
        log.info("shadow model: %s -> %s", old, shadow.version if shadow is not None else None)
        return True

    async def _poll_current(self) -> bool:
        wanted = self._wanted()
        if wanted == self._versions or wanted[0] is None:
            return False
        key = f"{wanted[0]}|{wanted[1]}"
        if key in self._refused:
            return False
        loop = asyncio.get_running_loop()
        try:
            scorer = await loop.run_in_executor(None, self._load, wanted)
        except RiskstreamError as exc:
            self._refused.add(key)
            kind = BEHAVIOUR if wanted[0] != self._versions[0] else TEXT
            self.metrics.model_rejections.labels(kind).inc()
            log.error("refused model %s: %s; still serving %s", key, exc, self.scorer().version)
            return False
        old = self.scorer().version
        for kind, new, cur in zip((BEHAVIOUR, TEXT), wanted, self._versions, strict=True):
            if new != cur:
                self.metrics.model_swaps.labels(kind).inc()
        self._scorer = scorer  # picked up by the next batch; a running batch keeps its model
        self._versions = wanted
        self._publish_info()
        log.info("model swapped: %s -> %s", old, scorer.version)
        return True

    def _publish_info(self) -> None:
        s = self.scorer()
        self.metrics.model_info.info(
            {
                "behaviour": self._versions[0] or "",
                "text": self._versions[1] or "",
                "shadow": (self._shadow_key[0] or "") if self._shadow is not None else "",
                "text_shadow": (self._shadow_key[1] or "") if self._shadow is not None else "",
                "feature_set": s.feature_set,
            }
        )
