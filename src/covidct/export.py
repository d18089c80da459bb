"""ONNX export of both methods' networks and prediction on ONNX Runtime.

What is exported is the *network* of a model file; pre-processing (window, slice choice,
body crop, resampling, aggregation) stays in covidct and is the same for both runtimes:

* the slice classifier: one graph, ``(N, 3, crop, crop)`` float in [-1, 1] -> logits ``(N, C)``;
* CovidCTNet: its 3D CNN, ``(N, 1, D, S, S)`` -> logits, and its BCDU-Net denoiser (the
  bidirectional ConvLSTM skips included), ``(N, 1, H, W)`` -> sigmoid image; a model
  without a denoiser (the plain-volume ablation) exports only the 3D CNN.

The batch axis is dynamic (BCDU-Net's height and width too). Weight standardisation of
BiT's StdConv2d layers is a function of the weights only, so the exporter's constant
folding removes it from the graph: part of why ONNX Runtime is faster on a CPU.

``to_runtime(model, "onnx")`` (or ``covidct.load_model(path, runtime="onnx")``) hands the model
:class:`OnnxNetwork` objects for its networks (:meth:`covidct.models.Model.use_networks`), callable like the torch modules they replace,
so ``predict``/``score_dataset`` run unchanged. Exported graphs are cached by the model
file's SHA-256 and the exporter's version (:func:`export_key`) under ``$COVIDCT_CACHE/onnx``
(default ``~/.cache/covidct/onnx``), so only the first ONNX prediction with a given model
pays for the export (seconds), and a changed exporter never serves an old graph.
Grad-CAM and training need the PyTorch runtime.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .devices import int8_is_fast
from .errors import ModelError
from .int8_files import DENOISER_RULE_VERSION, int8_path, parity_path, read_parity

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
#: What the CLI offers: a runtime, or "auto" (its default), see :func:`choose_runtime`.
RUNTIME_CHOICES = ("auto", *RUNTIMES)
#: The engine that runs the exported graphs of each runtime but "torch". Both run the same
#: ONNX files (the int8 one too: ONNX Runtime's static quantization, read by OpenVINO as is).
ENGINES = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime",
           "openvino": "openvino", "openvino-int8": "openvino"}
#: engine -> the runtime that runs its int8 graph
INT8_RUNTIMES = {engine: runtime for runtime, engine in ENGINES.items() if runtime.endswith("-int8")}
#: ONNX Runtime 1.31's "Pad_Fusion" folds BiT's zero Pad before the stem's MaxPool into the
#: MaxPool's own padding, which pads with -inf: 5e-4 off on the logits of a tiny model
#: (the stem convolution's output is not rectified, so the pad value matters). Disabled.
DISABLED_OPTIMIZERS = ("Pad_Fusion",)
FORMATS = ("onnx",)
#: ONNX opset of exported graphs (ONNX Runtime 1.17+ runs it).
OPSET = 17
#: Suffix of the BCDU-Net graph written next to a CovidCTNet's 3D CNN graph.
DENOISER_SUFFIX = ".bcdunet.onnx"
_CACHE_DEFAULT = Path("~/.cache/covidct/onnx")
#: Version of what export_model writes. Raise it whenever a change to the export (folding,
#: graph surgery, names, inputs) would make a graph cached by the old code wrong or stale.
EXPORT_FORMAT = 1


# Export ------------------------------------------------------------------------------------

def fold_weight_standardization(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` whose StdConv2d layers are plain convolutions with standardised weights.

    BiT standardises every convolution's weights at every forward pass; for inference that
    is a constant, computed here once in float64. (Exported as is, the standardisation is a
    BatchNormalization node in training mode that ONNX Runtime's constant folding computes
    less accurately: 5e-4 on the logits of a random tiny model.) Same outputs, less work.
    """
    import copy

    from timm.layers import StdConv2d

    net = copy.deepcopy(net).eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is StdConv2d:  # not StdConv2dSame: its padding happens in forward
                setattr(parent, name, _plain_conv(child))
    return net


def _plain_conv(layer) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                           stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                           groups=layer.groups, bias=layer.bias is not None)
    with torch.no_grad():
        w = layer.weight.detach().double()
        flat = w.reshape(w.shape[0], -1)
        mean = flat.mean(1, keepdim=True)
        var = flat.var(1, unbiased=False, keepdim=True)  # batch_norm's (biased) variance
        conv.weight.copy_(((flat - mean) / torch.sqrt(var + layer.eps)).reshape_as(w).float())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias.detach())
    return conv


def networks(model) -> dict[str, tuple[Any, tuple[int, ...], dict[int, str]]]:
    """role -> (torch module, example input shape, dynamic axes) of a loaded covidct model
    (see :meth:`covidct.models.Model.networks`)."""
    return model.networks()


def roles(model) -> tuple[str, ...]:
    """The networks a model has ("classifier", and "denoiser" for a CovidCTNet with one),
    without building their export copies (folding BiT's weights is seconds)."""
    return tuple(model.network_roles())


def output_paths(model, out: str | os.PathLike) -> dict[str, Path]:
    """Where each network's graph goes: ``out`` for the classifier, ``<stem>.bcdunet.onnx``
    next to it for a CovidCTNet denoiser."""
    out = Path(out)
    paths = {"classifier": out}
    if "denoiser" in roles(model):
        stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
        paths["denoiser"] = out.with_name(stem + DENOISER_SUFFIX)
    return paths


def export_network(module, example_shape: tuple[int, ...], dynamic: dict[int, str],
                   path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Trace one torch module to an ONNX file (written atomically), with covidct metadata."""
    import onnx
    import torch

    module = module.eval().to("cpu")
    example = torch.zeros(example_shape, dtype=torch.float32)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Tracing warns about the input-shape checks in forward(); they hold for the
        # example and the graph keeps the dynamic axes declared here.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": dynamic, "output": {0: "batch"}},
                              do_constant_folding=True)
        graph = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(graph, str(tmp))
    return Path(path)


def export_model(model, out: str | os.PathLike, fmt: str = "onnx") -> dict[str, Path]:
    """Export every network of a loaded covidct model; returns role -> written file."""
    if fmt not in FORMATS:
        raise ModelError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    meta = model_metadata(model)
    written = {}
    modules = networks(model)
    for role, path in output_paths(model, out).items():
        module, shape, dynamic = modules[role]
        written[role] = export_network(module, shape, dynamic, path, {**meta, "covidct_role": role})
    return written


def model_metadata(model) -> dict[str, Any]:
    """What a reader of the ONNX file needs to feed it (no patient data)."""
    return {"covidct_method": model.method, "covidct_class_names": list(model.class_names),
            **model.export_metadata()}


# Runtime -----------------------------------------------------------------------------------

#: Items per ONNX Runtime call, whatever batch the caller passes (0 = the caller's batch). On
#: a 2-core CPU one 480-px BiT slice (or one 128-px BCDU-Net slice) already keeps both
#: threads busy: batch 1 ran at least as fast as 4 or 16 per item (row 1 of BENCHMARKS.md:
#: 1.76 vs 1.70 slices/s; batch 16 took ~30% more CPU time per slice under load), while the
#: runtime's memory arena grows with the largest batch it has seen and keeps it: a
#: BiT-R50x1 session peaked at 2.4 GB RSS after a batch of 16, 0.9 GB at batch 1.
MAX_BATCH = 1

def session_options(threads: int | None = None):
    """ONNX Runtime options: every graph optimisation, ``threads`` intra-op threads
    (default: torch's thread count, i.e. what the PyTorch runtime would use)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle ONNX Runtime threads otherwise spin for a while after every call, taking the
    # cores from PyTorch and numpy work in between (CovidCTNet's pre-processing, a second
    # model): with spinning on, PyTorch ran 10x slower in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def is_int8(runtime: str) -> bool:
    """Whether ``runtime`` runs the int8 graph of a model's ``int8_role``."""
    return runtime.endswith("-int8")


def float_runtime(runtime: str) -> str:
    """The float32 runtime on the same engine ("openvino-int8" -> "openvino")."""
    return runtime.removesuffix("-int8")


class _AltStack:
    """The calling thread's alternate signal stack, put back as it was after OpenVINO work.

    OpenVINO 2026.4's CPU plugin gives the thread that compiles a model an alternate signal
    stack of its own, freed when the compiled model goes, which then puts back the stack it
    found. Models freed in another order than made (or on another thread) leave a thread on a
    freed stack, and the next signal handled there (a child's exit under PyTorch's DataLoader,
    Ctrl-C) kills the process with SIGSEGV: seen as a crashed test worker, reproduced by
    compiling two models and freeing the first (tests/test_export.py). The stack it installs
    matters only where the thread's own alternate stack is too small for AMX's signal frames
    (at least 11952 bytes on the Xeon of BENCHMARKS.md); Python's faulthandler's was 59760
    there, and without one signals use the thread's own stack. Linux only; elsewhere a no-op."""

    def __enter__(self):
        self.saved = _sigaltstack()
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            _sigaltstack(self.saved)


class _Stack(ctypes.Structure):  # Linux's stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack(new: _Stack | None = None) -> _Stack | None:
    """Set the calling thread's alternate signal stack to ``new`` (a saved one) and return the
    one before; None where there is no such call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    old = _Stack()
    if ctypes.CDLL(None).sigaltstack(None if new is None else ctypes.byref(new),
                                     ctypes.byref(old)) != 0:
        return None
    return old


class OpenVinoSession:
    """An exported ONNX graph compiled by OpenVINO for the CPU, with ONNX Runtime's
    ``run(None, {name: array}) -> [output]``, so :class:`OnnxNetwork` runs either.

    Float32 precision is asked for: on a CPU with AMX, OpenVINO's default runs float32 graphs
    (and an int8 graph's float islands) in bfloat16, which would change the answers. An
    infer request serves one call at a time, while an ONNX Runtime session may be called from
    several threads at once (benchmarks run one slice per thread side by side): calls take a
    free request from the session's own pool. Compiling and freeing happen inside
    :class:`_AltStack`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import threading

        import openvino as ov

        # OpenVINO keeps what it compiled in the cache folder (keyed by the graph and these
        # settings): a cold process then loads a model in about 0.1 s instead of 0.4-0.7 s.
        with _AltStack():
            self.compiled = ov.Core().compile_model(str(path), "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                "CACHE_DIR": str(openvino_cache())})
        self.input_name = self.compiled.inputs[0].any_name
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def __del__(self):
        if sys.is_finalizing():  # the interpreter is going: no signal will be handled
            return
        # The compiled model (and its requests, which hold it) go here, inside the bracket.
        with _AltStack():
            self._free = []
            self.compiled = None

    def run(self, _names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            request = self._free.pop() if self._free else self.compiled.create_infer_request()
        try:
            # copy: the request reuses its output buffer on its next call
            return [request.infer({0: feeds[self.input_name]})[0].copy()]
        finally:
            with self._lock:
                self._free.append(request)


def _session(path: Path, threads: int | None, engine: str):
    if engine == "openvino":
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            raise ModelError("runtime openvino needs the openvino package (pip install openvino)")
        return OpenVinoSession(path, threads)
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads),
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


class OnnxNetwork(torch.nn.Module):
    """An exported graph that stands in for a torch module (eval only, CPU), run by ONNX
    Runtime or, with ``engine="openvino"``, by OpenVINO.

    It takes and returns torch tensors, has ``eval()``/``to()`` and one empty parameter, so
    code that asks ``next(net.parameters()).device`` keeps working.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 max_batch: int = MAX_BATCH, engine: str = "onnxruntime"):
        import torch

        super().__init__()
        self.path = Path(path)
        self.max_batch = max_batch
        self.engine = engine
        try:
            self.session = _session(self.path, threads, engine)
        except ModelError:
            raise
        except Exception as exc:  # each engine raises its own exception types
            raise ModelError(f"not a runnable ONNX file ({type(exc).__name__})", path) from None
        self.input_name = (self.session.input_name if engine == "openvino"
                           else self.session.get_inputs()[0].name)
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x):
        import torch

        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        step = self.max_batch if self.max_batch > 0 else max(1, len(array))
        if len(array) <= step:
            return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        parts = [self.session.run(None, {self.input_name: array[i:i + step]})[0]
                 for i in range(0, len(array), step)]
        return torch.from_numpy(np.concatenate(parts))


def cache_root() -> Path:
    env = os.environ.get("COVIDCT_CACHE", "")
    if env and env.strip().lower() not in ("off", "none", "0", "false", "no"):
        return Path(env).expanduser() / "onnx"
    return _CACHE_DEFAULT.expanduser()


def openvino_cache() -> Path:
    """Where OpenVINO keeps compiled graphs: beside the ONNX cache (``openvino``)."""
    return cache_root().with_name("openvino")


def _model_sha(model) -> str | None:
    return (model.file or {}).get("sha256")


def export_key() -> str:
    """What the exported graphs depend on besides the model file: the export format, the
    opset, covidct's version and the torch exporter's. Part of every cached graph's name."""
    import hashlib

    from . import __version__

    parts = {"format": EXPORT_FORMAT, "opset": OPSET, "covidct": __version__,
             "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _cache_path(model, sha: str) -> Path:
    """The float graph cached for a model file with this digest (by this exporter)."""
    return cache_root() / f"{model.method}-{sha}-x{export_key()}.onnx"


def choose_runtime(model, runtime: str = "auto") -> str:
    """The runtime ``runtime`` means for ``model``.

    "auto" (the CLI's default) is ONNX Runtime when it is installed, else PyTorch. On ONNX
    Runtime float32 gives PyTorch's answers (tests/test_export.py checks both methods'
    probabilities to 1e-4, `covidct predict` to 1e-3); the network of the model's
    ``int8_role`` runs on int8 instead when an int8 graph made for this very model file (its
    digest) passed its parity check against float32 on held-out training data
    (:func:`passed_check`) and, for CovidCTNet's BCDU-Net (``int8_needs_fast_cpu``), the CPU
    has wide int8 instructions (covidct.devices.int8_is_fast; without them its int8 graph is
    slower than float32): the slice classifier's (same call on >= 99% of the slices, median
    probability difference <= 0.02), CovidCTNet's BCDU-Net's (the same on scans, and the
    infection maps alike inside the lungs, see covidct.quantize.denoiser_parity).
    ``train-bit``/``train-covidctnet`` make and check that graph when they finish,
    ``covidct export --int8`` does it for any model file. That int8 graph runs on OpenVINO
    ("openvino-int8") where covidct.devices.int8_engine says it is the faster engine and the
    check passed on OpenVINO too (the check runs on each installed engine), else on ONNX
    Runtime ("onnx-int8"). "onnx-int8"/"openvino-int8" run the int8 graph whatever its
    check said (warned if it failed); a CovidCTNet without one runs float32 (warned)."""
    if runtime not in RUNTIME_CHOICES:
        raise ModelError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIME_CHOICES)}")
    if runtime == "auto":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return "torch"
        if not model.int8_auto or (model.int8_needs_fast_cpu and not int8_is_fast()):
            return "onnx"
        from .devices import int8_engine_order

        cached = _cached_int8(model, require_pass=False)
        record = read_parity(cached) if cached else None
        return next((INT8_RUNTIMES[engine] for engine in int8_engine_order()
                     if passed_check(model, record, engine)), "onnx")
    if is_int8(runtime) and not model.int8_role:
        return float_runtime(runtime)
    if (is_int8(runtime) and model.int8_role == "denoiser"
            and not _cached_int8(model, require_pass=False)):
        # CovidCTNet's int8 BCDU-Net needs its training cohort; where nobody made one, float32
        # (as before it existed), so `--method all --runtime onnx-int8` still runs the int8
        # slice classifier.
        log.warning("%s: no int8 graph for this model file (covidct export MODEL --int8 "
                    "--calibration DATA makes one); running float32", model.method)
        return float_runtime(runtime)
    return runtime


def to_runtime(model, runtime: str = "onnx", threads: int | None = None,
               onnx_path: str | os.PathLike | None = None):
    """The same model object with its networks running on ``runtime`` ("torch" is a no-op;
    "auto": see :func:`choose_runtime`).

    ``onnx_path``: an exported classifier graph to use (its denoiser graph next to it, the
    int8 graph of the model's ``int8_role`` too for an int8 runtime); otherwise the model is
    exported into the ONNX cache (once per model file; a model not loaded from a file is
    exported to a temporary folder).
    """
    runtime = choose_runtime(model, runtime)
    if runtime == "torch":
        return model
    role, engine = model.int8_role, ENGINES[runtime]
    if onnx_path is not None:
        paths = output_paths(model, onnx_path)
        if is_int8(runtime):
            paths[role] = int8_path(paths[role])
        missing = [p for p in paths.values() if not p.is_file()]
        if missing:
            raise ModelError("exported ONNX graph not found (run covidct export first)", missing[0])
    else:
        paths = _cached_export(model)
        if is_int8(runtime):
            paths[role] = _cached_int8(model, require_pass=False) or _no_int8(model)
    if is_int8(runtime):
        if not passed_check(model, read_parity(paths[role]), engine):
            log.warning("the int8 graph %s did not pass (or has no) parity check against "
                        "float32 on %s; its calls may differ", paths[role].name, engine)
    model.use_networks({role: OnnxNetwork(paths[role], threads, engine=engine)
                        for role in roles(model)}, runtime)
    return model


def _cached_int8(model, require_pass: bool) -> Path | None:
    """The int8 graph `covidct export --int8` cached for this model file (None if there is
    none, or, with ``require_pass``, if its parity check on ONNX Runtime failed)."""
    sha = _model_sha(model)
    if sha is None or not model.int8_role:
        return None
    path = int8_path(output_paths(model, _cache_path(model, sha))[model.int8_role])
    if not path.is_file():
        return None
    if require_pass and not passed_check(model, read_parity(path)):
        return None
    return path


def passed_check(model, record: dict[str, Any] | None, engine: str = "onnxruntime") -> bool:
    """Whether a stored parity record lets ``--runtime auto`` run the int8 graph on
    ``engine``: it passed there (ONNX Runtime's result is the record itself, OpenVINO's its
    ``"openvino"`` entry, present where OpenVINO was installed when the check ran), and for
    CovidCTNet's BCDU-Net it was judged by the rule that checks the maps too (a record of
    the calls-only rule never qualifies: re-run ``covidct export --int8``)."""
    record = record or {}
    judged = record if engine == "onnxruntime" else record.get(engine) or {}
    if not judged.get("passed"):
        return False
    return model.int8_role != "denoiser" or record.get("rule_version") == DENOISER_RULE_VERSION


def _no_int8(model):
    how = ("--calibration TRAIN_SPLIT --images DIR" if model.int8_role == "classifier"
           else "--calibration DATA")
    raise ModelError(f"no int8 graph for this model file: run `covidct export MODEL --int8 "
                     f"{how}` first", (model.file or {}).get("name"))


def _cached_export(model) -> dict[str, Path]:
    sha = _model_sha(model)
    if sha is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="covidct-onnx-"))
        return export_model(model, folder / f"{model.method}.onnx")
    target = _cache_path(model, sha)
    paths = output_paths(model, target)
    if all(p.is_file() for p in paths.values()):
        return paths
    log.info("exporting the %s model to ONNX (once per model file) ...", model.method)
    return export_model(model, target)


def cache_int8(model, int8_graph: str | os.PathLike) -> Path | None:
    """Copy an int8 graph (and its parity record) into the ONNX cache under this model file's
    digest, where `predict --runtime auto/onnx-int8` looks for it; also exports the float
    graphs there. None for a model not loaded from a file."""
    import shutil

    sha = _model_sha(model)
    if sha is None:
        return None
    paths = _cached_export(model)
    target = int8_path(paths[model.int8_role])
    for source, dest in ((parity_path(int8_graph), parity_path(target)), (Path(int8_graph), target)):
        with atomic_path(dest) as tmp:  # the graph last: its presence means both are there
            shutil.copyfile(source, tmp)
    return target
