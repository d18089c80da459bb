"""The BiT slice classifier: timm ResNet-v2 models and the trained-model object.

:func:`create_model` builds a network with one of the paper's initialisations and a zero
head. :class:`SliceClassifier` is what a model file loads into: it holds the network with
everything pre-processing needs, so prediction uses exactly what training used.

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
4. Patient-level result: the mean of the per-slice class probabilities over the scored slices
   (:func:`covidct.metrics.aggregate_by_patient`, rule ``"mean"``, as ``covidct evaluate`` uses
   for patient-level figures on COVIDx).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..checks import require_coverage
from ..constants import METHOD_BIT, SLICE_CLASSES
from ..errors import ModelError
from ..metrics import aggregate_by_patient
from ..prediction import Prediction, Scores
from ..scan import SAFE_METADATA_KEYS, Scan
from ..lungs import LUNG_SLICE_MM2, lung_report, scan_lungs
from ..windowing import COVIDX_LUNG, body_box, get_window
from .data import (COVIDxDataset, EvalTransform, collate, crop_box, find_synthetic_marker,
                   normalize)
from .weights import WeightsSource, load_weights, resolve, zero_head

DEFAULT_ARCH = "resnetv2_50x1_bit"
#: A 4-block BiT-layout ResNet-v2 (GroupNorm + weight standardisation, bottleneck units
#: named as in BiT) of 0.5 M parameters: not in the paper; for tests and quick CPU demos.
TINY_ARCH = "resnetv2_tiny_bit"

#: At most this many lung slices are scored per scan (see the module docstring).
MAX_SLICES = 32


def aggregation_rule(max_slices: int = MAX_SLICES) -> str:
    """The patient-level rule, in words, for prediction outputs."""
    return (f"mean of per-slice class probabilities over the scored lung slices (slices whose "
            f"lung-mask area is >= {LUNG_SLICE_MM2:.0f} mm^2; at most {max_slices}, "
            "evenly spaced)")


# Networks -----------------------------------------------------------------------------

def build_network(arch: str, num_classes: int = len(SLICE_CLASSES)) -> torch.nn.Module:
    """A randomly initialised network by timm name (or :data:`TINY_ARCH`)."""
    import timm

    if arch == TINY_ARCH:
        from timm.layers import GroupNormAct, StdConv2d
        from timm.models.resnetv2 import ResNetV2

        return ResNetV2(layers=[1, 1, 1, 1], channels=(64, 128, 256, 512), stem_chs=32,
                        num_classes=num_classes, stem_type="fixed",
                        conv_layer=partial(StdConv2d, eps=1e-8),
                        norm_layer=partial(GroupNormAct, num_groups=8))
    if not timm.is_model(arch):
        raise ModelError(f"unknown architecture {arch!r}; e.g. resnetv2_50x1_bit, resnetv2_101x1_bit, "
                         f"resnetv2_50x3_bit, or {TINY_ARCH} for quick tests")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def create_model(arch: str = DEFAULT_ARCH, num_classes: int = len(SLICE_CLASSES),
                 init: str | WeightsSource = "random") -> torch.nn.Module:
    """A network with the requested initialisation and a new zero-initialised head (as BiT)."""
    source = init if isinstance(init, WeightsSource) else resolve(init, arch)
    if source.kind == "hub":
        net = _from_hub(source.location, num_classes)
    else:
        net = build_network(arch, num_classes)
        load_weights(net, source)
    zero_head(net)
    return net


def _from_hub(name: str, num_classes: int) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as exc:  # network, hub or cache problems all mean the same to the user
        raise ModelError(f"could not fetch {name} from the model hub ({type(exc).__name__}); "
                         "download the BiT .npz and pass it with --init PATH") from None


# Inference helpers shared by validation, dataset scoring and scan prediction ----------------

@torch.inference_mode()
def infer_logits(net: torch.nn.Module, batches, device: torch.device, amp: bool = False,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every (images, labels) batch, in order."""
    net.eval()
    logits, labels = [], []
    for images, y in batches:
        images = normalize(images, device, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out = net(images)
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(labels)


def _check_materialised(net: torch.nn.Module) -> None:
    """Every parameter and buffer came from the file (none left on the meta device)."""
    missing = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if missing:
        raise RuntimeError(f"no weights for {', '.join(missing[:3])}")


def lung_slices(scan: Scan, max_slices: int = MAX_SLICES) -> tuple[np.ndarray, bool]:
    """Indices of the slices to score, and whether the lung mask found any (see module doc).
    The scan must first pass :func:`covidct.checks.require_coverage` (plausible, lungs found)."""
    require_coverage(scan, METHOD_BIT)
    chosen = scan_lungs(scan).lung_slices()
    found = chosen.size > 0
    if not found:
        chosen = np.arange(scan.n_slices)
    if chosen.size > max_slices:
        chosen = chosen[np.round(np.linspace(0, chosen.size - 1, max_slices)).astype(int)]
    return chosen, found


def _slice_uint8(scan: Scan, k: int) -> np.ndarray:
    if scan.is_hu:
        return COVIDX_LUNG.to_uint8(scan.voxels[k])
    return np.asarray(scan.voxels[k], dtype=np.uint8)


def scan_body_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """:func:`covidct.windowing.body_box` of an 8-bit slice, found at about 256 px for speed.

    The box is scaled back to full resolution (within a pixel or two of the full-size
    result at 512 px, i.e. well under 1% of the field) in a quarter of the time.
    """
    stride = max(1, min(pixels.shape) // 256)
    x0, y0, x1, y1 = body_box(pixels[::stride, ::stride], "windowed", COVIDX_LUNG)
    h, w = pixels.shape
    return (x0 * stride, y0 * stride, min(w - 1, x1 * stride + stride - 1),
            min(h - 1, y1 * stride + stride - 1))


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
    crop_rule: str = "box"
    init: str = "random"
    trained_on: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    file: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    max_slices: int = MAX_SLICES
    method: str = METHOD_BIT

    # Not dataclass fields (no annotation): the PyTorch network once built, and how to build
    # it while it is not (set by from_payload).
    _torch = None
    _build = None

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self._torch = self._torch if self._net is None else self._net
        # A deferred network is built on the CPU, where model files are loaded (map_location).
        self.device = torch.device("cpu") if self._net is None else next(self._net.parameters()).device

    # Saving and loading ------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        """The model file content: tensors, dicts, lists, strings and numbers only."""
        return {
            "arch": self.arch,
            "state_dict": {k: v.detach().cpu() for k, v in self.torch_net.state_dict().items()},
            "class_names": list(self.class_names),
            "window": self.window,
            "resolution": {"resize": self.resize, "crop": self.crop},
            "crop_rule": self.crop_rule,
            "scan_crop_rule": "auto-body",
            "init": self.init,
            "trained_on": self.trained_on,
            "synthetic": bool(self.trained_on.get("synthetic", False)),
            "training": self.training,
            "version": self.version,
        }

    def save(self, path: str | Path) -> Path:
        from ..models import save_model_file

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
                    window=window, crop_rule=record.get("crop_rule", "box"),
                    init=record.get("init", ""), trained_on=record.get("trained_on", {}),
                    training=record.get("training", {}), version=record.get("version", ""),
                    file=record.get("file", {}))
        model._build = partial(_network_from_state, arch, len(class_names), state, where)
        return model

    def to(self, device: str | torch.device) -> "SliceClassifier":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    # Prediction ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"name": METHOD_BIT, "arch": self.arch, "init": self.init,
                "file": self.file.get("name"), "sha256": self.file.get("sha256"),
                "window": self.window, "resolution": [self.resize, self.crop],
                "trained_on": self.trained_on,
                "synthetic": bool(self.trained_on.get("synthetic", False)),
                "version": self.version}

    def predict_pixels(self, slices: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> np.ndarray:
        """Class probabilities (n, C) of 8-bit slices cropped to their boxes."""
        transform = EvalTransform(self.crop)
        tensors = [transform(crop_box(s, b)) for s, b in zip(slices, boxes)]
        batches = [(torch.stack(tensors[i:i + self.batch_size]), torch.zeros(0))
                   for i in range(0, len(tensors), self.batch_size)]
        logits, _ = infer_logits(self.net, batches, self.device)
        return torch.softmax(logits, dim=1).double().numpy()

    def predict(self, scan: Scan) -> Prediction:
        """Per-slice and patient-level probabilities for an axial scan (see the module doc)."""
        if self.window != COVIDX_LUNG.name:
            raise ModelError(f"model was trained with window {self.window!r}; scans are prepared "
                             f"with {COVIDX_LUNG.name!r}", self.file.get("name"))
        scan.require_axial("the BiT slice classifier")
        start = time.perf_counter()
        indices, found = lung_slices(scan, self.max_slices)  # refuses implausible scans
        selected = time.perf_counter()
        pixels = [_slice_uint8(scan, int(k)) for k in indices]
        boxes = [scan_body_box(p) for p in pixels]
        cropped = time.perf_counter()
        probs = self.predict_pixels(pixels, boxes)
        done = time.perf_counter()
        aggregation = aggregation_rule(self.max_slices) if found else (
            "mean of per-slice class probabilities over all slices (no slice passed the "
            "lung-slice rule, so none was excluded)")
        patient = aggregate_by_patient(np.zeros(len(probs), dtype=int), probs, rule="mean").probs[0]
        return Prediction(
            method=METHOD_BIT, class_names=self.class_names, probabilities=patient,
            aggregation=aggregation, slice_probabilities=probs, slice_indices=indices,
            model=self.info(), scan=scan_summary(scan), lungs=lung_report(scan),
            timings={"select_slices": selected - start, "crop": cropped - selected,
                     "inference": done - cropped})

    def score_dataset(self, split_file: str | Path, image_dir: str | Path, batch_size: int = 32,
                      workers: int = 0) -> Scores:
        """Per-slice probabilities on a labelled COVIDx split (for covidct evaluate)."""
        dataset = COVIDxDataset(split_file, image_dir, EvalTransform(self.crop))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                             collate_fn=collate)
        logits, labels = infer_logits(self.net, _progress(loader, "scoring"), self.device)
        return Scores(
            method=METHOD_BIT, class_names=self.class_names, y_true=labels.numpy(),
            y_prob=torch.softmax(logits, dim=1).double().numpy(),
            groups=np.array([r.patient for r in dataset.records]), level="slice",
            items=[r.filename for r in dataset.records],
            provenance={"model": self.info(), "split": str(split_file), "images": str(image_dir),
                        "synthetic": bool(self.trained_on.get("synthetic", False))
                        or find_synthetic_marker(Path(split_file).parent, image_dir)})

    def gradcam_pictures(self, prediction: Prediction, scan: Scan,
                         n_slices: int = 3) -> list[tuple[int, np.ndarray]]:
        """(slice index, RGB picture) of Grad-CAM for the called class on the ``n_slices``
        slices that drove the call most (highest probability of that class)."""
        from ..explain import gradcam_picture, slice_gradcam
        from .data import crop_box

        called = self.class_names.index(prediction.label)
        order = np.argsort(-np.asarray(prediction.slice_probabilities)[:, called], kind="stable")
        lungs = scan_lungs(scan)
        pictures = []
        for row in order[:n_slices]:
            k = int(prediction.slice_indices[row])
            pixels = _slice_uint8(scan, k)
            box = scan_body_box(pixels)
            cam = slice_gradcam(self, pixels, box, class_index=called)
            # The lung outline, so a reader sees whether the heat is in the lung.
            outline = crop_box(lungs.labels[k], box) > 0
            pictures.append((k, gradcam_picture(cam["pixels"], cam["cam"], lungs=outline)))
        return pictures

    def save_pictures(self, prediction: Prediction, scan: Scan, out_dir: str | Path,
                      n_slices: int = 3) -> list[Path]:
        """:meth:`gradcam_pictures` as ``bit-gradcam-<slice>.png`` beside the JSON."""
        from PIL import Image

        from ..atomic import atomic_path

        paths = []
        for k, picture in self.gradcam_pictures(prediction, scan, n_slices):
            path = Path(out_dir) / f"{METHOD_BIT}-gradcam-{k:04d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(picture).save(tmp, format="PNG")
            paths.append(path)
        return paths


def scan_summary(scan: Scan) -> dict[str, Any]:
    """De-identified facts about a scan for prediction outputs."""
    out = {k: scan.metadata[k] for k in SAFE_METADATA_KEYS if k in scan.metadata}
    out["warnings"] = list(out.get("warnings") or [])  # as of this prediction
    out.update(shape=list(scan.shape), spacing_mm=list(scan.spacing), units=scan.units,
               geometry_known=scan.geometry_known, synthetic=scan.synthetic)
    if not scan.is_hu:
        out["input"] = "8-bit picture used as is (assumed lung-windowed like COVIDx CT)"
    return out


def _progress(iterable, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _active_network(self: SliceClassifier) -> torch.nn.Module:
    return self._net if self._net is not None else self.torch_net


def _set_active_network(self: SliceClassifier, net) -> None:
    self._net = net


def _torch_network(self: SliceClassifier) -> torch.nn.Module:
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
