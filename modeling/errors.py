"""riskstream's error hierarchy.

::

    RiskstreamError(retriable=False)
    ├── ValidationError          an input record is malformed (names the field and the reason)
    ├── FeatureSetMismatch       a model was trained on another feature set than the engine computes
    ├── StateError               a serialized state blob cannot be restored
    │   └── StateVersionError    ... because another format version wrote it (not corruption)
    ├── ModelLoadError           a model bundle is missing, corrupt or fails verification
    ├── RegistryError            the model registry cannot satisfy a request
    ├── PredictorError           inference failed (retriable: the batch can be tried again)
    ├── ConfigError              settings name something unusable (a TLS file, …)
    └── CredentialsError         no credentials could be obtained (an OAuth token endpoint …)

Every error carries ``context``: a dict of what was being done (topic, offset, version, path …).
"""

from __future__ import annotations

from typing import Any


class RiskstreamError(Exception):
    """Base of every error riskstream raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = ", ".join(f"{k}={v!r}" for k, v in sorted(self.context.items()))
        return f"{self.message} ({ctx})"


class ValidationError(RiskstreamError):
    """An input record failed validation. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str, **context: Any) -> None:
        super().__init__(f"invalid field {field!r}: {reason}", **context)
        self.field = field
        self.reason = reason


class FeatureSetMismatch(RiskstreamError):
    """A model's recorded feature-set identity differs from the running engine's."""


class StateError(RiskstreamError):
    """A serialized window state cannot be restored (wrong version, truncated, corrupt)."""


class StateVersionError(StateError):
    """A state snapshot in a format version this build does not read: written by another
    riskstream release (a worker rolled back after a newer one wrote states). Not corruption:
    the worker stops rather than overwrite it (roll forward, or migrate the states)."""


class ModelLoadError(RiskstreamError):
    """A model bundle is missing, corrupt, or fails checksum / feature-set verification."""


class RegistryError(RiskstreamError):
    """The model registry cannot satisfy a request (unknown version, nothing published …)."""


class PredictorError(RiskstreamError):
    """Inference failed; the batch may be retried."""

    retriable = True


class ConfigError(RiskstreamError):
    """The settings are complete but name something that cannot be used (a missing or invalid
    TLS certificate or key file, …)."""


class CredentialsError(RiskstreamError):
    """Credentials could not be obtained: an OAuth token endpoint refused the client (not
    retriable) or could not be reached (retriable)."""

    def __init__(self, message: str, *, retriable: bool = False, **context: Any) -> None:
        super().__init__(message, **context)
        self.retriable = retriable
