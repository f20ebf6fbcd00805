"""Hot model refresh: poll the registry, verify and load a newly current version off the event
loop, then swap it in between batches. A bundle that fails verification is refused, logged and
counted; the old model keeps serving."""

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

BEHAVIOUR, TEXT = "behaviour", "text"


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
        self._lock = asyncio.Lock()
        wanted = self._wanted()
        if wanted[0] is None:
            raise RiskstreamError(
                f"no behaviour model is published in {settings.registry_dir}; run `riskstream train` first"
            )
        self._scorer = self._load(wanted)
        self._versions = wanted
        self._publish_info()

    def scorer(self) -> Scorer:
        assert self._scorer is not None
        return self._scorer

    def _wanted(self) -> tuple[str | None, str | None]:
        return self.registry.current(BEHAVIOUR), self.registry.current(TEXT)

    def _load(self, versions: tuple[str | None, str | None]) -> Scorer:
        b, t = versions
        assert b is not None
        predictor = Predictor.load(
            self.registry, BEHAVIOUR, self.options, version=b, expected_feature_set=self.config.feature_set
        )
        text = None
        if t is not None:
            text = TextScorer.from_registry(
                self.settings.registry_dir,
                t,
                device=self.options.device,
                cpu_threads=self.settings.cpu_threads,
                use_onednn=self.settings.use_onednn,
            )
        return Scorer(predictor, self.config, text, text_weight=self.settings.text_weight)

    async def poll(self) -> bool:
        """Swap to the registry's current versions if they changed; True if a swap happened."""
        async with self._lock:
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
                "feature_set": s.feature_set,
            }
        )
