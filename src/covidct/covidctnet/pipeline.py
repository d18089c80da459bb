"""The trained CovidCTNet: pre-processing, frozen BCDU-Net, 3D CNN, in one object and one file.

``CovidCTNet.predict(scan)`` is what ``covidct predict --method covidctnet`` runs;
``score_dataset`` is what ``covidct evaluate`` runs; ``save`` writes the single model file
that ``covidct.models.load_model`` reads back through ``CovidCTNet.from_payload``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import require_lung_extent
from ..constants import METHOD_COVIDCTNET, VOLUME_CLASSES
from ..devices import cpu_state
from ..digest import file_digest
from ..errors import ModelError
from ..explain.infection_pictures import normalised_map
from ..explain.localisation import infection_localisation
from ..explain.run import scan_features, write_infection_gallery
from ..models import save_model_file
from ..prediction import Prediction, Scores
from ..scan import Scan
from ..lungs import MAP_THRESHOLD, _percent, lung_report, mask_rule, scan_lungs
from ..scanio import load_scan
from .cache import ArrayCache, scan_digest, weights_digest
from .volume_data import load_cohort
from .infection_maps import infection_map, map_to_scan_grid, network_batch, with_volume
from .mapback import map_on_scan_slices
from .preprocess import check_scan, lung_grid, preprocess_volume, resize_depth
from .settings import INPUT_BOTH, INPUT_INFECTION, INPUT_VOLUME, VolumeSettings

log = logging.getLogger(__name__)

#: ``Prediction.maps`` key of the infection map per scan slice (:func:`.mapback.map_on_scan_slices`).
INFECTION_ON_SCAN = INPUT_INFECTION + "_on_scan"
#: Class names of a COVID-vs-rest (``--binary``) model.
BINARY_CLASSES = ("non-COVID-19", "COVID-19")
#: How a prediction's aggregation text names what the 3D CNN read.
_INPUT_NAMES = {INPUT_INFECTION: "infection map", INPUT_VOLUME: "volume",
                INPUT_BOTH: "infection map and CT (two channels)"}


class CovidCTNet:
    """Pre-processing settings + frozen BCDU-Net denoiser + 3D CNN classifier."""

    method = METHOD_COVIDCTNET
    #: Its explanation pictures (covidct.models.Model.overlay).
    overlay = INPUT_INFECTION
    #: ``covidct export --int8`` (and train-covidctnet at its end) quantizes its BCDU-Net
    #: (covidct.quantize); ``--runtime auto`` runs it once its check passed, which judges
    #: the infection map inside the lungs as well as the call (a map is more than a call).
    int8_role = "denoiser"
    int8_auto = True
    #: Only on a CPU with wide int8 instructions: BCDU-Net's int8 graph ran 0.89x float32 on
    #: an AVX2-only CPU (2.13x with AVX-512; BENCHMARKS.md).
    int8_needs_fast_cpu = True
    #: How the web page shows it (covidct.models.Model.display).
    display = {"title": "CovidCTNet", "overlay_label": "infection map (CovidCTNet)",
               "strip_label": "CovidCTNet infection burden (relative)",
               "strip_scale": "relative", "colour": "230,126,34"}

    def __init__(self, classifier, denoiser, settings: VolumeSettings,
                 class_names: tuple[str, ...] = VOLUME_CLASSES,
                 training: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 cache: ArrayCache | None = None):
        if settings.reads_map and denoiser is None:
            raise ModelError("a CovidCTNet reading infection maps needs its BCDU-Net denoiser")
        self.classifier = classifier.eval()
        self.denoiser = None if denoiser is None else denoiser.eval()
        self.settings = settings
        self.class_names = tuple(class_names)
        self.training = dict(training or {})
        self.info = dict(info or {})
        self.cache = ArrayCache.default() if cache is None else cache
        #: Where the networks run (covidct.export.to_runtime changes it).
        self.runtime = "torch"
        self._denoiser_digest: str | None = None
        self._file_digests: dict[str, str] = {}

    # -- the model file ---------------------------------------------------------------

    @classmethod
    def build(cls, settings: VolumeSettings, class_names=VOLUME_CLASSES, denoiser=None,
              **kwargs) -> "CovidCTNet":
        """A fresh (untrained) 3D CNN around an existing denoiser."""
        # lazy: imports torch, which this module does not need on import
        from .cnn3d import build_cnn

        return cls(build_cnn(len(class_names), settings.volume_shape, settings.cnn_norm,
                             settings.cnn_members, settings.channels), denoiser, settings,
                   tuple(class_names), **kwargs)

    @classmethod
    def from_payload(cls, record: dict[str, Any]) -> "CovidCTNet":
        # lazy: imports torch, which this module does not need on import
        from .bcdunet import BCDUNet
        from .cnn3d import build_cnn

        try:
            settings = VolumeSettings.from_dict(dict(record["settings"]))
            class_names = tuple(record["class_names"])
            classifier = build_cnn(len(class_names), settings.volume_shape, settings.cnn_norm,
                                   settings.cnn_members, settings.channels)
            classifier.load_state_dict(record["classifier"])
            denoiser = None
            if record.get("denoiser") is not None:
                denoiser = BCDUNet(settings.denoiser_width)
                denoiser.load_state_dict(record["denoiser"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ModelError(f"CovidCTNet model file is incomplete or inconsistent "
                             f"({type(exc).__name__}: {str(exc)[:200]})",
                             (record.get("file") or {}).get("name")) from None
        info = {"file": record.get("file"), "covidct_version": record.get("covidct_version"),
                "name": record.get("name", "covidctnet")}
        # A model loaded from its file predicts: no persistent cache of patient images unless
        # $COVIDCT_CACHE asks for one (training builds its own with the cache on).
        return cls(classifier, denoiser, settings, class_names, record.get("training"), info,
                   cache=ArrayCache.for_prediction())

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.info.get("name", "covidctnet"),
            "settings": self.settings.to_dict(),
            "class_names": list(self.class_names),
            "classifier": cpu_state(self.classifier),
            "denoiser": None if self.denoiser is None else cpu_state(self.denoiser),
            "training": self.training,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return save_model_file(path, METHOD_COVIDCTNET, self.payload())

    @property
    def synthetic(self) -> bool:
        return bool(self.training.get("synthetic", False))

    @property
    def file(self) -> dict[str, Any]:
        """``{"name", "sha256"}`` of the model file it was loaded from ({} if none)."""
        return dict(self.info.get("file") or {})

    def describe(self) -> dict[str, Any]:
        """Model provenance for a Prediction (no patient data; covidct.models.Model.describe)."""
        return {"name": self.info.get("name", "covidctnet"), "method": self.method,
                "file": self.info.get("file"), "covidct_version": self.info.get("covidct_version"),
                "class_names": list(self.class_names), "input": self.settings.input,
                "settings": self.settings.to_dict(), "trained_on": self.training.get("data"),
                "synthetic": self.synthetic}

    # -- runtimes, export and caches ------------------------------------------------------

    def networks(self) -> dict[str, tuple[Any, tuple[int, ...], dict[int, str]]]:
        out = {"classifier": (self.classifier, (1, self.settings.channels, *self.settings.volume_shape),
                              {0: "batch"})}
        if self.denoiser is not None:
            size = self.settings.slice_size
            out["denoiser"] = (self.denoiser, (1, 1, size, size),
                               {0: "batch", 2: "height", 3: "width"})
        return out

    def network_roles(self) -> tuple[str, ...]:
        return ("classifier", "denoiser") if self.denoiser is not None else ("classifier",)

    def export_metadata(self) -> dict[str, Any]:
        return {"covidct_source": self.info.get("file"), "covidct_settings": self.settings.to_dict()}

    def to(self, device) -> "CovidCTNet":
        """Move its networks to ``device``."""
        self.classifier = self.classifier.to(device)
        if self.denoiser is not None:
            self.denoiser = self.denoiser.to(device)
        return self

    def use_networks(self, swapped: dict[str, Any], runtime: str) -> None:
        if self.denoiser is not None:
            # Infection-map cache keys name the denoiser's weights: keep the torch digest,
            # marked when an int8 denoiser (other maps from the same weights) takes over.
            # OpenVINO's int8 maps differ slightly from ONNX Runtime's: a key of their own.
            self._denoiser_digest = self._weights_key().partition(":int8")[0]
            if runtime.endswith("-int8") and "denoiser" in swapped:
                self._denoiser_digest += (":int8" if runtime == "onnx-int8"
                                          else ":int8-" + runtime.removesuffix("-int8"))
        self.classifier = swapped["classifier"]
        if "denoiser" in swapped:
            self.denoiser = swapped["denoiser"]
        self.runtime = runtime

    def use_cache(self, folder: str | os.PathLike | None) -> None:
        """Keep pre-processed volumes and infection maps in ``folder`` (None: in memory only,
        as the web server does so that uploads' intermediates do not outlive their job)."""
        self.cache = ArrayCache(None if folder is None else Path(folder))

    # -- from scan to the 3D CNN's input ------------------------------------------------

    def _weights_key(self) -> str:
        if self._denoiser_digest is None:
            self._denoiser_digest = "none" if self.denoiser is None else weights_digest(self.denoiser)
        return self._denoiser_digest

    def volume(self, scan: Scan, content: str | None = None) -> tuple[np.ndarray, str]:
        """The pre-processed (z, S, S) volume and "hit"/"miss" for the cache."""
        check_scan(scan)
        content = content or scan_digest(scan)
        key = ArrayCache.key("volume", content, self.settings.preprocess_key())
        cached = self.cache.load(key)
        if cached is not None:
            return cached[0], "hit"
        volume = preprocess_volume(scan, self.settings)
        self.cache.save(key, volume)
        return volume, "miss"

    def raw_input(self, volume: np.ndarray, content: str) -> tuple[np.ndarray, str]:
        """The infection map, plain volume or both (``settings.input_shape``), before any
        lung mask."""
        if not self.settings.reads_map:
            return resize_depth(volume, self.settings.volume_slices), "n/a"
        # Settings of what the 3D CNN reads (scale, mask, floor, norm, members, the CT beside
        # the map) do not change the map itself: leave them out of the key.
        settings = {k: v for k, v in self.settings.to_dict().items()
                    if k not in ("input_scale", "mask_input", "cnn_norm", "input_floor",
                                 "mask_erode", "cnn_members", "volume_scale")}
        key = ArrayCache.key("infection", content, {**settings, "input": INPUT_INFECTION,
                                                    "denoiser": self._weights_key()})
        cached = self.cache.load(key)
        if cached is not None:
            infection, state = cached[0], "hit"
        else:
            infection, state = infection_map(volume, self.denoiser, self.settings), "miss"
            self.cache.save(key, infection)
        return with_volume(infection, volume, self.settings), state

    def map_of(self, raw: np.ndarray) -> np.ndarray:
        """The infection map in a raw input (its first channel for "infection+volume")."""
        return raw[0] if self.settings.input == INPUT_BOTH else raw

    def network_input(self, volume: np.ndarray, content: str,
                      lungs: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """The array the 3D CNN reads (``settings.input_shape``: infection map, plain volume
        or both), times the lung mask on its grid (``lungs``) when ``settings.mask_input``."""
        array, state = self.raw_input(volume, content)
        if self.settings.mask_input and lungs is None:
            raise ModelError("this CovidCTNet reads lung-masked inputs: a lung mask is needed")
        return self.reads(array, lungs), state

    def reads(self, raw: np.ndarray, lungs: np.ndarray | None) -> np.ndarray:
        """What the 3D CNN reads from a raw map (or volume) and the lung mask on its grid:
        the map floored at ``settings.input_floor`` (the map channel only), times the lung
        mask (less ``settings.mask_erode`` voxels of its outline) on every channel when
        ``settings.mask_input``. Training, prediction and the int8 check all call this, so
        they cannot read different things."""
        array = raw
        if self.settings.input_floor is not None and self.settings.reads_map:
            floored = np.maximum(self.map_of(raw) - np.float32(self.settings.input_floor),
                                 np.float32(0))
            array = floored if raw.ndim == 3 else np.concatenate([floored[None], raw[1:]])
        if self.settings.mask_input:
            if self.settings.mask_erode:
                # lazy: scipy is only needed here
                from scipy import ndimage

                lungs = ndimage.binary_erosion(lungs > 0, structure=np.ones((1, 3, 3), bool),
                                               iterations=self.settings.mask_erode)
            array = array * lungs
        return array

    def classify(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for (N, *settings.input_shape) network inputs."""
        import torch

        device = next(self.classifier.parameters()).device
        self.classifier.eval()
        with torch.inference_mode():
            x = torch.from_numpy(network_batch(inputs, self.settings)).to(device)
            return torch.softmax(self.classifier(x), dim=1).double().cpu().numpy()

    # -- prediction ---------------------------------------------------------------------

    def predict(self, scan: Scan) -> Prediction:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        own = check_scan(scan)
        require_lung_extent(scan, "CovidCTNet")  # plausible, with enough lung (covidct.checks)
        for warning in own:  # the reader has logged its own warnings already
            log.warning("%s", warning)
        warnings = own + list(scan.metadata.get("warnings", []) or [])
        # The digest only names cache entries: hashing a 300-slice scan is not done for none.
        content = scan_digest(scan) if self.cache.enabled else "uncached"
        volume, volume_cache = self.volume(scan, content)
        timings["preprocess"] = time.perf_counter() - start
        mark = time.perf_counter()
        raw, input_cache = self.raw_input(volume, content)
        timings["infection_map" if self.settings.reads_map else "resize"] = \
            time.perf_counter() - mark
        mark = time.perf_counter()
        lungs = lung_grid(scan_lungs(scan), scan, self.settings.volume_shape)
        timings["lung_mask"] = time.perf_counter() - mark
        mark = time.perf_counter()
        inputs = self.reads(raw, lungs)
        probabilities = self.classify(inputs[None])[0]
        timings["classify"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - start
        kind = _INPUT_NAMES[self.settings.input]
        maps = {self.settings.input: inputs}
        report = lung_report(scan)
        if self.settings.reads_map:
            # Reported inside the lungs (pictures, projections, most affected slices); the
            # map as the network computed it stays available.
            raw = self.map_of(raw)
            maps = {INPUT_INFECTION: raw * lungs, INPUT_INFECTION + "_raw": raw}
            # The map per scan slice, in the scan's orientation: what callers draw and score.
            maps[INFECTION_ON_SCAN] = map_on_scan_slices(maps[INPUT_INFECTION], scan.n_slices,
                                                         scan.direction, len(volume))
            if report.get("involvement"):
                report = {**report, "involvement": {
                    **report["involvement"], "map_threshold": MAP_THRESHOLD,
                    "map_share_percent": _percent(((lungs > 0) & (raw > MAP_THRESHOLD)).sum(), lungs.sum())}}
        return Prediction(
            method=self.method, class_names=self.class_names, probabilities=probabilities,
            aggregation=(f"one 3D CNN call on the whole scan's {kind} "
                         f"({'x'.join(map(str, self.settings.volume_shape))}), softmax over classes"),
            maps=maps, lungs=report,
            model=self.describe(),
            scan=_scan_info(scan, volume, warnings, {"volume": volume_cache, "input": input_cache}),
            timings=timings)

    # -- evaluation ---------------------------------------------------------------------

    def volume_for_file(self, path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
        """The pre-processed volume of a scan file/folder and a few facts about it, cached by
        the file's bytes, so a second pass over a cohort neither reads nor pre-processes it."""
        key = ArrayCache.key("volume", self._file_content(path), self.settings.preprocess_key())
        cached = self.cache.load(key)
        if cached is not None:
            return cached
        scan = load_scan(path)
        volume = preprocess_volume(scan, self.settings)
        meta = {"synthetic": scan.synthetic, "n_slices": scan.n_slices}
        self.cache.save(key, volume, meta)
        return volume, meta

    def input_for_file(self, path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
        """The network input for a scan file/folder (cached like volume_for_file)."""
        volume, meta = self.volume_for_file(path)
        content = self._file_content(path)
        lungs = self._lungs_for_file(path, content) if self.settings.mask_input else None
        inputs, _ = self.network_input(volume, content, lungs)
        return inputs, meta

    def map_for_file(self, path: str | os.PathLike, inside_lungs: bool = True) -> np.ndarray:
        """The infection map of a scan file as predictions show it (inside the lung mask when
        ``settings.mask_input``; ``inside_lungs=False``: the method's map, input minus output,
        everywhere), without ``input_floor``: what is scored against the lesions is the map,
        not the floored copy the 3D CNN reads."""
        shown, method = self.maps_for_file(path)
        return shown if inside_lungs else method

    def maps_for_file(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Both of :meth:`map_for_file`'s maps (as shown, the method's) from one read of
        the scan's cached volume and map: the same array twice without a lung mask."""
        volume, _ = self.volume_for_file(path)
        content = self._file_content(path)
        raw = self.map_of(self.raw_input(volume, content)[0])
        if not self.settings.mask_input:
            return raw, raw
        return raw * self._lungs_for_file(path, content), raw

    def _lungs_for_file(self, path: str | os.PathLike, content: str) -> np.ndarray:
        """The lung mask on the network's grid for a scan file (cached by the file's bytes)."""
        shape = self.settings.volume_shape
        key = ArrayCache.key("lungs", content, {"shape": list(shape), "rule": mask_rule()})
        cached = self.cache.load(key)
        if cached is not None:
            return cached[0]
        scan = load_scan(path)
        grid = lung_grid(scan_lungs(scan), scan, shape)
        self.cache.save(key, grid)
        return grid

    def _file_content(self, path: str | os.PathLike) -> str:
        # Hashing a DICOM folder reads every file: remember it for this object's lifetime.
        resolved = str(Path(path).resolve())
        known = self._file_digests.get(resolved)
        if known is None:
            known = self._file_digests[resolved] = "file:" + file_digest(path)
        return known

    def score_dataset(self, source: str | os.PathLike, split: str | None = "test",
                      progress: bool = True, **split_options: Any) -> Scores:
        """Scan-level Scores of this model on a cohort (see volumes.data) for metrics.

        A cohort without a split column is split as it was for training (the seed and
        fractions are in the model file); ``seed``, ``val_fraction``, ``test_fraction``
        override them. ``split=None`` scores every scan.
        """
        from tqdm import tqdm

        cohort = self.cohort(source, **split_options)
        items = cohort.split(split)
        if not items:
            raise ModelError(f"no scans in split {split!r} of {cohort.source}")
        probs, synthetic = [], cohort.synthetic
        for item in tqdm(items, desc=f"covidctnet {split or 'all'}", disable=not progress,
                         unit="scan"):
            inputs, meta = self.input_for_file(item.path)
            synthetic |= bool(meta.get("synthetic"))
            probs.append(self.classify(inputs[None])[0])
        return Scores(
            method=self.method, class_names=self.class_names,
            y_true=np.array([self.target_index(i.label) for i in items]),
            y_prob=np.stack(probs), groups=np.array([i.patient_id for i in items]),
            level="scan", items=[i.patient_id for i in items],
            provenance={"model": self.describe(), "data": Path(cohort.source).name,
                        "split": split or "all", "split_from": cohort.split_from,
                        "synthetic": bool(synthetic or self.synthetic)})

    def cohort(self, source: str | os.PathLike, **split_options: Any):
        """The cohort at ``source``, split as this model's training split it (when the data
        has no split column); keyword arguments override the seed and fractions."""
        return load_cohort(source, **{**(self.training.get("split_options") or {}), **split_options})

    def target_index(self, label: str) -> int:
        """Index of a volume label in this model's classes (COVID-vs-rest for binary)."""
        if self.class_names == BINARY_CLASSES:
            return int(label == "COVID-19")
        return self.class_names.index(label)

    # -- explanations -----------------------------------------------------------------

    def slice_scores(self, prediction: Prediction) -> list[float | None] | None:
        """Per scan slice, the infection map's mean over it on the shared colour scale (0-1);
        None for a model that reads plain volumes (no map)."""
        on_scan = prediction.maps.get(INFECTION_ON_SCAN)
        if on_scan is None:
            return None
        return [float(v) for v in normalised_map(on_scan).mean(axis=(1, 2))]

    def viewer_arrays(self, prediction: Prediction) -> dict[str, np.ndarray]:
        """The infection map per scan slice (see :mod:`.mapback`), for overlays drawn later."""
        on_scan = prediction.maps.get(INFECTION_ON_SCAN)
        return {} if on_scan is None else {INPUT_INFECTION: on_scan}

    def scan_maps(self, prediction: Prediction, scan: Scan) -> dict[str, np.ndarray]:
        """The infection map on the scan's voxel grid (linear, see
        :func:`.infection.map_to_scan_grid`), for DICOM SEG and key images."""
        infection = prediction.maps.get(INPUT_INFECTION)
        if infection is None:
            return {}
        depth = int((prediction.scan.get("preprocessed_shape") or [len(infection)])[0])
        return {INPUT_INFECTION: map_to_scan_grid(infection, depth, scan.shape, scan.direction)}

    def key_pictures(self, prediction: Prediction, scan: Scan, n: int,
                     scan_maps: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        # lazy: imports PIL, which this module does not need on import
        from .pictures import key_slice_pictures

        infection = scan_maps.get(INPUT_INFECTION)
        return [] if infection is None else key_slice_pictures(scan, infection, n)

    def score(self, data: str | os.PathLike, split: str = "test") -> Scores:
        return self.score_dataset(data, split=split)

    def localise(self, data: str | os.PathLike, split: str, scores: Scores,
                 out_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
        return infection_localisation(self, data, split, out_dir)

    def write_gallery(self, data: str | os.PathLike, split: str, scores: Scores, cases,
                      out_dir: Path) -> dict[str, Any]:
        return write_infection_gallery(self, data, split, scores, cases, out_dir)

    def features(self, data: str | os.PathLike, split: str, max_items: int = 0,
                 seed: int = 0) -> dict[str, np.ndarray]:
        """3D CNN penultimate features of every scan of the split (``max_items``, ``seed``:
        unused, a cohort's scans are few)."""
        return scan_features(self, data, split)

    # -- pictures -----------------------------------------------------------------------

    def prepare_pictures(self) -> None:
        """Nothing to prepare: its pictures are drawn from the map prediction made."""

    def save_pictures(self, prediction: Prediction, scan: Scan,
                      out_dir: str | os.PathLike) -> list[Path]:
        """Infection-map pictures next to the prediction JSON (see volumes.pictures)."""
        # lazy: imports PIL, which this module does not need on import
        from .pictures import write_pictures

        volume, _ = self.volume(scan)
        fov = scan.shape[2] * scan.spacing[2] if scan.geometry_known else None
        lungs = lung_grid(scan_lungs(scan), scan, volume.shape)
        return write_pictures(prediction, volume, Path(out_dir), fov_mm=fov, lungs=lungs)


def _scan_info(scan: Scan, volume: np.ndarray, warnings: list[str],
               cache: dict[str, str]) -> dict[str, Any]:
    """A de-identified summary of the scan as the model saw it (:meth:`Scan.deidentified`)."""
    return {**scan.deidentified(warnings), "preprocessed_shape": list(volume.shape), "cache": cache}
