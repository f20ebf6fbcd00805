"""Paddle Inference behind one small class: named inputs in, one score per row out.

* **Device**: ``"auto"`` picks the GPU when Paddle is compiled with CUDA and a device is visible,
  else the CPU; ``"gpu"`` without one is an error. GPU: ``enable_use_gpu``, optionally TensorRT
  (dynamic batch 1…``model_max_batch``) and FP16. CPU: oneDNN on/off and the math-library thread
  count. oneDNN slows batch 1 and speeds large batches (``benchmarks/bench_predictor.py``).
* **Batching**: the caller's batch (the pipeline's) is sliced into chunks of ``model_max_batch``
  (the model's), so the two limits stay separate (Morpheus' ``_split_batches``). Rows never
  interact inside the network, so a row's score does not depend on its batch-mates (tested).
* **Threads**: one Paddle predictor is not thread-safe and ``run`` holds the GIL for the whole
  call, so threads do not add throughput; give each thread its own :meth:`Predictor.clone`
  (a ``Config`` can make only one predictor; ``clone`` shares the weights).
* **Warm-up** on load runs batch 1 and ``model_max_batch`` so the first real request does not
  pay for kernel selection, oneDNN primitive creation or TensorRT engine builds.
* **Generic**: inputs are whatever the program declares (``tab``/``seq`` float32 for the
  behaviour model, int64 ``input_ids`` for a text model); a ``[B, 1]`` output becomes ``[B]``, a
  ``[B, K]`` output yields column ``output_column`` (default: the last, the positive class).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modeling.decisions import ReasonCoder, Thresholds
from modeling.errors import ModelLoadError, PredictorError
from modeling.inference_process import InferenceProcess
from modeling.networks import InputDesc
from modeling.registry import LoadedBundle, ModelRegistry

log = logging.getLogger("riskstream.models")

Device = Literal["auto", "cpu", "gpu"]
#: size used for dynamic non-batch dimensions during warm-up and as TensorRT's opt shape
DYNAMIC_DIM_WARMUP = 16


@dataclass(frozen=True)
class PredictorOptions:
    device: Device = "auto"
    cpu_threads: int = 1
    use_onednn: bool = True
    use_tensorrt: bool = False
    use_fp16: bool = False
    model_max_batch: int = 256
    gpu_id: int = 0
    gpu_memory_mb: int = 256
    warmup: bool = True
    #: oneDNN caches primitives per input shape; bound it (batch sizes vary)
    onednn_cache_capacity: int = 16
    #: TensorRT range of dynamic non-batch dimensions (min, max) e.g. a text length
    trt_dynamic_dim: tuple[int, int] = (1, 512)
    #: pad every model call to one of a few row counts (``bucket_sizes``, at most
    #: ``model_max_batch``): oneDNN builds its kernels per input shape, so varying batch sizes
    #: rebuilt them call after call; with padding it sees a handful of shapes and reuses them
    pad_batches: bool = False
    #: padded row counts: powers of two below ``pad_step``, then multiples of it (0: powers of
    #: two all the way). Power-of-two buckets padded a 159-row call to 256 rows; multiples of 32
    #: cost 19.5 against 22.5 us per row for calls of about 159 rows, 25.5 against 28.1 for about
    #: 74, timed alone (benchmarks/README.md, session 15; in the worker, within noise)
    pad_step: int = 32
    #: run the model in a child process (``modeling/inference_process.py``) so that inference
    #: does not hold this process's GIL
    in_process: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PredictorOptions:
        """From :class:`modeling.settings.Settings` (device, cpu_threads, use_onednn, …)."""
        opts = cls(
            device=settings.device,
            cpu_threads=settings.cpu_threads,
            use_onednn=settings.use_onednn,
            use_tensorrt=settings.use_tensorrt,
            use_fp16=settings.use_fp16,
            model_max_batch=settings.model_max_batch,
            in_process=not settings.inference_process,
            pad_batches=settings.use_onednn,
            pad_step=settings.model_pad_step,
        )
        return replace(opts, **overrides)


@cache
def bucket_sizes(max_batch: int, step: int = 0) -> tuple[int, ...]:
    """The row counts a padded model call is run at: powers of two below ``step`` (all of
    ``max_batch`` when ``step`` is 0), then the multiples of ``step`` below ``max_batch``, then
    ``max_batch`` itself."""
    if max_batch < 1 or step < 0:
        raise ValueError(f"bucket_sizes: max_batch {max_batch} must be >= 1 and step {step} >= 0")
    limit = min(step, max_batch) if step else max_batch
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    if step:
        sizes += range(limit, max_batch, step)
    return tuple(dict.fromkeys([*sizes, max_batch]))


def gpu_available() -> bool:
    """Paddle compiled with CUDA and at least one device visible."""
    import paddle

    try:
        return bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0
    except Exception:  # a CUDA build on a machine without a driver
        return False


def resolve_device(device: Device) -> Literal["cpu", "gpu"]:
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        raise ModelLoadError("device 'gpu' requested but Paddle has no CUDA or no GPU is visible")
    return "cpu"


def find_program(path: Path) -> tuple[Path, Path]:
    """The (program, params) pair of an exported model in ``path`` (PIR ``.json`` or ``.pdmodel``)."""
    params = sorted(path.glob("*.pdiparams"))
    for p in params:
        stem = p.name[: -len(".pdiparams")]
        for ext in (".json", ".pdmodel"):
            prog = path / f"{stem}{ext}"
            if prog.is_file():
                return prog, p
    raise ModelLoadError(f"no exported Paddle program (*.json or *.pdmodel + *.pdiparams) in {path}")


def _make_config(
    model_file: Path, params_file: Path, inputs: Sequence[InputDesc], opts: PredictorOptions, device: str
) -> Any:
    from paddle import inference

    config = inference.Config(str(model_file), str(params_file))
    config.disable_glog_info()
    config.switch_ir_optim(True)
    if device == "gpu":
        precision = inference.PrecisionType.Half if opts.use_fp16 else inference.PrecisionType.Float32
        if opts.use_tensorrt:
            config.enable_use_gpu(opts.gpu_memory_mb, opts.gpu_id)
            config.enable_tensorrt_engine(
                workspace_size=1 << 30,
                max_batch_size=opts.model_max_batch,
                min_subgraph_size=3,
                precision_mode=precision,
                use_static=False,
                use_calib_mode=False,
            )
            lo, hi = opts.trt_dynamic_dim
            min_s, max_s, opt_s = {}, {}, {}
            for d in inputs:
                rest = list(d.shape[1:])
                min_s[d.name] = [1, *[lo if s < 0 else s for s in rest]]
                max_s[d.name] = [opts.model_max_batch, *[hi if s < 0 else s for s in rest]]
                opt_s[d.name] = [opts.model_max_batch, *[DYNAMIC_DIM_WARMUP if s < 0 else s for s in rest]]
            config.set_trt_dynamic_shape_info(min_s, max_s, opt_s)
        else:
            config.enable_use_gpu(opts.gpu_memory_mb, opts.gpu_id, precision)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(opts.cpu_threads)
        if opts.use_onednn:
            config.enable_onednn()
            # one cached shape per padded row count at least, or they evict each other
            shapes = len(bucket_sizes(opts.model_max_batch, opts.pad_step)) if opts.pad_batches else 0
            config.set_onednn_cache_capacity(max(opts.onednn_cache_capacity, shapes))
        else:
            config.disable_onednn()
    return config


class Predictor:
    """A loaded model: ``predict({name: array}) -> float32 [B]``. One per thread (see :meth:`clone`)."""

    def __init__(
        self,
        model_file: Path,
        params_file: Path,
        inputs: Sequence[InputDesc],
        options: PredictorOptions | None = None,
        *,
        version: str = "",
        manifest: Mapping[str, Any] | None = None,
        _paddle_predictor: Any = None,
    ) -> None:
        self.options = options or PredictorOptions()
        if self.options.model_max_batch < 1:
            raise ValueError("model_max_batch must be >= 1")
        self.model_file = Path(model_file)
        self.params_file = Path(params_file)
        self.version = version
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.device = resolve_device(self.options.device)
        self.output_column = int(self.manifest.get("output_column", -1))
        self._remote: InferenceProcess | None = None
        self._waiter: ThreadPoolExecutor | None = None  # predict_async's thread (child only)
        if _paddle_predictor is not None:
            self._pred = _paddle_predictor
        else:
            for f in (self.model_file, self.params_file):
                if not f.is_file():
                    raise ModelLoadError(f"model file {f} does not exist", version=self.version)
            if self.options.in_process:
                self._pred = self._create(inputs)
            else:
                files = self.model_file, self.params_file
                self._pred = self._remote = InferenceProcess(
                    *files, list(inputs), self.options, self.device, version=version
                )
        names = list(self._pred.get_input_names())
        declared = {d.name: d for d in inputs}
        if declared and set(declared) != set(names):
            raise ModelLoadError(
                f"manifest declares inputs {sorted(declared)} but the program takes {sorted(names)}",
                version=version,
            )
        # without a manifest declaration the dtype/shape is unknown: shape () skips the checks
        self.inputs: tuple[InputDesc, ...] = tuple(
            declared.get(n, InputDesc(n, "float32", ())) for n in names
        )
        if self._remote is None:
            self._handles = {n: self._pred.get_input_handle(n) for n in names}
            self._output = self._pred.get_output_handle(self._pred.get_output_names()[0])
        if _paddle_predictor is None and self.options.warmup:
            self.warmup()

    def _create(self, inputs: Sequence[InputDesc]) -> Any:
        from paddle import inference

        config = _make_config(self.model_file, self.params_file, inputs, self.options, self.device)
        try:
            return inference.create_predictor(config)
        except Exception as exc:
            raise ModelLoadError(
                f"Paddle Inference could not load {self.model_file.name}: {exc}", version=self.version
            ) from exc

    @property
    def process_id(self) -> int | None:
        """The inference child's pid (``in_process=False``), else None."""
        return None if self._remote is None else self._remote.pid

    def close(self) -> None:
        """Stop the inference child, if any (it also stops when this predictor is collected)."""
        if self._remote is not None:
            self._remote.close()
        if self._waiter is not None:
            self._waiter.shutdown(wait=False)

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle, options: PredictorOptions | None = None) -> Predictor:
        """A predictor for a verified registry bundle; reads ``manifest["model"]`` when present."""
        model = bundle.manifest.get("model")
        if isinstance(model, dict) and "model_file" in model:
            prog, params = bundle.file(model["model_file"]), bundle.file(model["params_file"])
            inputs = [InputDesc.from_dict(d) for d in model.get("inputs", [])]
            opts = options or PredictorOptions()
            if opts.use_onednn and not model.get("onednn_safe", False):
                # Exported before the bin-edge indicators were compared elementwise: under
                # oneDNN its scores move by up to 0.07 (networks.PiecewiseLinear._edges_passed).
                log.warning(
                    "model %s was exported before oneDNN gave the same scores as Paddle's own "
                    "kernels; running it without oneDNN (retrain it to use oneDNN)",
                    bundle.version,
                )
                options = replace(opts, use_onednn=False, pad_batches=False)
        else:
            prog, params = find_program(bundle.path)
            inputs = []
        return cls(prog, params, inputs, options, version=bundle.version, manifest=bundle.manifest)

    @classmethod
    def load(
        cls,
        registry: ModelRegistry,
        kind: str,
        options: PredictorOptions | None = None,
        *,
        version: str | None = None,
        expected_feature_set: str | None = None,
    ) -> Predictor:
        """Verify and load ``version`` (default: the current version of ``kind``)."""
        bundle = (
            registry.load(version, expected_feature_set)
            if version is not None
            else registry.load_current(kind, expected_feature_set)
        )
        return cls.from_bundle(bundle, options)

    def clone(self) -> Predictor:
        """A predictor for another thread, sharing the weights (no re-load, no warm-up). With a
        child process the child is shared: its requests are serialized."""
        if self._remote is not None:
            twin = Predictor.__new__(Predictor)
            twin.__dict__.update(self.__dict__)
            twin._waiter = None
            return twin
        return Predictor(
            self.model_file,
            self.params_file,
            self.inputs,
            self.options,
            version=self.version,
            manifest=self.manifest,
            _paddle_predictor=self._pred.clone(),
        )

    # ------------------------------------------------------------------------------ metadata

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.inputs)

    @property
    def feature_set(self) -> str | None:
        fs = self.manifest.get("feature_set")
        return None if fs is None else str(fs)

    @property
    def thresholds(self) -> dict[str, Any]:
        t = self.manifest.get("thresholds")
        return dict(t) if isinstance(t, dict) else {}

    def decision_thresholds(self) -> Thresholds | None:
        """The manifest's approve/review/decline thresholds, if it has them."""
        t = self.manifest.get("thresholds")
        return Thresholds.from_dict(t) if isinstance(t, dict) and "review" in t else None

    def reason_coder(self) -> ReasonCoder | None:
        """Reason codes for the manifest's tabular features, if it records an attribution."""
        r = self.manifest.get("reasons")
        return ReasonCoder.from_dict(r) if isinstance(r, dict) else None

    @property
    def max_batch(self) -> int:
        return self.options.model_max_batch

    # ------------------------------------------------------------------------------ inference

    def warmup(self) -> float:
        """Run zeros at batch 1 and ``model_max_batch`` (every bucket size when padding); returns
        the seconds it took (0 when the input shapes are unknown)."""
        t0 = time.perf_counter()
        if any(not d.shape for d in self.inputs):
            return 0.0
        top = self.options.model_max_batch
        for b in bucket_sizes(top, self.options.pad_step) if self.options.pad_batches else sorted({1, top}):
            self.predict(
                {
                    d.name: np.zeros(
                        [b, *[DYNAMIC_DIM_WARMUP if s < 0 else s for s in d.shape[1:]]], dtype=d.dtype
                    )
                    for d in self.inputs
                }
            )
        return time.perf_counter() - t0

    def _check(self, inputs: Mapping[str, npt.ArrayLike]) -> tuple[dict[str, np.ndarray], int]:
        if set(inputs) != set(self.input_names):
            raise ValueError(f"inputs {sorted(inputs)} do not match the model's {sorted(self.input_names)}")
        arrays: dict[str, np.ndarray] = {}
        batch = -1
        for d in self.inputs:
            a = np.ascontiguousarray(inputs[d.name], dtype=d.dtype if d.shape else None)
            if d.shape and (
                a.ndim != len(d.shape) or any(s >= 0 and s != a.shape[i] for i, s in enumerate(d.shape) if i)
            ):
                raise ValueError(f"input {d.name!r} has shape {a.shape}, the model expects {d.shape}")
            if batch >= 0 and a.shape[0] != batch:
                raise ValueError(f"inputs disagree on the batch size: {a.shape[0]} != {batch}")
            batch = a.shape[0]
            arrays[d.name] = a
        return arrays, batch

    def _run(self, arrays: Mapping[str, np.ndarray]) -> npt.NDArray[np.float32]:
        # the child raises PredictorError itself
        out = self._run_here(arrays) if self._remote is None else self._remote.run(arrays)
        if out.ndim == 2 and out.shape[1] != 1:
            out = out[:, self.output_column]
        return out.reshape(-1).astype(np.float32, copy=False)

    def _run_here(self, arrays: Mapping[str, np.ndarray]) -> npt.NDArray[Any]:
        try:
            for name, a in arrays.items():
                self._handles[name].copy_from_cpu(a)
            self._pred.run()
            return np.asarray(self._output.copy_to_cpu())
        except Exception as exc:
            raise PredictorError(f"inference failed: {exc}", version=self.version) from exc

    async def predict_async(self, inputs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float32]:
        """:meth:`predict` for an event loop. With the model in a child process the call waits in
        this predictor's own thread, without the GIL, and the loop runs other work meanwhile; an
        in-process model runs right here (a thread would gain nothing: ``run`` holds the GIL)."""
        if self._remote is None:
            return self.predict(inputs)
        if self._waiter is None:
            self._waiter = ThreadPoolExecutor(1, thread_name_prefix="inference-wait")
        return await asyncio.get_running_loop().run_in_executor(self._waiter, self.predict, inputs)

    def predict(self, inputs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float32]:
        """Scores float32 [B]; the batch is run in chunks of ``model_max_batch`` rows."""
        arrays, batch = self._check(inputs)
        if batch == 0:
            return np.zeros(0, dtype=np.float32)
        step = self.options.model_max_batch
        run = self._run_padded if self.options.pad_batches else self._run
        if batch <= step:
            return run(arrays)
        out = np.empty(batch, dtype=np.float32)
        for start in range(0, batch, step):
            stop = min(start + step, batch)
            out[start:stop] = run({k: v[start:stop] for k, v in arrays.items()})
        return out

    def _run_padded(self, arrays: Mapping[str, np.ndarray]) -> npt.NDArray[np.float32]:
        """One call padded with zero rows to its bucket size; the padding's scores are dropped
        (rows never interact in the network, so the real rows' scores do not change)."""
        n = len(next(iter(arrays.values())))
        size = next(b for b in bucket_sizes(self.options.model_max_batch, self.options.pad_step) if b >= n)
        if size == n:
            return self._run(arrays)
        padded = {}
        for k, a in arrays.items():
            p = np.zeros((size, *a.shape[1:]), dtype=a.dtype)
            p[:n] = a
            padded[k] = p
        return self._run(padded)[:n]
