"""The ``riskstream`` command line: where ``--config`` may go, and what it says when Kafka cannot
be reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["worker"], None),
        (["--config", "a.toml", "worker"], "a.toml"),
        (["worker", "--config", "b.toml"], "b.toml"),
        (["--config", "a.toml", "worker", "--config", "b.toml"], "b.toml"),  # the nearer one wins
        (["replay", "f.parquet", "--config", "c.toml"], "c.toml"),
    ],
)
def test_config_before_or_after_the_command(argv: list[str], expected: str | None) -> None:
    assert build_parser().parse_args(argv).config == expected


@pytest.mark.parametrize("before", [True, False])
def test_config_file_is_read_in_either_position(
    before: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "from-the-file"
    cfg = tmp_path / "riskstream.toml"
    cfg.write_text(f'registry_dir = "{registry}"\n')
    monkeypatch.delenv("RISKSTREAM_REGISTRY_DIR", raising=False)
    monkeypatch.setenv("RISKSTREAM_CONFIG", "")  # main() sets it; restored after the test
    argv = ["--config", str(cfg), "models", "list"] if before else ["models", "--config", str(cfg), "list"]
    assert main(argv) == 0
    assert f"no models published in {registry}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["group", "members"], ["group", "remove", "w1"], ["dead-letters", "summary"]]
)
def test_an_unreachable_cluster_is_a_message_not_a_traceback(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RISKSTREAM_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"riskstream {argv[0]}: Kafka: ") and "Unable to bootstrap" in err
    assert "Traceback" not in err
