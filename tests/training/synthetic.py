"""Synthetic training arrays shared by the trainer tests (a learnable logit over a few inputs)."""

from __future__ import annotations

import numpy as np

from training.trainer import Arrays

F, N, S = 10, 6, 4  # tabular features, sequence length, sequence features


def synthetic(n: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    tab = rng.normal(size=(n, F)).astype(np.float32)
    tab[:, 0] = np.abs(tab[:, 0]) * 80.0  # an amount-like column
    seq = rng.normal(size=(n, N, S)).astype(np.float32)
    seq[: n // 4, :3] = 0.0
    logit = -4.0 + 1.8 * tab[:, 1] + 1.2 * seq[:, -1, 0] + 0.01 * tab[:, 0]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    return Arrays(tab, seq, y)
