"""Offline operation: the text stack imports, builds, trains, exports and scores with every network
call forbidden, and never attempts one. Runs in a fresh interpreter (so paddlenlp's import is
covered too) with the offline variables unset: ``modeling.text`` must set them itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []

    def forbid(name):
        def refuse(*args, **kwargs):
            attempts.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
            raise OSError(f"network access forbidden in this test: {name}")
        return refuse

    socket.socket.connect = forbid("socket.connect")
    socket.socket.connect_ex = forbid("socket.connect_ex")
    socket.create_connection = forbid("create_connection")
    socket.getaddrinfo = forbid("getaddrinfo")

    # control: the trap catches a real attempt (through the bogus proxy), then starts clean
    import urllib.request
    try:
        urllib.request.urlopen("http://example.com", timeout=2)
    except OSError:
        pass
    assert attempts, "the network trap did not see urllib's attempt"
    attempts.clear()

    from pathlib import Path
    import numpy as np
    from modeling.errors import ModelLoadError
    from modeling.text.model import ErnieSize, load_pretrained, save_pretrained
    from modeling.text.scorer import TextScorer
    from modeling.text.tokenizer import TextTokenizer
    from training.text_train import TextTrainOptions, export_bundle, train_text

    work = Path(sys.argv[1])
    fraud = ["您好这里是银行客服您的账户异常请转账到安全账户", "恭喜中奖请先交手续费到指定银行卡"]
    normal = ["我想订一份外卖送到公司", "请问明天上午可以预约维修吗"]
    texts = [t + str(i) for i in range(15) for t in fraud + normal]
    labels = np.array([1, 1, 0, 0] * 15)
    size = ErnieSize(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64)
    opts = TextTrainOptions(max_len=32, max_epochs=1, batch_size=16, size=size, vocab_min_freq=1)
    result = train_text(texts, labels, opts, work / "train", log=lambda s: None)
    manifest = export_bundle(result, work / "bundle")
    scores = TextScorer(work / "bundle", manifest).score(["请转账到安全账户", None, "订外卖"])
    assert scores[1] is None and all(0 <= s <= 1 for s in (scores[0], scores[2])), scores

    save_pretrained(result.model, work / "ernie")
    load_pretrained(work / "ernie", vocab_size=result.tokenizer.vocab_size)
    TextTokenizer.from_pretrained(work / "bundle")
    for name in ("ernie-3.0-mini-zh", "bert-base-chinese"):
        for load in (TextTokenizer.from_pretrained, load_pretrained):
            try:
                load(name)
            except ModelLoadError:
                pass
            else:
                raise AssertionError(f"{load.__name__}({name!r}) did not refuse")

    import os
    keys = ("HF_HUB_OFFLINE", "AISTUDIO_BOS_OFFLINE", "HF_DATASETS_OFFLINE", "PPNLP_HOME")
    env = {k: os.environ.get(k) for k in keys}
    print("RESULT " + json.dumps({"attempts": attempts, "env": env}))
    """
)


@pytest.mark.slow
def test_build_train_export_score_without_network(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_HUB_OFFLINE", "AISTUDIO_BOS_OFFLINE", "HF_DATASETS_OFFLINE", "PPNLP_HOME"}
    }
    env["RISKSTREAM_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(REPO)
    # a proxy that does not exist: should anything bypass the socket patch, it fails rather than leaks
    env["HTTP_PROXY"] = env["HTTPS_PROXY"] = "http://127.0.0.1:9"
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["attempts"] == []
    assert result["env"] == {
        "HF_HUB_OFFLINE": "1",
        "AISTUDIO_BOS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PPNLP_HOME": str(tmp_path / "home" / "paddlenlp"),
    }


def test_paddlenlp_imports_with_the_pinned_dependencies() -> None:
    from modeling.text.env import prepare_paddlenlp

    prepare_paddlenlp()
    import paddlenlp
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification, ErnieTokenizer

    assert paddlenlp.__version__.startswith("2.8.1")
    assert ErnieConfig and ErnieForSequenceClassification and ErnieTokenizer
    # paddlenlp 2.8.1 only imports with these below their next major versions (pyproject pins)
    assert Version(metadata.version("huggingface_hub")) < Version("1.0")
    assert Version(metadata.version("aistudio-sdk")) < Version("0.3")
    assert Version(metadata.version("datasets")) < Version("5")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
