"""Training loop for :class:`~modeling.networks.FraudNet`: single process or data parallel.

Decisions, and why:

* **Class imbalance (≈0.8% fraud)**: a positive weight in the BCE loss, by default
  ``sqrt(n_neg / n_pos)`` (≈11 at 0.8%). Full balancing (≈120) lets a handful of frauds per batch
  dominate the gradient and overfit; no weighting under-trains the fraud side. Balanced sampling
  would show each fraud ~100 times per epoch for the same effect. The weight inflates predicted
  odds by that factor, so the exported model subtracts ``log(pos_weight)`` from its logit
  (``FraudNet.set_prior_correction``): probabilities stay approximately calibrated. Ranking
  metrics (AUC, AP, CP@100) are unaffected by the shift.
* **Early stopping** on validation Average Precision (the metric that matters at 0.8%), with
  ``patience`` epochs; the best epoch's weights are kept.
* **Data parallel**: ``paddle.distributed.spawn`` (gloo on CPU, NCCL on GPUs) with
  ``paddle.DataParallel``. Every rank starts from the same saved initial state (weights and the
  fitted standardizers), draws the same epoch permutation and takes its own slice of every global
  batch, so the allreduced gradient equals a single process' gradient on the global batch. Rank 0
  evaluates and broadcasts the stop decision; each rank reports a fingerprint of its final
  parameters and the parent checks they agree.
* **AMP** (``paddle.amp.auto_cast``, float16 with a ``GradScaler``) only on GPU; on CPU both are
  disabled. **Gradient accumulation** over ``grad_accum`` micro-batches (``no_sync`` in between).
* **Reproducibility**: ``paddle.seed`` and numpy generators from ``seed``; on CPU with one thread
  per process a run repeats bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modeling.evaluation import average_precision, roc_auc
from modeling.networks import FraudEnsemble, FraudNet, NetConfig, Scorer, fit_standardizers


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 512  # per process; the global batch is batch_size × nprocs
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_accum: int = 1
    patience: int = 3  # epochs without a better validation AP before stopping; 0 = never stop early
    pos_weight: float | None = None  # None: sqrt(n_neg / n_pos)
    seed: int = 7
    nprocs: int = 1
    device: Literal["auto", "cpu", "gpu"] = "auto"
    amp: bool = True  # GPU only
    threads: int = 1  # CPU math threads per process
    eval_batch_size: int = 8192
    progress: bool = True
    dump_dir: str | None = None  # if set, every rank writes its final parameters there (tests)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Arrays:
    """Model inputs and labels of a set of transactions."""

    tab: npt.NDArray[np.float32]
    seq: npt.NDArray[np.float32]
    y: npt.NDArray[np.int8]

    def __post_init__(self) -> None:
        if not len(self.tab) == len(self.seq) == len(self.y):
            raise ValueError(f"tab/seq/y lengths differ: {len(self.tab)}, {len(self.seq)}, {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> Arrays:
        return Arrays(self.tab[idx], self.seq[idx], self.y[idx])


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    seconds: float
    samples_per_s: float
    val_ap: float | None = None
    val_auc: float | None = None
    member: int = 0


@dataclass
class FitResult:
    model: Scorer
    history: list[EpochStats]
    best_epoch: int
    best_val_ap: float | None
    pos_weight: float
    world_size: int
    device: str
    rank_fingerprints: list[str] = field(default_factory=list)
    # an ensemble's: each member's best epoch (``best_epoch`` is the first member's)
    member_best_epochs: list[int] = field(default_factory=list)

    @property
    def epoch_seconds(self) -> list[float]:
        return [h.seconds for h in self.history]

    def summary(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_ap": self.best_val_ap,
            "pos_weight": self.pos_weight,
            "world_size": self.world_size,
            "device": self.device,
            "epochs": [asdict(h) for h in self.history],
        }


def resolve_pos_weight(cfg: TrainConfig, y: npt.NDArray[Any]) -> float:
    if cfg.pos_weight is not None:
        return float(cfg.pos_weight)
    n_pos = int(np.sum(y != 0))
    n_neg = len(y) - n_pos
    return float(math.sqrt(n_neg / n_pos)) if n_pos else 1.0


def training_device(requested: str) -> str:
    from modeling.predictor import gpu_available

    if requested == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if requested == "gpu":
        raise RuntimeError("device 'gpu' requested but no CUDA device is available")
    return "cpu"


def build_model(net_cfg: NetConfig, train: Arrays, seed: int) -> FraudNet:
    """A freshly initialised network (seeded) with standardizers fitted on ``train``."""
    import paddle

    paddle.seed(seed)
    model = FraudNet(net_cfg)
    fit_standardizers(model, train.tab, train.seq, train.y)
    return model


def score(
    model: Scorer, tab: npt.NDArray[np.float32], seq: npt.NDArray[np.float32], batch_size: int = 8192
) -> npt.NDArray[np.float32]:
    """Probabilities [n] from the in-memory model (eval mode, no gradients)."""
    import paddle

    was_training = model.training
    model.eval()
    out = np.empty(len(tab), dtype=np.float32)
    with paddle.no_grad():
        for s in range(0, len(tab), batch_size):
            t = paddle.to_tensor(np.ascontiguousarray(tab[s : s + batch_size], dtype=np.float32))
            q = paddle.to_tensor(np.ascontiguousarray(seq[s : s + batch_size], dtype=np.float32))
            out[s : s + len(t)] = model(t, q).numpy().reshape(-1)
    if was_training:
        model.train()
    return out


def param_fingerprint(model: Scorer) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.numpy()).tobytes())
    return h.hexdigest()


def _logits_layer(model: FraudNet) -> Any:
    from paddle import nn

    class Logits(nn.Layer):
        """``forward`` = the training logits, so DataParallel's hooks see the call."""

        def __init__(self, inner: FraudNet) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, tab: Any, seq: Any) -> Any:
            return self.inner.logits(tab, seq)

    return Logits(model)


def _global_batches(n: int, batch: int, world: int, epoch: int, seed: int) -> Iterator[npt.NDArray[np.int64]]:
    """The epoch's global batches (batch × world indices each), identical on every rank; the
    last one wraps around so every rank gets a full local batch."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)
    g = batch * world
    steps = max(1, math.ceil(n / g))
    idx = np.resize(perm, steps * g)
    for s in range(steps):
        yield idx[s * g : (s + 1) * g]


def _train_loop(
    model: FraudNet,
    train: Arrays,
    val: Arrays | None,
    cfg: TrainConfig,
    pos_weight: float,
    device: str,
    rank: int = 0,
    world: int = 1,
) -> tuple[list[EpochStats], int, float | None, dict[str, Any]]:
    """Train in this process; returns (history, best epoch, best val AP, best state dict)."""
    import paddle
    import paddle.distributed as dist
    from paddle.nn import functional as F
    from tqdm import tqdm

    net: Any = paddle.DataParallel(_logits_layer(model)) if world > 1 else _logits_layer(model)
    opt = paddle.optimizer.AdamW(
        learning_rate=cfg.lr, parameters=model.parameters(), weight_decay=cfg.weight_decay
    )
    amp_on = cfg.amp and device == "gpu"
    scaler = paddle.amp.GradScaler(enable=amp_on, init_loss_scaling=1024.0)
    pw = paddle.to_tensor([pos_weight], dtype="float32")
    history: list[EpochStats] = []
    best_ap: float | None = None
    best_epoch = 0
    best_state: dict[str, Any] = {}
    bad_epochs = 0
    accum = max(1, cfg.grad_accum)
    local = cfg.batch_size

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = 0.0
        n_seen = 0
        batches = list(_global_batches(len(train), local, world, epoch, cfg.seed))
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not (cfg.progress and rank == 0),
            mininterval=0.5,
        )
        for step, gidx in enumerate(bar):
            idx = np.sort(gidx[rank * local : (rank + 1) * local])
            tab = paddle.to_tensor(np.ascontiguousarray(train.tab[idx]))
            seq = paddle.to_tensor(np.ascontiguousarray(train.seq[idx]))
            y = paddle.to_tensor(train.y[idx].astype(np.float32).reshape(-1, 1))
            sync_now = (step + 1) % accum == 0 or step + 1 == len(batches)
            ctx = net.no_sync() if (world > 1 and not sync_now) else contextlib.nullcontext()
            with ctx:
                with paddle.amp.auto_cast(enable=amp_on, level="O1"):
                    logits = net(tab, seq)
                loss = F.binary_cross_entropy_with_logits(logits.astype("float32"), y, pos_weight=pw)
                scaler.scale(loss / accum).backward()
            if sync_now:
                scaler.step(opt)
                scaler.update()
                opt.clear_grad()
            loss_sum += float(loss) * len(idx)
            n_seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
        bar.close()
        if world > 1:
            t = paddle.to_tensor([loss_sum, float(n_seen)], dtype="float64")
            dist.all_reduce(t)
            loss_sum, n_seen = float(t[0]), int(t[1])
        seconds = time.perf_counter() - t0
        stats = EpochStats(epoch, loss_sum / max(n_seen, 1), seconds, n_seen / max(seconds, 1e-9))

        stop = 0.0
        if rank == 0 and val is not None and len(val) and val.y.any():
            s = score(model, val.tab, val.seq, cfg.eval_batch_size)
            stats.val_ap = average_precision(val.y, s)
            stats.val_auc = roc_auc(val.y, s)
            if best_ap is None or stats.val_ap > best_ap:
                best_ap, best_epoch, bad_epochs = stats.val_ap, epoch, 0
                best_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                stop = float(0 < cfg.patience <= bad_epochs)
        if world > 1:
            flag = paddle.to_tensor([stop], dtype="float32")
            dist.broadcast(flag, src=0)
            stop = float(flag[0])
        history.append(stats)
        if rank == 0 and cfg.progress:
            msg = f"epoch {epoch}: loss {stats.train_loss:.4f}, {seconds:.1f}s ({stats.samples_per_s:,.0f}/s)"
            if stats.val_ap is not None:
                msg += f", val AP {stats.val_ap:.4f}, AUC {stats.val_auc:.4f}"
            print(msg, flush=True)
        if stop:
            break
    if not best_state:
        best_epoch = history[-1].epoch
        best_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    return history, best_epoch, best_ap, best_state


# ---------------------------------------------------------------------------------- entry point


def fit(net_cfg: NetConfig, train: Arrays, val: Arrays | None, cfg: TrainConfig) -> FitResult:
    """Train a :class:`FraudNet`; the returned model holds the best epoch's weights and the
    prior correction for ``pos_weight``."""
    import paddle

    if len(train) == 0 or not train.y.any():
        raise ValueError("the training set is empty or has no fraud")
    device = training_device(cfg.device)
    pos_weight = resolve_pos_weight(cfg, train.y)
    model = build_model(net_cfg, train, cfg.seed)
    if cfg.nprocs <= 1:
        paddle.device.set_device(device)
        _set_threads(cfg.threads)
        history, best_epoch, best_ap, best_state = _train_loop(model, train, val, cfg, pos_weight, device)
        fingerprints = [param_fingerprint(model)]
        world = 1
    else:
        history, best_epoch, best_ap, best_state, fingerprints = _fit_distributed(
            model, train, val, cfg, pos_weight, device
        )
        world = cfg.nprocs
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in best_state.items()})
    model.set_prior_correction(pos_weight)
    model.eval()
    return FitResult(model, history, best_epoch, best_ap, pos_weight, world, device, fingerprints)


def fit_ensemble(
    members: Sequence[tuple[NetConfig, TrainConfig]], train: Arrays, val: Arrays | None
) -> FitResult:
    """Train each member (its own network and training settings) and average them in logit
    space (:class:`FraudEnsemble`). All members share the first one's positive weight, so one
    prior correction fits the blend. One member gives a plain :class:`FraudNet` result."""
    if not members:
        raise ValueError("no ensemble members")
    pos_weight = resolve_pos_weight(members[0][1], train.y)
    results = []
    for i, (net, cfg) in enumerate(members, 1):
        if len(members) > 1 and cfg.progress:
            print(
                f"member {i}/{len(members)}: seq_encoder={net.seq_encoder}, "
                f"numeric_encoding={net.numeric_encoding}, tab_hidden={list(net.tab_hidden)}",
                flush=True,
            )
        results.append(fit(net, train, val, replace(cfg, pos_weight=pos_weight)))
    if len(results) == 1:
        return results[0]
    nets = [r.model for r in results]
    if not all(isinstance(n, FraudNet) for n in nets):
        raise TypeError("ensemble members must be single networks")
    ensemble = FraudEnsemble([n for n in nets if isinstance(n, FraudNet)])
    ensemble.set_prior_correction(pos_weight)
    ensemble.eval()
    history = [replace(h, member=i) for i, r in enumerate(results) for h in r.history]
    best_ap = None
    if val is not None and len(val) and val.y.any():
        best_ap = average_precision(val.y, score(ensemble, val.tab, val.seq, members[0][1].eval_batch_size))
    first = results[0]
    fingerprints = [f for r in results for f in r.rank_fingerprints]
    return FitResult(
        ensemble,
        history,
        first.best_epoch,
        best_ap,
        pos_weight,
        first.world_size,
        first.device,
        fingerprints,
        [r.best_epoch for r in results],
    )


def _set_threads(n: int) -> None:
    import paddle

    with contextlib.suppress(Exception):
        paddle.base.core.set_num_threads(n)


def _fit_distributed(
    model: FraudNet, train: Arrays, val: Arrays | None, cfg: TrainConfig, pos_weight: float, device: str
) -> tuple[list[EpochStats], int, float | None, dict[str, Any], list[str]]:
    import paddle
    import paddle.distributed as dist

    with tempfile.TemporaryDirectory(prefix="riskstream-dp-") as tmp:
        d = Path(tmp)
        np.save(d / "tab.npy", train.tab)
        np.save(d / "seq.npy", train.seq)
        np.save(d / "y.npy", train.y)
        if val is not None:
            np.save(d / "val_tab.npy", val.tab)
            np.save(d / "val_seq.npy", val.seq)
            np.save(d / "val_y.npy", val.y)
        paddle.save(model.state_dict(), str(d / "init.pdparams"))
        env = {"OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with warnings.catch_warnings():
                # gloo on CPU is chosen on purpose; Paddle warns about it ("CPUONLY mode").
                warnings.filterwarnings("ignore", message=".*CPUONLY mode", category=UserWarning)
                dist.spawn(
                    _worker,
                    args=(model.cfg.to_dict(), cfg.to_dict(), pos_weight, device, str(d)),
                    nprocs=cfg.nprocs,
                    backend="gloo" if device == "cpu" else "nccl",  # type: ignore[call-arg]  # stubs lag
                )
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        result = json.loads((d / "result.json").read_text())
        state = dict(np.load(d / "best_state.npz"))
        fingerprints = [
            json.loads((d / f"rank{r}.json").read_text())["fingerprint"] for r in range(cfg.nprocs)
        ]
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"data-parallel ranks ended with different parameters: {fingerprints}")
    history = [EpochStats(**h) for h in result["history"]]
    return history, int(result["best_epoch"]), result["best_ap"], state, fingerprints


def _save_state(path: Path, state: dict[str, Any]) -> None:
    np.savez(path, **state)


def _worker(
    net_cfg: dict[str, Any], cfg_dict: dict[str, Any], pos_weight: float, device: str, data_dir: str
) -> None:
    """One data-parallel rank (the target of ``paddle.distributed.spawn``)."""
    import paddle
    import paddle.distributed as dist

    d = Path(data_dir)
    cfg = TrainConfig(**cfg_dict)
    _set_threads(cfg.threads)
    if device == "cpu":
        paddle.device.set_device("cpu")
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    paddle.seed(cfg.seed + rank)
    model = FraudNet(NetConfig.from_dict(net_cfg))
    model.set_state_dict(paddle.load(str(d / "init.pdparams")))
    train = Arrays(
        np.load(d / "tab.npy", mmap_mode="r"), np.load(d / "seq.npy", mmap_mode="r"), np.load(d / "y.npy")
    )
    val = None
    if (d / "val_y.npy").exists():
        val = Arrays(np.load(d / "val_tab.npy"), np.load(d / "val_seq.npy"), np.load(d / "val_y.npy"))
    history, best_epoch, best_ap, best_state = _train_loop(
        model, train, val, cfg, pos_weight, device, rank, world
    )
    (d / f"rank{rank}.json").write_text(json.dumps({"fingerprint": param_fingerprint(model)}))
    if cfg.dump_dir:
        _save_state(
            Path(cfg.dump_dir) / f"rank{rank}.npz", {k: v.numpy() for k, v in model.state_dict().items()}
        )
    if rank == 0:
        _save_state(d / "best_state.npz", best_state)
        (d / "result.json").write_text(
            json.dumps(
                {"history": [asdict(h) for h in history], "best_epoch": best_epoch, "best_ap": best_ap}
            )
        )
