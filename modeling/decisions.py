"""From scores to decisions (approve / review / decline) and short reason codes. Pure numpy.

**Thresholds** are chosen on validation scores for target alert rates: ``decline`` flags the top
``decline_rate`` (default 0.2%) of events, ``review`` the top ``review_rate`` (default 1%,
decline included). They are stored in the manifest, so a new model keeps the alert volume the
operations team is staffed for, whatever its score calibration.

**Reason codes** use a precomputed linear attribution. At training time the trainer fits a linear
surrogate of the network, ``logit ≈ b + Σ w_i z_i`` over the *standardized* tabular features
``z`` (ridge least squares, :func:`fit_linear_surrogate`), on the validation events the model
flags plus as many random ones. A surrogate rather than the gradient because the network's
threshold (step) inputs have zero gradient almost everywhere; the surrogate still sees their
effect. (``networks.linear_attribution`` gives the gradient version.) At serving time an
event's contribution of feature ``i`` is ``z_i · w_i`` — one elementwise product and a partial
sort per event, no Paddle call. The top-k positive contributions become codes: the feature's
code (:func:`reason_code`) plus ``_HIGH`` or ``_LOW`` for the sign of ``z_i`` (time-of-day
features give ``UNUSUAL_HOUR``). Only tabular features are attributed; the behaviour-sequence
part of the network has no codes of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modeling.records import DECISIONS

APPROVE: Final = 0
REVIEW: Final = 1
DECLINE: Final = 2
MAX_ABS_Z: Final = 8.0


@dataclass(frozen=True)
class Thresholds:
    """``score >= decline`` → decline; ``score >= review`` → review; else approve."""

    review: float
    decline: float
    review_rate: float | None = None
    decline_rate: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= self.decline <= 1.0:
            raise ValueError(f"need 0 <= review <= decline <= 1, got {self.review}, {self.decline}")

    def to_dict(self) -> dict[str, float | None]:
        return {
            "review": self.review,
            "decline": self.decline,
            "review_rate": self.review_rate,
            "decline_rate": self.decline_rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        return cls(float(d["review"]), float(d["decline"]), opt("review_rate"), opt("decline_rate"))


def _threshold_for_rate(sorted_desc: npt.NDArray[np.float64], rate: float) -> float:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"alert rate must be in (0, 1), got {rate}")
    k = max(1, int(np.ceil(rate * len(sorted_desc))))
    return float(sorted_desc[k - 1])


def choose_thresholds(
    scores: npt.ArrayLike, review_rate: float = 0.01, decline_rate: float = 0.002
) -> Thresholds:
    """Thresholds flagging the top ``review_rate`` / ``decline_rate`` of ``scores`` (ties may add
    a few more)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if len(s) == 0:
        raise ValueError("cannot choose thresholds from no scores")
    if decline_rate > review_rate:
        raise ValueError("decline_rate must not exceed review_rate")
    return Thresholds(
        review=_threshold_for_rate(s, review_rate),
        decline=_threshold_for_rate(s, decline_rate),
        review_rate=review_rate,
        decline_rate=decline_rate,
    )


def decide_codes(scores: npt.ArrayLike, thresholds: Thresholds) -> npt.NDArray[np.int8]:
    """0 approve, 1 review, 2 decline (vectorized)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(s.shape, dtype=np.int8)
    out[s >= thresholds.review] = REVIEW
    out[s >= thresholds.decline] = DECLINE
    return out


def decide(scores: npt.ArrayLike, thresholds: Thresholds) -> list[str]:
    """``"approve"`` / ``"review"`` / ``"decline"`` per score."""
    return [DECISIONS[c] for c in decide_codes(scores, thresholds).tolist()]


# ------------------------------------------------------------------------------------ reasons

_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(p), c)
    for p, c in (
        (r"^amount(_log)?$", "AMOUNT"),
        (r"^amount_(vs_mean|vs_max|zscore)_.*$", "AMOUNT_VS_HISTORY"),
        (r"^t_risk_(\w+)$", "TERMINAL_RISK_{0}"),
        (r"^t_count_(\w+)$", "TERMINAL_VOLUME_{0}"),
        (r"^u_count_(\w+)$", "TXN_COUNT_{0}"),
        (r"^u_sum_(\w+)$", "SPEND_{0}"),
        (r"^u_mean_(\w+)$", "AVG_AMOUNT_{0}"),
        (r"^u_max_(\w+)$", "MAX_AMOUNT_{0}"),
        (r"^u_(known_frauds_\w+|has_known_fraud)$", "KNOWN_FRAUD_HISTORY"),
        (r"^u_new_terminal$", "NEW_TERMINAL"),
        (r"^u_distinct_terminals_(\w+)$", "TERMINALS_{0}"),
        (r"^u_(log_)?secs_since_prev$", "TIME_SINCE_PREVIOUS"),
        (r"^u_has_prev$", "HAS_HISTORY"),
        (r"^(hour_sin|hour_cos|is_night)$", "UNUSUAL_HOUR"),
        (r"^is_weekend$", "WEEKEND"),
        (r"^c_log_secs_since_login$", "TIME_SINCE_LOGIN"),
        (r"^c_txn_device_unknown$", "UNKNOWN_DEVICE"),
        (r"^c_(\w+)$", "{0}"),
    )
)
_DIRECTIONLESS: Final = frozenset({"UNUSUAL_HOUR"})


def reason_code(feature_name: str) -> str:
    """The code stem of a feature name: ``t_risk_7d`` → ``TERMINAL_RISK_7D``,
    ``amount_vs_mean_30d`` → ``AMOUNT_VS_HISTORY``; unknown names are upper-cased."""
    for pattern, template in _RULES:
        m = pattern.match(feature_name)
        if m:
            return template.format(*m.groups()).upper()
    return re.sub(r"[^A-Z0-9]+", "_", feature_name.upper()).strip("_")


def directed_code(stem: str, high: bool) -> str:
    if stem in _DIRECTIONLESS:
        return stem
    return f"{stem}_{'HIGH' if high else 'LOW'}"


@dataclass(frozen=True, eq=False)
class ReasonCoder:
    """Top-k reason codes per event from the linear attribution ``z · weights``."""

    feature_names: tuple[str, ...]
    mean: npt.NDArray[np.float32]
    inv_std: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]
    log_inputs: bool = True
    top_k: int = 3
    stems: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        for name in ("mean", "inv_std", "weights"):
            if np.asarray(getattr(self, name)).shape != (n,):
                raise ValueError(f"{name} must have one entry per feature ({n})")
        object.__setattr__(self, "stems", reason_codes(self.feature_names))

    def standardize(self, tab: npt.ArrayLike) -> npt.NDArray[np.float32]:
        x = np.asarray(tab, dtype=np.float32)
        if self.log_inputs:
            x = np.sign(x) * np.log1p(np.abs(x))
        z: npt.NDArray[np.float32] = np.clip((x - self.mean) * self.inv_std, -MAX_ABS_Z, MAX_ABS_Z)
        return z

    def contributions(self, tab: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """[B, F] first-order contributions to the logit."""
        out: npt.NDArray[np.float32] = self.standardize(tab) * self.weights
        return out

    def explain(self, tab: npt.ArrayLike) -> list[tuple[str, ...]]:
        """Up to ``top_k`` distinct codes per row, strongest first; only positive contributions."""
        z = self.standardize(np.atleast_2d(np.asarray(tab, dtype=np.float32)))
        contrib = z * self.weights
        k = min(self.top_k * 2, contrib.shape[1])  # spare candidates: stems can repeat
        if k == 0:
            return [() for _ in range(len(contrib))]
        top = np.argpartition(-contrib, k - 1, axis=1)[:, :k]
        stems = self.stems
        out: list[tuple[str, ...]] = []
        for row, cand in enumerate(top):
            codes: list[str] = []
            for j in cand[np.argsort(-contrib[row, cand], kind="stable")]:
                if contrib[row, j] <= 0 or len(codes) == self.top_k:
                    break
                code = directed_code(stems[j], bool(z[row, j] > 0))
                if code not in codes:
                    codes.append(code)
            out.append(tuple(codes))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "standardized value x weight of a linear surrogate of the logit",
            "feature_names": list(self.feature_names),
            "mean": [float(v) for v in self.mean],
            "inv_std": [float(v) for v in self.inv_std],
            "weights": [float(v) for v in self.weights],
            "log_inputs": self.log_inputs,
            "top_k": self.top_k,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReasonCoder:
        return cls(
            feature_names=tuple(str(n) for n in d["feature_names"]),
            mean=np.asarray(d["mean"], dtype=np.float32),
            inv_std=np.asarray(d["inv_std"], dtype=np.float32),
            weights=np.asarray(d["weights"], dtype=np.float32),
            log_inputs=bool(d.get("log_inputs", True)),
            top_k=int(d.get("top_k", 3)),
        )


def fit_linear_surrogate(
    z: npt.ArrayLike, logits: npt.ArrayLike, ridge: float = 0.3
) -> npt.NDArray[np.float32]:
    """Weights ``w`` of ``logit ≈ b + z·w`` by ridge least squares (intercept not penalized).

    The window features are strongly collinear (sums, means and maxima over nested windows);
    plain least squares then gives large weights of opposite signs to near-duplicates, which
    makes poor reasons. The ridge (``ridge · n`` on standardized features) shrinks them towards
    shared, same-signed weights."""
    zz = np.asarray(z, dtype=np.float64)
    t = np.asarray(logits, dtype=np.float64).ravel()
    if zz.ndim != 2 or len(zz) != len(t):
        raise ValueError("z must be [n, F] with one logit per row")
    zc = zz - zz.mean(axis=0)
    tc = t - t.mean()
    a = zc.T @ zc + ridge * len(t) * np.eye(zz.shape[1])
    w: npt.NDArray[np.float64] = np.linalg.solve(a, zc.T @ tc)
    return w.astype(np.float32)


def reason_codes(feature_names: Sequence[str]) -> tuple[str, ...]:
    """Code stems of every feature, in order (for documentation and the manifest)."""
    return tuple(reason_code(f) for f in feature_names)
