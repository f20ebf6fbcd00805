"""Paddle Inference predictor over a real exported FraudNet published to a real registry."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from modeling.errors import FeatureSetMismatch, ModelLoadError
from modeling.networks import FraudNet, NetConfig, export_fraudnet, fit_standardizers, paddle
from modeling.predictor import Predictor, PredictorOptions, find_program, resolve_device
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


@pytest.mark.parametrize("onednn", [False, True])
def test_batch_invariance(exported: tuple[ModelRegistry, str, FraudNet], onednn: bool) -> None:
    """An event's score does not depend on which batch it shares or where in it it sits."""
    reg, version, _ = exported
    p = Predictor.load(reg, "behaviour", opts(use_onednn=onednn, model_max_batch=50), version=version)
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
