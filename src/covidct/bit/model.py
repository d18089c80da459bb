"""The BiT slice classifier: the trained-model object (:class:`SliceClassifier`).

:class:`SliceClassifier` is what a model file loads into: it holds the network with
everything pre-processing needs, so prediction uses exactly what training used. The
networks (timm ResNet-v2, :func:`.networks.create_model` with one of the paper's
initialisations and a zero head) are built in :mod:`.networks`; the way from a scan to the
slices it reads (slice choice, lung window, body box) is in :mod:`.inputs`.

Prediction on a scan (:meth:`SliceClassifier.predict`):

1. The scan must be axial. HU scans are mapped to 8 bits with the COVIDx lung window
   ([-1350, 150] HU); 8-bit pictures are taken as they are (assumed lung-windowed).
2. Lung slices are chosen from the scan's lung mask (:func:`covidct.lungs.scan_lungs`,
   shared with CovidCTNet): a slice is a lung slice when it holds at least
   ``covidct.lungs.LUNG_SLICE_MM2`` (2 cm^2) of lung. A scan that fails the plausibility
   checks of :mod:`covidct.checks` (no lungs among them) is refused first; when the mask
   finds no lungs in a scan the checks passed, every slice is used and the aggregation
   text says so. Of long series at most ``MAX_SLICES`` (32) evenly spaced
   lung slices are scored: ResNet-v2 50x1 at 480 px scores about 1.2 slices/s on 2 CPU
   cores, so a 300-slice series stays under a minute (set ``max_slices`` for more).
3. Each chosen slice is cropped to its automatic body box (:func:`covidct.windowing.body_box`,
   the counterpart of the COVIDx annotated boxes, found at about 256 px), resized to the model's crop size and
   scored in batches.
4. Patient-level result: the mean of the per-slice class probabilities over the ``scan_k``
   (12) most abnormal scored slices, those least likely Normal
   (:func:`covidct.metrics.aggregate_by_patient`, rule ``"topk"``); model files saved before
   ``scan_rule`` existed keep the mean over all scored slices. ``covidct evaluate`` on COVIDx
   splits averages all of a patient's labelled slices (rule ``"mean"``): those are the slices
   with findings, where a series is mostly slices without.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_path
from ..constants import METHOD_BIT, SLICE_CLASSES
from ..devices import cpu_state
from ..errors import ModelError
from ..explain.features import dataset_features
from ..explain.gradcam import gradcam_picture, slice_gradcam
from ..explain.localisation import gradcam_localisation
from ..explain.run import write_gradcam_gallery
from ..export import fold_weight_standardization
from ..metrics import aggregate_by_patient
from ..metrics.aggregate import RULES
from ..models import save_model_file
from ..prediction import Prediction, Scores
from ..progress import inner_bar
from ..scan import Scan
from ..lungs import lung_report, scan_lungs
from ..windowing import COVIDX_LUNG, get_window
from .settings import check_crop_rule, check_rewindow
from .slice_data import (COVIDxDataset, EvalTransform, collate, crop_box, find_synthetic_marker,
                         input_box)
# Re-exported: model files, scripts and tests name them from here.
from .inputs import (MAX_SLICES, aggregation_rule, covidx_split, lung_slices,  # noqa: F401
                     scan_body_box, scan_summary, slice_pixels)
from .networks import (DEFAULT_ARCH, TINY_ARCH, _check_materialised, build_network,  # noqa: F401
                       create_model, infer_logits)

__all__ = ["SliceClassifier", "DEFAULT_ARCH", "TINY_ARCH", "MAX_SLICES", "aggregation_rule",
           "build_network", "create_model", "infer_logits", "lung_slices", "scan_body_box",
           "scan_summary", "slice_pixels", "covidx_split"]

# The trained model --------------------------------------------------------------------

@dataclass
class SliceClassifier:
    """A trained BiT slice classifier with its pre-processing (what a model file holds).

    ``net`` is the network prediction runs: the PyTorch one, or an ONNX Runtime stand-in
    after :func:`covidct.export.to_runtime`; ``torch_net`` is always the PyTorch one
    (Grad-CAM, export). A classifier loaded from its file builds its PyTorch network on
    first use: building it imports timm, and with it torchvision and torch._dynamo (2.5-4 s
    of CPU), which prediction on ONNX Runtime from an already exported graph never needs.
    """

    net: torch.nn.Module | None = field(repr=False, compare=False)
    arch: str
    resize: int
    crop: int
    class_names: tuple[str, ...] = SLICE_CLASSES
    window: str = COVIDX_LUNG.name
    #: The window the network reads its 8-bit lung-window slices in (None: as they are);
    #: covidct.bit.slice_data.EvalTransform applies it, so every reader does the same.
    rewindow: str | None = None
    #: "box": the body box; "lungs": the lungs' box inside it (settings.CROP_RULES).
    crop_rule: str = "box"
    #: A series' call: the mean of its ``scan_k`` most abnormal scored slices (least likely
    #: Normal; covidct.metrics.aggregate rule "topk"). Most lung slices of a sick patient show
    #: no lesion, and the mean of them all called Normal: on a development cohort of 60
    #: SYNTHETIC series 0.59 of patients right with the mean, 0.79 with k = 12 of 32 (a
    #: plateau from 8 to 20; DEMO.md "Tenth round"). Files saved before this setting keep
    #: the mean ("mean"), the rule they were checked with.
    scan_rule: str = "topk"
    scan_k: int = 12
    init: str = "random"
    trained_on: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    file: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    max_slices: int = MAX_SLICES
    method: str = METHOD_BIT
    #: Where the network runs (covidct.export.to_runtime changes it).
    runtime: str = "torch"
    #: Its explanation pictures (covidct.models.Model.overlay).
    overlay: str = "gradcam"
    #: ``covidct export --int8`` quantizes this classifier; ``--runtime auto`` uses it once
    #: its parity check passed (covidct.models.Model.int8_role).
    int8_role: str | None = "classifier"
    int8_auto: bool = True
    #: BiT's int8 graph beat float32 on AVX2 too (1.10x; 2.32x with AVX-512; BENCHMARKS.md).
    int8_needs_fast_cpu: bool = False
    #: How the web page shows it (covidct.models.Model.display).
    display: ClassVar[dict[str, str]] = {
        "title": "slice classifier", "overlay_label": "Grad-CAM (slice classifier)",
        "strip_label": "slice classifier COVID-19 probability (grey: slice not scored)",
        "strip_scale": "probability", "colour": "192,57,43"}

    # Not dataclass fields (no annotation): the PyTorch network once built, and how to build
    # it while it is not (set by from_payload).
    _torch = None
    _build = None
    _pending = None  # the network being built in the background (prepare_pictures)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self._torch = self._torch if self._net is None else self._net
        # A deferred network is built on the CPU, where model files are loaded (map_location).
        self.device = torch.device("cpu") if self._net is None else next(self._net.parameters()).device
        #: The window named by ``window``: what pre-processing turns HU into 8 bits with.
        self.window_spec = get_window(self.window)
        check_rewindow(self.rewindow, self.file.get("name"), ModelError)
        check_crop_rule(self.crop_rule, self.file.get("name"), ModelError)
        if self.scan_rule not in RULES or int(self.scan_k) < 1:
            raise ModelError(f"scan_rule must be one of {', '.join(RULES)} and scan_k at least 1",
                             self.file.get("name"))

    # Saving and loading ------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        """The model file content: tensors, dicts, lists, strings and numbers only."""
        return {
            "arch": self.arch,
            "state_dict": cpu_state(self.torch_net),
            "class_names": list(self.class_names),
            "window": self.window,
            "rewindow": self.rewindow,
            "resolution": {"resize": self.resize, "crop": self.crop},
            "crop_rule": self.crop_rule,
            "scan_crop_rule": "auto-body" if self.crop_rule == "box" else "auto-body-lungs",
            "scan_rule": self.scan_rule,
            "scan_k": self.scan_k,
            "init": self.init,
            "trained_on": self.trained_on,
            "synthetic": bool(self.trained_on.get("synthetic", False)),
            "training": self.training,
            "version": self.version,
        }

    def save(self, path: str | Path) -> Path:
        return save_model_file(path, METHOD_BIT, self.payload())

    @classmethod
    def from_payload(cls, record: dict[str, Any]) -> "SliceClassifier":
        where = (record.get("file") or {}).get("name")
        try:
            arch, state = record["arch"], record["state_dict"]
            resize, crop = int(record["resolution"]["resize"]), int(record["resolution"]["crop"])
            class_names = tuple(record["class_names"])
            window = record["window"]
        except (KeyError, TypeError) as exc:
            raise ModelError(f"bit model file lacks {exc}", where) from None
        get_window(window)
        model = cls(net=None, arch=arch, resize=resize, crop=crop, class_names=class_names,
                    window=window, rewindow=record.get("rewindow"),
                    crop_rule=record.get("crop_rule", "box"),
                    scan_rule=record.get("scan_rule", "mean"),
                    scan_k=int(record.get("scan_k", cls.scan_k)),
                    init=record.get("init", ""), trained_on=record.get("trained_on", {}),
                    training=record.get("training", {}),
                    version=record.get("version") or record.get("covidct_version") or "",
                    file=record.get("file", {}))
        model._build = partial(_network_from_state, arch, len(class_names), state, where)
        return model

    def prepare_pictures(self) -> None:
        """Start building the PyTorch network that Grad-CAM needs, in a background thread, if
        it is not built yet (a model on ONNX Runtime builds it on first use). In a cold
        `covidct predict` timm's import and the network took about 2 s after the prediction,
        with one of two cores idle; begun before it, the pictures find the network ready."""
        if self._torch is None and self._build is not None and self._pending is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1, thread_name_prefix="covidct-build")
            self._pending, self._build = pool.submit(self._build), None
            pool.shutdown(wait=False)

    def to(self, device: str | torch.device) -> "SliceClassifier":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    # Runtimes and export (covidct.export) ---------------------------------------------

    def networks(self) -> dict[str, tuple[torch.nn.Module, tuple[int, ...], dict[int, str]]]:
        return {"classifier": (fold_weight_standardization(self.torch_net),
                               (1, 3, self.crop, self.crop), {0: "batch"})}

    def network_roles(self) -> tuple[str, ...]:
        return ("classifier",)

    def export_metadata(self) -> dict[str, Any]:
        return {"covidct_source": self.file, "covidct_window": self.window,
                "covidct_input": "8-bit lung-window slice cropped to its "
                                 + ("body box, " if self.crop_rule == "box" else "lungs' box, ")
                                 + (f"re-windowed to {self.rewindow}, " if self.rewindow else "")
                                 + f"resized to {self.crop}x{self.crop}, x/127.5-1, repeated to "
                                 "3 channels"}

    def use_networks(self, swapped: dict[str, Any], runtime: str) -> None:
        """Score on ``swapped["classifier"]``; Grad-CAM keeps :attr:`torch_net` (the same
        weights), since ONNX Runtime gives no gradients."""
        self.net = swapped["classifier"]
        self.device = next(self.net.parameters()).device
        self.runtime = runtime

    def use_cache(self, folder: str | Path | None) -> None:
        """Nothing to keep: slices are pre-processed in milliseconds."""

    # Prediction ---------------------------------------------------------------------

    def input_box(self, pixels: np.ndarray, box: Sequence[int]) -> tuple[int, int, int, int]:
        """The box this network reads of an 8-bit slice whose body box is ``box`` (the split
        file's or the scan's automatic one), by its ``crop_rule``."""
        return input_box(pixels, box, self.crop_rule)

    def scan_box(self, pixels: np.ndarray) -> tuple[int, int, int, int]:
        """:meth:`input_box` of a scan slice, from its automatic body box."""
        return self.input_box(pixels, scan_body_box(pixels, self.window_spec))

    def dataset(self, split_file: str | Path, image_dir: str | Path) -> COVIDxDataset:
        """A labelled COVIDx split as this network reads it (crop rule, transform)."""
        return COVIDxDataset(split_file, image_dir, self.eval_transform(), crop_rule=self.crop_rule)

    def eval_transform(self) -> EvalTransform:
        """A cropped 8-bit slice to the network's input, as in training (evaluation, Grad-CAM,
        features and int8 calibration all read through it)."""
        return EvalTransform(self.crop, self.rewindow)

    def describe(self) -> dict[str, Any]:
        """Model provenance for a Prediction (no patient data; covidct.models.Model.describe)."""
        return {"name": METHOD_BIT, "method": self.method, "file": dict(self.file),
                "covidct_version": self.version, "class_names": list(self.class_names),
                "arch": self.arch, "init": self.init, "window": self.window,
                "rewindow": self.rewindow, "crop_rule": self.crop_rule,
                "resolution": [self.resize, self.crop], "trained_on": self.trained_on,
                "synthetic": bool(self.trained_on.get("synthetic", False))}

    def pixels(self, scan: Scan, k: int) -> np.ndarray:
        """Scan slice ``k`` as this model reads it: 8-bit, lung window for HU scans."""
        return slice_pixels(scan.voxels[k], scan.is_hu, self.window_spec)

    def predict_pixels(self, slices: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> np.ndarray:
        """Class probabilities (n, C) of 8-bit slices cropped to their boxes."""
        transform = self.eval_transform()
        tensors = [transform(crop_box(s, b)) for s, b in zip(slices, boxes)]
        batches = [(torch.stack(tensors[i:i + self.batch_size]), torch.zeros(0))
                   for i in range(0, len(tensors), self.batch_size)]
        logits, _ = infer_logits(self.net, batches, self.device)
        return torch.softmax(logits, dim=1).double().numpy()

    def predict(self, scan: Scan) -> Prediction:
        """Per-slice and patient-level probabilities for an axial scan (see the module doc)."""
        # 8-bit pictures come in the COVIDx lung window; a model trained in another window
        # could read HU scans only, so it is refused rather than fed pictures it never saw.
        if self.window_spec is not COVIDX_LUNG:
            raise ModelError(f"model was trained with window {self.window!r}; scans are prepared "
                             f"with {COVIDX_LUNG.name!r}", self.file.get("name"))
        scan.require_axial("the BiT slice classifier")
        start = time.perf_counter()
        indices, found = lung_slices(scan, self.max_slices)  # refuses implausible scans
        selected = time.perf_counter()
        pixels = [self.pixels(scan, int(k)) for k in indices]
        boxes = [self.scan_box(p) for p in pixels]
        cropped = time.perf_counter()
        probs = self.predict_pixels(pixels, boxes)
        done = time.perf_counter()
        aggregation = aggregation_rule(self.max_slices, self.scan_rule, self.scan_k, found)
        patient = aggregate_by_patient(np.zeros(len(probs), dtype=int), probs, rule=self.scan_rule,
                                       k=self.scan_k).probs[0]
        return Prediction(
            method=METHOD_BIT, class_names=self.class_names, probabilities=patient,
            aggregation=aggregation, slice_probabilities=probs, slice_indices=indices,
            model=self.describe(), scan=scan_summary(scan), lungs=lung_report(scan),
            timings={"select_slices": selected - start, "crop": cropped - selected,
                     "inference": done - cropped})

    def score_dataset(self, split_file: str | Path, image_dir: str | Path, batch_size: int = 32,
                      workers: int = 0) -> Scores:
        """Per-slice probabilities on a labelled COVIDx split (for covidct evaluate)."""
        dataset = self.dataset(split_file, image_dir)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                             collate_fn=collate)
        logits, labels = infer_logits(self.net, inner_bar(loader, "scoring", "batch"), self.device)
        return Scores(
            method=METHOD_BIT, class_names=self.class_names, y_true=labels.numpy(),
            y_prob=torch.softmax(logits, dim=1).double().numpy(),
            groups=np.array([r.patient for r in dataset.records]), level="slice",
            items=[r.filename for r in dataset.records],
            provenance={"model": self.describe(), "split": str(split_file), "images": str(image_dir),
                        "synthetic": bool(self.trained_on.get("synthetic", False))
                        or find_synthetic_marker(Path(split_file).parent, image_dir)})

    def gradcam_pictures(self, prediction: Prediction, scan: Scan,
                         n_slices: int = 3) -> list[tuple[int, np.ndarray]]:
        """(slice index, RGB picture) of Grad-CAM for the called class on the ``n_slices``
        slices that drove the call most (highest probability of that class)."""
        called = self.class_names.index(prediction.label)
        order = np.argsort(-np.asarray(prediction.slice_probabilities)[:, called], kind="stable")
        lungs = scan_lungs(scan)
        pictures = []
        for row in order[:n_slices]:
            k = int(prediction.slice_indices[row])
            pixels = self.pixels(scan, k)
            box = self.scan_box(pixels)
            cam = slice_gradcam(self, pixels, box, class_index=called)
            # The lung outline, so a reader sees whether the heat is in the lung.
            outline = crop_box(lungs.labels[k], box) > 0
            pictures.append((k, gradcam_picture(cam["pixels"], cam["cam"], lungs=outline)))
        return pictures

    def save_pictures(self, prediction: Prediction, scan: Scan, out_dir: str | Path,
                      n_slices: int = 3) -> list[Path]:
        """:meth:`gradcam_pictures` as ``bit-gradcam-<slice>.png`` beside the JSON."""
        from PIL import Image

        paths = []
        for k, picture in self.gradcam_pictures(prediction, scan, n_slices):
            path = Path(out_dir) / f"{METHOD_BIT}-gradcam-{k:04d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(picture).save(tmp, format="PNG")
            paths.append(path)
        return paths

    def scan_maps(self, prediction: Prediction, scan: Scan) -> dict[str, np.ndarray]:
        return {}  # Grad-CAM is per slice, drawn on demand

    def key_pictures(self, prediction: Prediction, scan: Scan, n: int,
                     scan_maps: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        return self.gradcam_pictures(prediction, scan, n)

    def slice_heat(self, values: np.ndarray, is_hu: bool, class_index: int) -> np.ndarray:
        """Grad-CAM of ``class_index`` on one scan slice (HU, or 8-bit when not ``is_hu``),
        pre-processed as :meth:`predict` does (lung window, body box), returned on the
        slice's own grid in [0, 1] (zero outside the box): the web viewer's overlay."""
        pixels = slice_pixels(values, is_hu, self.window_spec)
        box = self.scan_box(pixels)
        cam = slice_gradcam(self, pixels, box, class_index=class_index)["cam"]
        x0, y0, x1, y1 = box
        full = np.zeros(pixels.shape, dtype=np.float32)
        full[y0:y1 + 1, x0:x1 + 1] = cam
        return full

    def slice_scores(self, prediction: Prediction) -> list[float | None]:
        """Per scan slice, the COVID-19 (last class) probability of the lung slices scored."""
        scores: list[float | None] = [None] * int(prediction.scan["shape"][0])
        for k, p in zip(prediction.slice_indices, prediction.slice_probabilities):
            scores[int(k)] = float(p[-1])
        return scores

    def viewer_arrays(self, prediction: Prediction) -> dict[str, np.ndarray]:
        return {}  # Grad-CAM is drawn from the slice itself (slice_heat)

    # Evaluation (covidct.evaluation, covidct.explain) ---------------------------------

    def score(self, data: str | Path, split: str = "test") -> Scores:
        """:meth:`score_dataset` on a COVIDx-layout folder (or one split file)."""
        split_file, image_dir = covidx_split(data, split, check=True)
        return self.score_dataset(split_file, image_dir)

    def localise(self, data: str | Path, split: str, scores: Scores,
                 out_dir: str | Path | None = None) -> dict[str, Any] | None:
        return gradcam_localisation(self, *covidx_split(data, split), scores)

    def write_gallery(self, data: str | Path, split: str, scores: Scores, cases,
                      out_dir: Path) -> dict[str, Any]:
        split_file, image_dir = covidx_split(data, split)
        return write_gradcam_gallery(self, split_file, image_dir, scores, cases, out_dir)

    def features(self, data: str | Path, split: str, max_items: int, seed: int) -> dict[str, np.ndarray]:
        split_file, image_dir = covidx_split(data, split)
        return dataset_features(self, split_file, image_dir, max_items=max_items, seed=seed)


def _active_network(self: SliceClassifier) -> torch.nn.Module:
    return self._net if self._net is not None else self.torch_net


def _set_active_network(self: SliceClassifier, net) -> None:
    self._net = net


def _torch_network(self: SliceClassifier) -> torch.nn.Module:
    if self._pending is not None:  # begun by prepare_pictures; its errors surface here
        self._torch, self._pending = self._pending.result(), None
    if self._torch is None and self._build is not None:
        self._torch, self._build = self._build(), None
    return self._torch


def _set_torch_network(self: SliceClassifier, net) -> None:
    self._torch = net


# Properties set after the dataclass is made, so that its generated __init__ assigns through them.
SliceClassifier._net = None
SliceClassifier.net = property(_active_network, _set_active_network,
                               doc="The network prediction runs (see the class doc).")
SliceClassifier.torch_net = property(_torch_network, _set_torch_network,
                                     doc="The PyTorch network, built on first use.")


def _network_from_state(arch: str, num_classes: int, state: dict[str, Any],
                        where: str | None) -> torch.nn.Module:
    """The network of a model file: built without memory on the meta device, then given the
    file's tensors (a random initialisation that the weights overwrite took 5 s of a
    BiT-R50x1's load)."""
    with torch.device("meta"):
        net = build_network(arch, num_classes)
    try:
        net.load_state_dict(state, assign=True)
        _check_materialised(net)
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit {arch}: {str(exc).splitlines()[0]}", where) from None
    return net.eval()
