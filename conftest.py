"""Session-wide fixtures. ``kafka_broker`` runs one real Apache Kafka broker (KRaft) for the
whole test session on 127.0.0.1:19092 (controller 19093) — ports a developer's own broker on
9092 never collides with — with its data and logs under pytest's tmp dir. The broker's jars
are shared with ``riskstream kafka`` (``<kafka_home>/lib``) so a session never re-runs Maven
once they are fetched. Missing Java or Maven fails the tests that need the broker; nothing is
skipped.

This file sits in the repository root on purpose, not in tests/: with pytest's default
``prepend`` import mode a ``tests/conftest.py`` puts ``tests/`` on sys.path, and since the test
folders mirror the packages (tests/modeling, tests/streams, tests/training), ``tests/modeling/…``
then shadows parts of the real ``modeling`` package as namespace packages.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import settings as hypothesis_settings

from modeling.registry import ModelRegistry
from modeling.settings import load_settings
from streams.broker.local import BrokerError, LocalKafka, free_port_pair, port_open

TEST_PORT = 19092
TEST_CONTROLLER_PORT = 19093

_broker_info: list[str] = []


def _shared_lib_dir() -> Path:
    return load_settings().kafka_home / "lib"


# Property tests check values, never time: no per-example deadline (Hypothesis's default is
# 200 ms). In a full run on a shared machine, one example of
# test_the_fast_decoder_and_the_checked_parser_agree once took longer (session 27) and failed
# the run, although 30,000 examples run alone found no disagreement.
hypothesis_settings.register_profile("riskstream", deadline=None)
hypothesis_settings.load_profile("riskstream")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM/SIGHUP (a CI job cancelled, a terminal closed) become KeyboardInterrupt so that
    # session fixtures — the broker among them — are still torn down.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_interrupt)


def pytest_report_header(config: pytest.Config) -> str:
    probe = LocalKafka(Path("/nonexistent"), lib_dir=_shared_lib_dir())
    try:
        return f"kafka: Apache Kafka {probe.version()} (jars in {probe.lib_dir})"
    except BrokerError:
        return f"kafka: jars not fetched yet in {probe.lib_dir} (the kafka_broker fixture fetches them)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"kafka_broker", "local_kafka"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _broker_info:
        terminalreporter.write_sep("-", "local Kafka broker")
        for line in _broker_info:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """The session's running :class:`LocalKafka` (use ``kafka_broker`` for just the bootstrap)."""
    # The usual ports are this session's only with the lock (released when the file closes): two
    # sessions that both found them free a moment apart once started a broker each on them, and
    # the first to finish stopped the broker the other one was using.
    lock_path = Path(tempfile.gettempdir()) / f"riskstream-test-broker-{TEST_PORT}.lock"
    with lock_path.open("w") as claim:
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
            ours = True
        except BlockingIOError:
            ours = False
        port, controller_port = TEST_PORT, TEST_CONTROLLER_PORT
        if not ours or port_open("127.0.0.1", port) or port_open("127.0.0.1", controller_port):
            # another test session (or a leftover broker) holds the usual ports: don't fight
            port, controller_port = free_port_pair()
        yield from _run_broker(tmp_path_factory, port, controller_port)


def _run_broker(
    tmp_path_factory: pytest.TempPathFactory, port: int, controller_port: int
) -> Iterator[LocalKafka]:
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        lib_dir=_shared_lib_dir(),
    )
    needed = ["java"] if broker.fetched() else ["java", "mvn"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the Kafka tests need {' and '.join(needed)} on PATH; missing: {', '.join(missing)} "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven)",
            pytrace=False,
        )
    t0 = time.monotonic()
    try:
        st = broker.start(timeout=180)
    except BrokerError as exc:
        pytest.fail(f"the local Kafka broker did not start: {exc}", pytrace=False)
    line = (
        f"Apache Kafka {st.version} (KRaft) at {broker.bootstrap}, pid {st.pid}, "
        f"ready in {time.monotonic() - t0:.1f} s; home {broker.home}"
    )
    _broker_info.append(line)
    print(f"\nkafka_broker: {line}")
    try:
        yield broker
    finally:
        stopped = broker.stop()
        _broker_info.append(f"broker {'stopped' if stopped else 'was no longer running'} at session end")


@pytest.fixture(scope="session")
def kafka_broker(local_kafka: LocalKafka) -> str:
    """Bootstrap servers (``host:port``) of the session's local Kafka broker."""
    return local_kafka.bootstrap


PublishModel = Callable[[Path, int], tuple[ModelRegistry, str]]


@pytest.fixture(scope="session")
def publish_small_model() -> PublishModel:
    """``publish(root, seed)``: a small behaviour model (random weights, seeded) over the feature
    engine's default inputs, exported to ``root/stage<seed>`` and published to the registry in
    ``root/registry``; returns that registry and the version."""

    def publish(root: Path, seed: int) -> tuple[ModelRegistry, str]:
        import numpy as np

        from modeling.features import FeatureConfig
        from modeling.networks import FraudNet, NetConfig, export_fraudnet, fit_standardizers, paddle

        config = FeatureConfig()
        paddle.seed(seed)
        cfg = NetConfig(config.n_features, config.seq_len, config.seq_dim, tab_hidden=(16,), seq_channels=4)
        model = FraudNet(cfg)
        rng = np.random.default_rng(seed)
        fit_standardizers(
            model,
            rng.normal(size=(64, config.n_features)).astype(np.float32),
            rng.normal(size=(64, config.seq_len, config.seq_dim)).astype(np.float32),
        )
        model.eval()
        info = export_fraudnet(model, root / f"stage{seed}")
        registry = ModelRegistry(root / "registry")
        manifest = {
            "training_data": {},
            "hyperparameters": {},
            "metrics": {},
            "feature_set": config.feature_set,
            "model": info.to_dict(),
            "thresholds": {"review": 0.3, "decline": 0.8},
        }
        return registry, registry.publish("behaviour", root / f"stage{seed}", manifest)

    return publish
