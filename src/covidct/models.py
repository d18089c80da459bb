"""The public model interface: what a model is (:class:`Model`), one file per trained model,
and one place that finds and loads them for both methods.

A model file is a ``torch.save``d dict that carries everything prediction needs:
architecture, weights, class names, the intensity window, input resolution, crop rule,
a summary of the training data (synthetic or not) and the covidct version. Prediction can
therefore never apply a different pre-processing than training did.

:func:`load_model` (``runtime=``, ``threads=``) reads one file; :func:`find_model`,
:func:`find_models` and :func:`load_models` find ``<dir>/<method>.pt`` in ``--model(s)``,
``$COVIDCT_MODELS`` or the demo's models. The method's own module is imported only when its
file is read (``_LOADERS``), so ``covidct --help`` never imports torch.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

from . import __version__
from .atomic import atomic_path, remove_stale_parts
from .constants import METHODS
from .digest import sha256_file
from .errors import ModelError

MODEL_FORMAT = "covidct-model"
MODEL_FORMAT_VERSION = 1

#: method -> "module:callable" building a model object from the loaded payload.
_LOADERS = {
    "bit": "covidct.bit.model:SliceClassifier.from_payload",
    "covidctnet": "covidct.covidctnet.pipeline:CovidCTNet.from_payload",
}


class Model(Protocol):
    """What every trained covidct model is, whatever its method (the one interface callers use).

    :class:`covidct.bit.model.SliceClassifier` (method ``bit``) and
    :class:`covidct.covidctnet.pipeline.CovidCTNet` (method ``covidctnet``) implement it. Code
    outside a method's own package uses only these names, never asks which method it
    holds, and gets every result in the scan's own geometry (slice indices of the scan, maps
    per scan slice), so it never retraces a method's pre-processing.
    """

    #: ``constants.METHODS``: what the model files, the CLI and the outputs call the method.
    method: str
    class_names: tuple[str, ...]
    #: ``{"name", "sha256"}`` (first 16 hex digits) of the model file it was loaded from;
    #: empty for a model that was never saved. Keys the ONNX cache.
    file: dict[str, Any]
    #: Where its networks run: ``"torch"`` or one of covidct.export.ENGINES's runtimes.
    runtime: str
    #: Name of its explanation pictures: the evaluation gallery's folder and the web viewer's
    #: overlay (``"gradcam"`` for the slice classifier, ``"infection"`` for CovidCTNet).
    overlay: str
    #: How the web page shows it, so the page never asks which method it holds: ``title``,
    #: ``overlay_label`` (the overlay menu), ``strip_label`` and ``strip_scale`` of its per-slice
    #: scores (``"probability"``: drawn as is; ``"relative"``: scaled to the scan's highest
    #: slice) and ``colour`` ("r,g,b").
    display: dict[str, str]
    #: The network ``covidct export --int8`` quantizes (a role of :meth:`networks`:
    #: ``"classifier"`` for the slice classifier, ``"denoiser"`` for CovidCTNet's BCDU-Net;
    #: None: none), and whether ``--runtime auto`` runs that int8 graph once its parity check
    #: passed (``int8_auto``; else only ``--runtime onnx-int8`` does), and whether auto needs
    #: a CPU with wide int8 instructions for it as well (``int8_needs_fast_cpu``, see
    #: covidct.devices.int8_is_fast: where int8 is slower than float32, auto keeps float32).
    int8_role: str | None
    int8_auto: bool
    int8_needs_fast_cpu: bool

    def describe(self) -> dict[str, Any]:
        """Provenance without patient data: ``name``, ``method``, ``file`` (a dict as above),
        ``covidct_version``, ``class_names``, ``trained_on``, ``synthetic`` and the method's
        own settings. It is ``Prediction.model`` and the ``model`` of evaluation outputs."""
        ...

    def predict(self, scan: Any) -> Any:
        """A :class:`covidct.prediction.Prediction` for one checked scan; ``ScanError`` when
        the method cannot read it (too few slices, too little lung, ...)."""
        ...

    def score(self, data: Any, split: str = "test") -> Any:
        """:class:`covidct.prediction.Scores` on one split of a labelled dataset in the layout
        the method reads (COVIDx split file + images, or a volume cohort)."""
        ...

    def localise(self, data: Any, split: str, scores: Any, out_dir: Any = None) -> dict[str, Any] | None:
        """Its explanations scored against a synthetic cohort's lesion masks (None without them)."""
        ...

    def networks(self) -> dict[str, tuple[Any, tuple[int, ...], dict[int, str]]]:
        """role -> (torch module, example input shape, dynamic axes) of what ONNX export writes;
        roles are ``"classifier"`` and, for a CovidCTNet with one, ``"denoiser"``."""
        ...

    def network_roles(self) -> tuple[str, ...]:
        """The roles of :meth:`networks` without building their export copies."""
        ...

    def export_metadata(self) -> dict[str, Any]:
        """What a reader of its exported graphs needs to feed them (no patient data)."""
        ...

    def to(self, device: Any) -> "Model":
        """Move its PyTorch networks to ``device`` (a torch device or its name); returns itself."""
        ...

    def use_networks(self, swapped: dict[str, Any], runtime: str) -> None:
        """Run on ``swapped`` (role -> module callable like the torch one) from now on; what
        needs gradients (Grad-CAM) keeps the PyTorch networks."""
        ...

    def use_cache(self, folder: Any) -> None:
        """Keep intermediate arrays in ``folder`` (None: nowhere that outlives the process).
        A no-op for a method without intermediates worth keeping."""
        ...

    def prepare_pictures(self) -> None:
        """Start, in the background, what only its pictures need (the slice classifier on ONNX
        Runtime: the PyTorch network Grad-CAM reads), so that it overlaps with prediction. A
        no-op for a method whose pictures need nothing more."""
        ...

    def save_pictures(self, prediction: Any, scan: Any, out_dir: Any) -> list[Path]:
        """Its explanation pictures for one prediction, as PNG files beside the JSON."""
        ...

    def scan_maps(self, prediction: Any, scan: Any) -> dict[str, Any]:
        """Its maps resampled onto the scan's own (z, y, x) voxel grid, float32 (CovidCTNet's
        ``"infection"``, which DICOM SEG segments); empty when it has none."""
        ...

    def key_pictures(self, prediction: Any, scan: Any, n: int,
                     scan_maps: dict[str, Any]) -> list[tuple[int, Any]]:
        """(scan slice index, RGB picture) of up to ``n`` slices that drove the call
        (DICOM key images); ``scan_maps`` is what :meth:`scan_maps` gave."""
        ...

    def write_gallery(self, data: Any, split: str, scores: Any, cases: Any, out_dir: Path) -> dict[str, Any]:
        """Explanation pictures of chosen evaluation cases into ``out_dir`` (covidct explain)."""
        ...

    def features(self, data: Any, split: str, max_items: int, seed: int) -> dict[str, Any]:
        """Penultimate-layer features of a split: features, labels, groups, items."""
        ...

    def slice_scores(self, prediction: Any) -> list[float | None] | None:
        """Per scan slice, in [0, 1], what drove the call (None where the model did not look;
        None overall when it has no such score)."""
        ...

    def viewer_arrays(self, prediction: Any) -> dict[str, Any]:
        """Arrays, one row per scan slice, from which its overlay is drawn on scan slices
        later (the infection map per scan slice); empty when the overlay is computed from
        the slice itself (Grad-CAM, see ``SliceClassifier.slice_heat``)."""
        ...


def save_model_file(path: str | os.PathLike, method: str, payload: dict[str, Any]) -> Path:
    import torch

    if method not in METHODS:
        raise ModelError(f"unknown method {method!r}; known: {', '.join(METHODS)}", path)
    record = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
              "method": method, "covidct_version": __version__, **payload}
    remove_stale_parts(path)
    with atomic_path(path, durable=True) as tmp:
        torch.save(record, tmp)
    return Path(path)


def read_record(path: str | os.PathLike, fmt: str, missing: str, unreadable: str,
                wrong: str) -> dict[str, Any]:
    """A torch-saved dict whose ``format`` is ``fmt`` (model and denoiser files), or a
    ModelError with the given wording naming the file."""
    import torch  # lazy: keeps torch off `covidct --help`

    path = Path(path)
    if not path.is_file():
        raise ModelError(missing, path)
    try:
        # weights_only: a file from elsewhere must not be able to run code on load.
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{unreadable} ({type(exc).__name__})", path) from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise ModelError(wrong, path)
    return record


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    record = read_record(path, MODEL_FORMAT, "model file not found",
                         "not a readable covidct model file",
                         "not a covidct model file (no covidct-model header)")
    if record.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise ModelError("model file was written by a newer covidct; upgrade covidct", path)
    if record.get("method") not in _LOADERS:
        raise ModelError(f"unknown method {record.get('method')!r} in model file", path)
    record["file"] = {"name": path.name, "sha256": sha256_file(path)[:16]}
    return record


def load_model(path: str | os.PathLike, runtime: str = "torch", threads: int | None = None) -> Model:
    """Load a trained covidct model (either method) from its single file.

    ``runtime``: where its networks run, one of :data:`covidct.export.RUNTIME_CHOICES`
    (``"auto"``, ``"onnx"``: ONNX Runtime with ``threads`` intra-op threads, see
    :func:`covidct.export.to_runtime`).
    """
    record = read_model_file(path)
    module_name, attr = _LOADERS[record["method"]].split(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    model = target(record)
    if runtime != "torch":
        # lazy: imports torch, numpy, which this module does not need on import
        from .export import to_runtime  # onnxruntime only when asked for

        model = to_runtime(model, runtime, threads)
    return model


# Finding model files -------------------------------------------------------------------------

#: Where trained models are looked up when none is named: $COVIDCT_MODELS, else the
#: models the demo trains.
DEFAULT_MODEL_DIRS = ("demo-output/models",)


def model_dirs() -> list[Path]:
    env = os.environ.get("COVIDCT_MODELS")
    return [Path(env)] if env else [Path(d) for d in DEFAULT_MODEL_DIRS]


def find_model(method: str, search: Sequence[str | os.PathLike] | None = None) -> Path:
    """The model file for ``method`` (``<dir>/<method>.pt``) in the first folder that has one."""
    dirs = [Path(d) for d in search] if search else model_dirs()
    for folder in dirs:
        candidate = folder / f"{method}.pt"
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in dirs)
    raise ModelError(f"no trained {method} model found in {where}; pass --model FILE "
                     "(train one with covidct train-bit/train-covidctnet, or run make demo)")


def find_models(folder: str | os.PathLike | None = None) -> list[Path]:
    """Every method's model file in ``folder`` (or the default folders); none is an error."""
    search = [folder] if folder else None
    found = []
    for method in METHODS:
        try:
            found.append(find_model(method, search))
        except ModelError:
            continue
    if not found:
        where = folder or ", ".join(str(d) for d in model_dirs())
        raise ModelError(f"no trained model (bit.pt or covidctnet.pt) in {where}; pass --models DIR "
                         "(train one with covidct train-bit/train-covidctnet, or run make demo)")
    return found


class LoadedModels(list):
    """The models :func:`load_models` loaded; ``concurrent``: they were given a share of the
    cores each, so that :func:`covidct.predict.predict` runs them on a scan at the same time."""

    def __init__(self, items=(), concurrent: bool = False):
        super().__init__(items)
        self.concurrent = concurrent


def thread_share(n_models: int, threads: int | None = None) -> int:
    """ONNX Runtime threads per model when ``n_models`` run at once on ``threads`` (default:
    PyTorch's, i.e. the cores) in all."""
    import torch  # lazy: keeps torch off `covidct --help`

    return max(1, (threads or torch.get_num_threads()) // max(1, n_models))


def load_models(methods: Sequence[str], paths: Sequence[str | os.PathLike] = (),
                search: Sequence[str | os.PathLike] | None = None, runtime: str = "torch",
                threads: int | None = None, concurrent: bool = False) -> LoadedModels:
    """Models from explicit files, else the default file of each requested method.

    ``concurrent`` (ONNX Runtime only): the models split ``threads`` (default: the cores)
    between them and predict at the same time. One network on one thread each runs faster
    than both networks one after the other on every core (BENCHMARKS.md row 1: 116% against
    77% of the matmul peak), the two methods cost about the same, and ONNX Runtime gives
    the same numbers on any thread count (tests/test_predict_concurrent.py).
    """
    if not paths:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ModelError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        paths = [find_model(m, search) for m in methods]
    concurrent = concurrent and runtime != "torch" and len(paths) > 1
    if concurrent:
        threads = thread_share(len(paths), threads)
    models = [load_model(p, runtime, threads) for p in paths]
    # "auto" falls back to PyTorch without onnxruntime: those run one after the other.
    return LoadedModels(models, concurrent and all(m.runtime != "torch" for m in models))

