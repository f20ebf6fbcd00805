"""The one settings object. Environment variables (prefix ``RISKSTREAM_``) are read here and
nowhere else; an optional TOML file (``RISKSTREAM_CONFIG`` or ``--config``) fills in what the
environment does not set. Everything downstream receives a frozen :class:`Settings`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import TomlConfigSettingsSource

from modeling.features.config import FeatureConfig

ENV_PREFIX = "RISKSTREAM_"


def default_home() -> Path:
    """Where riskstream keeps its local state (registry, broker cache) unless told otherwise."""
    return Path(os.environ.get(f"{ENV_PREFIX}HOME", Path.home() / ".riskstream"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # --- Kafka -------------------------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    # Security of every Kafka client (worker, replay, warmup, demo, topic admin):
    # streams/security.py. SSL verifies the broker against ssl_cafile (default: the system's CAs);
    # ssl_certfile/ssl_keyfile add a client certificate (mutual TLS). SASL needs the username
    # and password (RISKSTREAM_SASL_PASSWORD: it is never logged or printed).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # GSSAPI (Kerberos): the client's identity is MIT Kerberos's own (a keytab in
    # KRB5_CLIENT_KTNAME, or a ticket cache from kinit; KRB5_CONFIG names the realm's krb5.conf),
    # never a riskstream setting. The brokers' principal is service/host@REALM: the service name
    # below, and the host each broker advertises unless a domain name is set here.
    sasl_kerberos_service_name: str = "kafka"
    sasl_kerberos_domain_name: str | None = None
    # OAUTHBEARER: tokens from an OAuth 2.0 token endpoint, client-credentials grant
    # (streams/oauth.py); the secret is never logged or printed.
    sasl_oauth_token_url: str | None = None
    sasl_oauth_client_id: str | None = None
    sasl_oauth_client_secret: SecretStr | None = None
    sasl_oauth_scope: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    topic_transactions: str = "transactions"
    topic_clickstream: str = "clickstream"
    topic_labels: str = "labels"
    topic_risk_events: str = "risk-events"
    topic_dead_letter: str = "riskstream-dead-letter"
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    app_id: str = "riskstream"
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    # Every input message's Kafka key must be its user id (UTF-8 bytes), so that one user's
    # transactions, clicks and labels meet in one partition, whose worker alone writes the
    # user's state. A message keyed otherwise, or not keyed, is dead-lettered (field "<key>"):
    # scored from another partition it would build a second state for the user there, and the
    # two would overwrite each other in the changelog. False: trust the producers to key each
    # user's events alike some other way (a JSON-quoted id, say).
    require_user_keys: bool = True
    # The largest state snapshot the changelog takes: the changelog topics' max.message.bytes
    # (set when they are created) and the producers' request limit. A key's state is bounded
    # (FeatureConfig's max_user_* and max_terminal_labels); with the wire format's longest ids a
    # user can still pass 2 MB, over Kafka's 1 MB default, and a snapshot the changelog
    # refuses stops the worker (DEVELOPERS.md, "Bounds on one key's state").
    state_max_record_bytes: int = Field(default=8 * 1024 * 1024, ge=1 << 20)

    # --- local broker ------------------------------------------------------------------------
    kafka_home: Path = Field(default_factory=lambda: default_home() / "kafka")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093

    # --- worker ------------------------------------------------------------------------------
    worker_data_dir: Path = Field(default_factory=lambda: default_home() / "worker")
    web_port: int = 6066
    metrics_port: int = 9464
    # A batch is taken at once when this many messages wait (catching up), otherwise
    # pipeline_max_wait_ms after its first: live traffic makes batches far below the maximum.
    # 1,536 messages hold about 470 transactions, one model call of up to model_max_batch rows
    # (about 5 ms alone on one core with oneDNN, 12 ms in a draining worker): draining a backlog,
    # 15-46 % faster than 512 / 256 beside it (A-B-A-B-A, benchmarks/README.md, session 25).
    pipeline_max_batch: int = Field(default=1536, ge=1)
    pipeline_max_wait_ms: float = Field(default=20.0, gt=0)
    # A batch also closes once its oldest message is this old since its Kafka timestamp (the
    # producer's clock; 0: off), so a message that took long to arrive does not also wait
    # pipeline_max_wait_ms for its batch to fill: p50 30-53 against 45-122 ms fed a quarter to
    # half the drain rate (benchmarks/README.md, session 27). Trusts the producers' clocks: set
    # 0 for topics stamped with old event times.
    pipeline_max_age_ms: float = Field(default=30.0, ge=0)
    model_max_batch: int = Field(default=512, ge=1)
    registry_poll_s: float = Field(default=5.0, gt=0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    # User states are written to the state table (and its changelog) once per flush, not per
    # micro-batch; a batch is acked after the flush holding its state (streams/state_flush.py).
    # 0 writes them after every batch.
    state_flush_interval_ms: float = Field(default=1000.0, ge=0)
    state_flush_max_users: int = Field(default=50_000, ge=1)
    # Decoded states the scorer keeps between batches, bounded by their estimated memory (a
    # typical user ~13 KB, a terminal at its label bound ~4 MB; streams/pipeline.py, StateCache):
    # past the bound the least recently used go and are decoded again from the table when next
    # needed (~15 µs a typical user). The tables' serialized states are not counted here.
    user_state_cache_mb: int = Field(default=1024, ge=0)
    terminal_state_cache_mb: int = Field(default=1024, ge=0)
    # The terminal states the worker owning the terminal-labels partition wrote, decoded
    # (streams/terminal_loop.py, WrittenTerminals): past this bound the least recently written
    # ones that the table has read back go, and are decoded again when next labelled.
    terminal_loop_cache_mb: int = Field(default=256, ge=0)
    # Where the user-state table lives (streams/user_store.py). "memory": Faust's memory store;
    # memory grows with the users held (~1.5 KB each) and a (re)started worker rebuilds them all
    # from the changelog (faust-streaming #284). "disk": RocksDB files (rocksdict) under
    # worker_data_dir, one per partition; a worker restarted on the same directory reads only the
    # changelog written since, and holds in memory only RocksDB's caches: a block cache of
    # user_store_block_cache_mb and up to 2 x 16 MiB of write buffers per partition.
    user_store: Literal["memory", "disk"] = "memory"
    user_store_block_cache_mb: int = Field(default=64, ge=1)
    # Where the global terminal table lives (streams/terminal_store.py): every worker holds every
    # terminal. "memory": Faust's memory store, rebuilt from the table's whole changelog at every
    # start. "disk": one RocksDB database under worker_data_dir, written only from the changelog
    # read back; a worker restarted on the same directory reads only the changelog written
    # since, and holds in memory only RocksDB's caches: a block cache of
    # terminal_store_block_cache_mb and up to 2 x 16 MiB of write buffers.
    terminal_store: Literal["memory", "disk"] = "memory"
    terminal_store_block_cache_mb: int = Field(default=64, ge=1)
    # Dormant users' states are deleted from the state table (and, by tombstone, its changelog)
    # every interval, once their latest event is a retention (a feature setting, below) behind
    # the inputs' event time (streams/retention.py). 0: never.
    state_sweep_interval_s: float = Field(default=600.0, ge=0)
    # Garbage collection (streams/gc_pauses.py): no automatic collection (thresholds 0 / 0); a
    # full collection at revocations, at shutdown and every gc_sweep_interval_s (0: only then)
    # instead. gc_thresholds > 0 brings back young collections (RISKSTREAM_GC_THRESHOLDS, JSON:
    # '[20000, 20]' until session 23, '[700, 10]' CPython's), gc_auto_full full ones too.
    gc_auto_full: bool = False
    gc_thresholds: tuple[int, int] = (0, 0)  # the young generations' (gc.set_threshold; 0: off)
    gc_sweep_interval_s: float = Field(default=3600.0, ge=0)
    # Fetch requests: the broker answers once this many bytes are ready or the wait is over.
    # With Faust's (1 byte, 1.5 s) a steady trickle makes every fetch return a message or two,
    # and the worker fell behind at a quarter of its backlog rate; the wait is part of the
    # latency budget, and an idle worker sends a fetch per wait (benchmarks/README.md).
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)
    # With no record fetched for a second, the consumer long-polls instead (1 byte, this wait):
    # an idle worker sent 100 fetch requests a second (streams/fetch_pacer.py). 0: never. Off
    # by default in sessions 21-28 after tests/integration/test_big_state.py's restarted worker
    # failed to score its transaction with it; the cause was a seek race that hit without the
    # long poll too (DEVELOPERS.md, Faust behaviour 7), fixed in session 28. On again since
    # session 29, after the runs DEVELOPERS.md lists under "Batched intake".
    fetch_idle_wait_ms: int = Field(default=500, ge=0)
    # Faust runs its Kafka consumer in a thread of its own; here it runs on the worker's event
    # loop, so fetches do not wait for the GIL the scoring holds (streams/in_loop.py). Off: Faust's
    # own consumer thread.
    consumer_in_loop: bool = True
    # The input topics are taken in Kafka-timestamp order across partition p of each (streams/
    # input_buffer.py): a partition with messages still to fetch and none buffered holds the
    # others of its group back for at most this long. Draining a backlog, the fetcher otherwise
    # hands out one topic at a time and transactions were scored without the labels and clicks
    # that came before them. The bound counts only the time the buffer waits, not the time spent
    # scoring: the fetcher shares the event loop and cannot fill a partition meanwhile.
    # 0: no alignment (messages are taken in the order they arrived).
    input_align_max_idle_ms: float = Field(default=100.0, ge=0)
    # With alignment on, a transaction also waits for the labels of every partition of the worker
    # up to its timestamp minus the label allowance (terminal risk mixes all users' labels;
    # streams/input_buffer.py, LabelRule). Off: labels of its own partition group only.
    input_align_labels: bool = True
    # The scorer applies the labels it forwarded to terminal state on top of the global terminal
    # table until the table holds them (streams/terminal_overlay.py). Live the table holds them
    # long before they count; catching up on a backlog, without it transactions were scored
    # without the labels an hour or more before them. Off: the table alone.
    terminal_overlay: bool = True
    # Every worker reads the terminal-labels topic itself (streams/terminal_feed.py): the labels
    # other workers (or this worker's previous process) forwarded go on top of the terminal table
    # as its own do, and a transaction waits, bounded, for the labels of the partitions other
    # workers own up to its timestamp minus the allowance. Off: other workers' labels reach it
    # through the table only (nothing orders them with its transactions while catching up).
    terminal_feed: bool = True
    # How long another worker's label floor may hold a transaction back after it last changed
    # (that worker's next progress record normally comes with its next batch).
    terminal_feed_max_wait_ms: float = Field(default=1000.0, ge=0)
    # Every worker reads the global terminal table's changelog back (one record per label of any
    # worker), and reads it whole when it starts. The worker applies each fetch's records itself,
    # in one batch, with Faust's own store call and offset books (streams/replica.py), both
    # while Faust's recovery reads the changelog and after. Off: every record takes Faust's
    # per-record recovery path.
    terminal_replica_direct: bool = True
    # A started worker rebuilds its user states from the changelog (the memory store keeps
    # nothing on disk). While Faust's recovery reads a partition, the worker applies each fetch's
    # records in one batch, keeping Faust's offsets and ending the recovery as Faust does
    # (streams/replica.py). Off: every record takes Faust's per-record recovery path.
    user_recovery_direct: bool = True
    # Standby copies of other workers' user-state partitions (Faust's table_standby_replicas).
    # With the memory store, the only one, a standby copy is never used: Faust drops a standby
    # partition's keys at the end of every recovery, and a partition that becomes active replays
    # its changelog from the start whatever it held (DEVELOPERS.md, "No standby copies"). Each
    # copy costs a worker memory and a read of every changelog record of the partitions it
    # stands by for. 0: none (Faust's default is 1). With user_store "disk" a copy is used: the
    # worker that takes a failed worker's partitions over starts from its own copy's files and
    # reads only the changelog written after them (tests/integration/test_disk_store.py).
    table_standby_replicas: int = Field(default=0, ge=0)
    # A worker that stops heartbeating (killed, its machine gone) keeps its partitions, and their
    # users go unscored, until the group coordinator gives up on it after this long; a worker
    # restarted after a crash waits for its predecessor's session to end too, unless it is a
    # static member (group_instance_id, below). Faust's default is
    # 60 s (benchmarks/bench_failover.py measures both). Heartbeats go every third of it, at
    # most every 3 s. Brokers refuse sessions under their group.min.session.timeout.ms (6 s by
    # default). A worker whose event loop stalls for longer is taken out of the group: its
    # partitions move to the others, and it rejoins when it runs again.
    group_session_timeout_s: float = Field(default=10.0, ge=1.0, le=1800.0)
    # Static group membership (Kafka's group.instance.id, KIP-345), off by default. A worker
    # started again under the same id within the session timeout (a crash and its restart
    # policy, a rolling deploy) gets its partitions back at once, and the other workers keep
    # theirs: no rebalance stops them. Without it, the restarted worker's join stops every
    # worker until its predecessor's session ends. The cost: a worker stopped for good does not
    # leave the group, so its partitions wait for the session timeout before they move. Each
    # worker needs its own id that survives its restarts (a StatefulSet pod's name, say);
    # ``{hostname}`` in it is replaced by the host's name. Two running workers on one id take the
    # partitions from each other until the older stops (streams/group.py, MemberResets). Empty: off.
    group_instance_id: str | None = Field(default=None, max_length=249, pattern=r"^[A-Za-z0-9._{}\-]*$")
    # Which input records the worker reads. read_committed (the default): records of Kafka
    # transactions that their producer committed, and every record written without one; a
    # partition's records after a transaction still open wait until it ends. read_uncommitted
    # (Faust's unless the app runs exactly-once): everything at once, so the records of a
    # transaction the producer aborts are scored and folded into the users' windows too.
    input_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"

    # --- models ------------------------------------------------------------------------------
    registry_dir: Path = Field(default_factory=lambda: default_home() / "registry")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    cpu_threads: int = Field(default=1, ge=1)
    # oneDNN builds its kernels per input shape, so with the worker's varying micro-batch sizes it
    # cost about 3x per row; with it on, every model call is padded to one of a few row counts
    # (PredictorOptions.pad_batches), and behaviour-model rows cost 9.3-14.2 us against 17-20
    # with Paddle's own kernels (calls of 1-512 rows, benchmarks/README.md).
    use_onednn: bool = True
    # Padded row counts: powers of two below this, then its multiples (0: powers of two only).
    model_pad_step: int = Field(default=32, ge=0)
    # The behaviour models run in a child process each (modeling/inference_process.py): Paddle
    # holds the GIL for a whole model call, which otherwise stalls the event loop (and Faust's
    # consumer thread, with consumer_in_loop off).
    inference_process: bool = False
    use_tensorrt: bool = False
    use_fp16: bool = False
    text_weight: float = Field(default=0.5, ge=0.0, le=1.0)

    # --- features ----------------------------------------------------------------------------
    label_delay_days: float = Field(default=7.0, ge=0)
    allowed_lateness_s: float = Field(default=3600.0, ge=0)
    # An input event whose time (a label's label_time) is further ahead of the worker's clock
    # than this is dead-lettered (0: none is). Folded in, a transaction a day ahead would make
    # its user's real transactions of that day late by the state's clock (not folded, their
    # features frozen); after one an hour ahead, events stamped at or after the clock at their
    # arrival are still on time (allowed_lateness_s). Kafka 3.6+ brokers refuse records
    # stamped over an hour ahead by default (log.message.timestamp.after.max.ms) for the same
    # reason; this checks the payload's time, which the broker does not read.
    max_event_ahead_s: float = Field(default=3600.0, ge=0)
    # A user with no event for this long starts over (part of the feature set: models trained
    # with another value are refused).
    user_retention_days: float = Field(default=365.0, ge=30)
    # Whether the clickstream feeds the features (false: the click features are zero, for
    # deployments without a clickstream; models trained with `riskstream train --no-clicks`).
    use_clicks: bool = True

    @field_validator("group_instance_id", mode="after")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if not value:
            return None
        return value.replace("{hostname}", socket.gethostname())

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        oauth = self.sasl_mechanism == "OAUTHBEARER"
        if self.security_protocol.startswith("SASL_") and oauth:
            if not (
                self.sasl_oauth_token_url and self.sasl_oauth_client_id and self.sasl_oauth_client_secret
            ):
                raise ValueError(
                    "sasl_mechanism OAUTHBEARER needs sasl_oauth_token_url, sasl_oauth_client_id and "
                    "sasl_oauth_client_secret (RISKSTREAM_SASL_OAUTH_TOKEN_URL, …_CLIENT_ID, …_CLIENT_SECRET)"
                )
        elif (
            self.security_protocol.startswith("SASL_")
            and self.sasl_mechanism != "GSSAPI"
            and not (self.sasl_username and self.sasl_password)
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username and sasl_password "
                "(RISKSTREAM_SASL_USERNAME, RISKSTREAM_SASL_PASSWORD)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("a client certificate needs both ssl_certfile and ssl_keyfile")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        cfg = os.environ.get(f"{ENV_PREFIX}CONFIG")
        if cfg:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(cfg)))
        return tuple(sources)


def feature_config(settings: Settings) -> FeatureConfig:
    """The feature definition these settings select: what the worker computes, what the trainer
    and the backtest must compute too (the feature set a model records and the scorer checks)."""
    return FeatureConfig(
        label_delay_ms=int(settings.label_delay_days * 86_400_000),
        allowed_lateness_ms=int(settings.allowed_lateness_s * 1000),
        user_retention_ms=int(settings.user_retention_days * 86_400_000),
        use_clicks=settings.use_clicks,
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the frozen settings: explicit overrides, then environment, then the TOML file."""
    if config_file is not None:
        os.environ[f"{ENV_PREFIX}CONFIG"] = str(config_file)
    return Settings(**overrides)
