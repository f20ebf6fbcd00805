"""Paddle Inference predictor over a real exported FraudNet published to a real registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modeling.errors import FeatureSetMismatch, ModelLoadError, PredictorError
from modeling.networks import FraudNet, NetConfig, export_fraudnet, fit_standardizers, paddle
from modeling.predictor import Predictor, PredictorOptions, bucket_sizes, find_program, resolve_device
from modeling.registry import ModelRegistry
from modeling.settings import Settings

F, N, S = 9, 6, 4
FS = "fs-test-1"


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tab = (rng.normal(size=(n, F)) * [1, 10, 100, 1, 1, 1, 1, 1, 1]).astype(np.float32)
    seq = rng.normal(size=(n, N, S)).astype(np.float32)
    seq[: n // 3, :2] = 0.0  # padding steps
    return tab, seq


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, str, FraudNet]:
    paddle.seed(3)
    cfg = NetConfig(F, N, S, tab_hidden=(16, 8), seq_channels=8, head_hidden=8)
    model = FraudNet(cfg)
    tab, seq = rows(500, 0)
    fit_standardizers(model, tab, seq)
    model.set_prior_correction(4.0)
    model.eval()
    root = tmp_path_factory.mktemp("pred")
    info = export_fraudnet(model, root / "stage")
    reg = ModelRegistry(root / "registry")
    version = reg.publish(
        "behaviour",
        root / "stage",
        {
            "feature_set": FS,
            "model": info.to_dict(),
            "training_data": {},
            "hyperparameters": {"net": cfg.to_dict()},
            "metrics": {},
            "thresholds": {"review": 0.3, "decline": 0.8},
        },
    )
    return reg, version, model


def opts(**kw: object) -> PredictorOptions:
    base: dict[str, object] = {"device": "cpu", "model_max_batch": 64, "use_onednn": False}
    base.update(kw)
    return PredictorOptions(**base)  # type: ignore[arg-type]


def test_predictions_match_the_dygraph_model(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    reg, version, model = exported
    p = Predictor.load(reg, "behaviour", opts(), expected_feature_set=FS)
    assert p.version == version and p.feature_set == FS and p.input_names == ("tab", "seq")
    assert p.thresholds == {"review": 0.3, "decline": 0.8}
    tab, seq = rows(200, 1)
    got = p.predict({"tab": tab, "seq": seq})
    with paddle.no_grad():
        want = model(paddle.to_tensor(tab), paddle.to_tensor(seq)).numpy().ravel()
    assert got.shape == (200,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all((got > 0) & (got < 1))


@pytest.mark.parametrize(("onednn", "pad"), [(False, False), (True, False), (True, True)])
def test_kernels_agree_with_the_dygraph_model_on_bin_edges(
    exported: tuple[ModelRegistry, str, FraudNet], onednn: bool, pad: bool
) -> None:
    """The rows the encoding was fitted on hold every feature's minimum, a bin edge: the step
    indicators there once depended on the GEMM's rounding, and oneDNN scores moved by 0.07."""
    reg, version, model = exported
    p = Predictor.load(reg, "behaviour", opts(use_onednn=onednn, pad_batches=pad), version=version)
    tab, seq = rows(500, 0)  # the fit rows (see the fixture)
    got = p.predict({"tab": tab, "seq": seq})  # 7 calls of 64 rows and one of 52 (padded: 64)
    with paddle.no_grad():
        want = model(paddle.to_tensor(tab), paddle.to_tensor(seq)).numpy().ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_exported_before_the_onednn_fix_runs_without_onednn(
    exported: tuple[ModelRegistry, str, FraudNet], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest without ``onednn_safe`` (exported with the ceil()-based bin-edge indicators,
    whose scores oneDNN moved) is served with Paddle's own kernels, and the log says why."""
    reg, version, model = exported
    info = export_fraudnet(model, tmp_path / "stage")
    reserved = ("version", "kind", "created", "files", "libraries")
    manifest = {k: v for k, v in reg.load(version).manifest.items() if k not in reserved}
    manifest["model"] = {k: v for k, v in info.to_dict().items() if k != "onednn_safe"}
    own = ModelRegistry(tmp_path / "registry")
    older = own.publish("behaviour", tmp_path / "stage", manifest)
    with caplog.at_level("WARNING", logger="riskstream.models"):
        p = Predictor.load(own, "behaviour", opts(use_onednn=True, pad_batches=True), version=older)
    assert not p.options.use_onednn and not p.options.pad_batches
    assert f"model {older} was exported before oneDNN" in caplog.text
    tab, seq = rows(64, 0)
    with paddle.no_grad():
        want = model(paddle.to_tensor(tab), paddle.to_tensor(seq)).numpy().ravel()
    np.testing.assert_allclose(p.predict({"tab": tab, "seq": seq}), want, rtol=1e-5, atol=1e-6)
    assert Predictor.load(reg, "behaviour", opts(use_onednn=True), version=version).options.use_onednn


def test_bucket_sizes() -> None:
    assert bucket_sizes(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert bucket_sizes(50) == (1, 2, 4, 8, 16, 32, 50)
    assert bucket_sizes(1) == (1,)
    # powers of two below the step, then its multiples
    assert bucket_sizes(256, 32) == (1, 2, 4, 8, 16, *range(32, 257, 32))
    assert bucket_sizes(100, 32) == (1, 2, 4, 8, 16, 32, 64, 96, 100)
    assert bucket_sizes(20, 32) == (1, 2, 4, 8, 16, 20)
    assert bucket_sizes(1, 32) == (1,)
    assert bucket_sizes(256, 48) == (1, 2, 4, 8, 16, 32, 48, 96, 144, 192, 240, 256)
    with pytest.raises(ValueError, match="step"):
        bucket_sizes(256, -1)
    assert PredictorOptions.from_settings(Settings()).pad_step == 32
    assert PredictorOptions.from_settings(Settings(model_pad_step=0)).pad_step == 0
    assert PredictorOptions.from_settings(Settings(use_onednn=True)).pad_batches
    assert not PredictorOptions.from_settings(Settings(use_onednn=False)).pad_batches


@pytest.mark.parametrize(("onednn", "pad"), [(False, False), (True, False), (True, True), (False, True)])
def test_batch_invariance(exported: tuple[ModelRegistry, str, FraudNet], onednn: bool, pad: bool) -> None:
    """An event's score does not depend on which batch it shares or where in it it sits."""
    reg, version, _ = exported
    options = opts(use_onednn=onednn, model_max_batch=50, pad_batches=pad)
    p = Predictor.load(reg, "behaviour", options, version=version)
    tab, seq = rows(173, 2)
    together = p.predict({"tab": tab, "seq": seq})  # 4 chunks of ≤ 50
    alone = np.array([p.predict({"tab": tab[i : i + 1], "seq": seq[i : i + 1]})[0] for i in range(len(tab))])
    perm = np.random.default_rng(0).permutation(len(tab))
    shuffled = np.empty_like(together)
    shuffled[perm] = p.predict({"tab": tab[perm], "seq": seq[perm]})
    other_tab, other_seq = rows(37, 9)
    mixed = p.predict(
        {"tab": np.concatenate([other_tab, tab[:13]]), "seq": np.concatenate([other_seq, seq[:13]])}
    )
    np.testing.assert_allclose(alone, together, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(shuffled, together, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mixed[37:], together[:13], rtol=1e-6, atol=1e-7)


def test_clone_per_thread_gives_the_same_scores(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    reg, _, _ = exported
    p = Predictor.load(reg, "behaviour", opts())
    tab, seq = rows(120, 3)
    want = p.predict({"tab": tab, "seq": seq})
    results: dict[int, np.ndarray] = {}

    def work(i: int, pred: Predictor) -> None:
        for _ in range(5):
            results[i] = pred.predict({"tab": tab, "seq": seq})

    threads = [threading.Thread(target=work, args=(i, p.clone())) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        np.testing.assert_array_equal(results[i], want)


def test_input_checks(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    reg, _, _ = exported
    p = Predictor.load(reg, "behaviour", opts(warmup=False))
    tab, seq = rows(4, 4)
    assert p.predict({"tab": tab[:0], "seq": seq[:0]}).shape == (0,)
    with pytest.raises(ValueError, match="do not match"):
        p.predict({"tab": tab})
    with pytest.raises(ValueError, match="shape"):
        p.predict({"tab": tab[:, :3], "seq": seq})
    with pytest.raises(ValueError, match="batch size"):
        p.predict({"tab": tab, "seq": seq[:2]})
    # float64 input is converted to the declared float32
    np.testing.assert_allclose(
        p.predict({"tab": tab.astype(np.float64), "seq": seq}), p.predict({"tab": tab, "seq": seq})
    )


def test_load_refuses_tampered_or_foreign_bundles(
    exported: tuple[ModelRegistry, str, FraudNet], tmp_path: Path
) -> None:
    reg, version, _ = exported
    with pytest.raises(FeatureSetMismatch):
        Predictor.load(reg, "behaviour", opts(), expected_feature_set="fs-other")
    # a copy of the registry with altered parameters is refused before Paddle sees it
    import shutil

    copy = ModelRegistry(tmp_path / "copy")
    shutil.copytree(reg.root, copy.root)
    params = copy.path(version) / "model.pdiparams"
    data = bytearray(params.read_bytes())
    data[-1] ^= 0xFF
    params.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.pdiparams"):
        Predictor.load(copy, "behaviour", opts())


def test_options_from_settings_and_device_resolution(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    s = Settings(device="cpu", cpu_threads=2, use_onednn=False, model_max_batch=32)
    o = PredictorOptions.from_settings(s, warmup=False)
    assert (o.device, o.cpu_threads, o.use_onednn, o.model_max_batch, o.warmup) == (
        "cpu",
        2,
        False,
        32,
        False,
    )
    assert resolve_device("cpu") == "cpu"
    if not paddle.device.is_compiled_with_cuda():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ModelLoadError, match="gpu"):
            resolve_device("gpu")
    reg, version, _ = exported
    prog, params = find_program(reg.path(version))
    assert prog.name == "model.json" and params.name == "model.pdiparams"
    p = Predictor(prog, params, [], o)  # no declared inputs: names come from the program
    assert p.input_names == ("tab", "seq")
    tab, seq = rows(3, 5)
    assert p.predict({"tab": tab, "seq": seq}).shape == (3,)


# ------------------------------------------------------------------------------------------------
# The model served by a child process (modeling/inference_process.py): the same scores as
# in-process inference, and a child that never outlives or silently fails its owner.


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_settings_choose_the_child_process() -> None:
    assert PredictorOptions.from_settings(Settings(inference_process=True)).in_process is False
    assert PredictorOptions.from_settings(Settings(inference_process=False)).in_process is True


def test_child_scores_equal_in_process_scores(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    reg, version, _ = exported
    here = Predictor.load(reg, "behaviour", opts(model_max_batch=50), expected_feature_set=FS)
    child = Predictor.load(
        reg, "behaviour", opts(model_max_batch=50, in_process=False), expected_feature_set=FS
    )
    try:
        pid = child.process_id
        assert here.process_id is None and pid is not None and pid != os.getpid()
        assert child.version == version and child.input_names == here.input_names
        tab, seq = rows(173, 5)  # four requests of at most 50 rows
        np.testing.assert_array_equal(
            child.predict({"tab": tab, "seq": seq}), here.predict({"tab": tab, "seq": seq})
        )
        assert child.predict({"tab": tab[:0], "seq": seq[:0]}).shape == (0,)
        with pytest.raises(ValueError, match="shape"):
            child.predict({"tab": tab[:, :3], "seq": seq})
        twin = child.clone()  # shares the child: requests are serialized
        np.testing.assert_array_equal(
            twin.predict({"tab": tab[:7], "seq": seq[:7]}), here.predict({"tab": tab[:7], "seq": seq[:7]})
        )
    finally:
        child.close()
    assert _gone(pid)
    with pytest.raises(PredictorError, match="closed"):
        child.predict({"tab": tab[:1], "seq": seq[:1]})


def test_a_child_that_dies_fails_the_call_clearly(exported: tuple[ModelRegistry, str, FraudNet]) -> None:
    reg, _, _ = exported
    child = Predictor.load(reg, "behaviour", opts(in_process=False, warmup=False))
    pid = child.process_id
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid)
    tab, seq = rows(3, 6)
    with pytest.raises(PredictorError, match="exited") as info:
        child.predict({"tab": tab, "seq": seq})
    assert info.value.retriable and info.value.context["pid"] == pid
    child.close()


def test_a_program_paddle_cannot_load_is_refused(tmp_path: Path) -> None:
    """Garbage where the program should be: the child's Paddle refuses it, the caller gets a
    ModelLoadError naming the file, and nothing is left running."""
    prog, params = tmp_path / "m.json", tmp_path / "m.pdiparams"
    prog.write_text('{"not": "a program"}')
    params.write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match=r"m\.json") as info:
        Predictor(prog, params, [], PredictorOptions(device="cpu", in_process=False), version="v-bad")
    assert info.value.context["version"] == "v-bad"


def test_the_child_exits_when_its_owner_is_killed(
    exported: tuple[ModelRegistry, str, FraudNet], tmp_path: Path
) -> None:
    """SIGKILL gives the owner no chance to clean up: the child sees its socket close and exits."""
    reg, _, _ = exported
    script = textwrap.dedent(
        f"""
        import sys, time
        from modeling.predictor import Predictor, PredictorOptions
        from modeling.registry import ModelRegistry
        p = Predictor.load(ModelRegistry({str(reg.root)!r}), "behaviour",
                           PredictorOptions(device="cpu", use_onednn=False, in_process=False))
        print(p.process_id, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line.strip().isdigit(), f"owner printed {line!r}"
        pid = int(line)
        assert not _gone(pid, timeout=0.5)
        owner.kill()
        owner.wait()
        assert _gone(pid), "the inference child outlived its SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
