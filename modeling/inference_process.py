"""A Paddle predictor in a child process, so that inference does not hold the caller's GIL.

Paddle's Python binding keeps the GIL for the whole of ``Predictor.run`` (it releases it only in
its Ascend build), so in the live worker every model call froze every other Python thread for its
duration: Faust's consumer thread could not fetch while a 20 ms micro-batch ran. Here the caller
sends the input arrays down a socket and blocks reading the answer; a blocked read releases the
GIL, so the caller's other threads run while the child computes, on another core when there is
one.

* **Process**: ``python -m modeling.inference_process FD`` (``subprocess``, not
  ``multiprocessing``'s spawn, which would re-import the worker's ``__main__`` and Faust with
  it). It imports Paddle alone, creates the predictor from the same ``Config`` as in-process
  inference (``modeling.predictor._make_config``) and answers one request at a time.
* **Protocol**: ``multiprocessing.connection.Connection`` over a ``socketpair``: pickled
  messages (numpy arrays travel as raw buffers). The child first gets the model files, declared
  inputs, options and device, and answers ``("ready", input names)`` or ``("error", text)``.
  Then each request is ``{name: array}`` and each answer ``("ok", output)`` or
  ``("error", text)``; ``None`` asks it to exit.
* **Lifetime**: one child per loaded model (a hot swap starts a new one while the old one keeps
  serving, so loading never blocks scoring). The child ignores SIGINT/SIGTERM and exits when its
  socket closes: when the owner closes it, is garbage-collected, exits or is killed (SIGKILL
  included), so a child never outlives its worker.
* **Failures**: a load that fails in the child raises :class:`ModelLoadError` with the child's
  message; a child that dies or stops answering (``timeout_s``) raises :class:`PredictorError`,
  and the process is gone for good (the owner loads the model again).

Costs: about 1 s and one Paddle import of memory per model at load; per call the arrays'
pickling and a socket round trip: ``benchmarks/bench_predictor.py --quick`` on 2 vCPUs
(2026-12-01) measured p50 0.22 ms against 0.11 in-process at batch 1, 0.81 against 0.65 at 32
and 10.0 against 8.5 ms at 512.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeling.errors import ModelLoadError, PredictorError

#: seconds a child may take to import Paddle and load (and warm up) a model
LOAD_TIMEOUT_S = 300.0
#: seconds one request may take before the child is declared hung
RUN_TIMEOUT_S = 60.0


class InferenceProcess:
    """A Paddle predictor served by a child process: :meth:`run` takes ``{name: array}`` and
    returns the first output as numpy, blocking (without the GIL) until the child answers.
    Thread-safe: requests are serialized by a lock."""

    def __init__(
        self,
        model_file: Path,
        params_file: Path,
        inputs: Sequence[Any],
        options: Any,
        device: str,
        *,
        version: str = "",
        load_timeout_s: float = LOAD_TIMEOUT_S,
        run_timeout_s: float = RUN_TIMEOUT_S,
    ) -> None:
        self.version = version
        self.run_timeout_s = run_timeout_s
        self._lock = threading.Lock()
        parent, child = socket.socketpair()
        root = str(Path(__file__).resolve().parent.parent)  # where ``modeling`` is importable from
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "modeling.inference_process", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            parent.close()
            raise ModelLoadError(f"could not start an inference process: {exc}", version=version) from exc
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        # Closing the socket is what ends the child: on close(), garbage collection or exit.
        self._finalizer = weakref.finalize(self, _shut, self._conn, self._proc)
        self.pid = self._proc.pid
        spec = {
            "model_file": str(Path(model_file).resolve()),
            "params_file": str(Path(params_file).resolve()),
            "inputs": list(inputs),
            "options": options,
            "device": device,
        }
        try:
            self._conn.send(spec)
            reply = self._recv(load_timeout_s, "loading")
        except PredictorError as exc:
            self.close()
            raise ModelLoadError(
                f"inference process failed while loading: {exc.message}", version=version
            ) from exc
        if reply[0] != "ready":
            self.close()
            raise ModelLoadError(
                f"Paddle Inference could not load {Path(model_file).name}: {reply[1]}", version=version
            )
        self._input_names: list[str] = list(reply[1])

    def get_input_names(self) -> list[str]:
        return list(self._input_names)

    def _recv(self, timeout_s: float, doing: str) -> Any:
        try:
            ready = self._conn.poll(timeout_s)
            if not ready:
                self._kill()
                raise PredictorError(
                    f"inference process gave no answer in {timeout_s:g} s ({doing}); killed it",
                    version=self.version,
                    pid=self.pid,
                )
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.wait(timeout=5) if self._proc.poll() is None else self._proc.returncode
            raise PredictorError(
                f"inference process exited (code {code}) while {doing}", version=self.version, pid=self.pid
            ) from exc

    def run(self, arrays: Mapping[str, np.ndarray]) -> npt.NDArray[Any]:
        """The model's first output for one request (rows ≤ the model's max batch)."""
        with self._lock:
            if not self._finalizer.alive:
                raise PredictorError("inference process is closed", version=self.version)
            try:
                self._conn.send(dict(arrays))
            except OSError as exc:
                code = self._proc.poll()
                raise PredictorError(
                    f"inference process exited (code {code})", version=self.version, pid=self.pid
                ) from exc
            reply = self._recv(self.run_timeout_s, "running")
        if reply[0] != "ok":
            raise PredictorError(f"inference failed: {reply[1]}", version=self.version, pid=self.pid)
        out: npt.NDArray[Any] = reply[1]
        return out

    def _kill(self) -> None:
        self._proc.kill()
        self._finalizer()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit and wait for it (idempotent)."""
        self._finalizer()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _shut(conn: Connection, proc: subprocess.Popen[bytes]) -> None:
    """Tell the child to exit and close the socket (EOF ends it too); reaped by a daemon thread,
    so that dropping a swapped-out model never waits on its child's exit."""
    with contextlib.suppress(OSError):
        conn.send(None)
    conn.close()
    threading.Thread(target=_reap, args=(proc,), name="inference-reaper", daemon=True).start()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------- the child


def _serve(conn: Connection) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when its child stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        spec = conn.recv()
    except EOFError:
        return 0
    try:
        from paddle import inference

        from modeling.predictor import _make_config

        files = Path(spec["model_file"]), Path(spec["params_file"])
        config = _make_config(*files, spec["inputs"], spec["options"], spec["device"])
        pred = inference.create_predictor(config)
        names = list(pred.get_input_names())
        handles = {n: pred.get_input_handle(n) for n in names}
        output = pred.get_output_handle(pred.get_output_names()[0])
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    conn.send(("ready", names))
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return 0
        if req is None:
            return 0
        try:
            for name, a in req.items():
                handles[name].copy_from_cpu(a)
            pred.run()
            reply: tuple[str, Any] = ("ok", np.asarray(output.copy_to_cpu()))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (OSError, pickle.PicklingError):
            return 1


if __name__ == "__main__":
    sys.exit(_serve(Connection(int(sys.argv[1]))))
