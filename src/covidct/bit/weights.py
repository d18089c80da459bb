"""Initial weights by name: which file or hub tag each of the paper's initialisations is.

Zhao et al. compare five initialisations of ResNet-v2 50x1 (their Table 3):

==========  ==========================================  ============================  ==============================
init        pre-training (paper's description)          original BiT release file     timm hub tag (online only)
==========  ==========================================  ============================  ==============================
random      none                                        -                             -
bit-s       ILSVRC-2012 (ImageNet-1k)                   BiT-S-R50x1.npz               none: timm has no BiT-S weights
bit-m       ImageNet-21k                                BiT-M-R50x1.npz               resnetv2_50x1_bit.goog_in21k
bit-m-s     ImageNet-21k, then fine-tuned on ILSVRC-2012 BiT-M-R50x1-ILSVRC2012.npz   resnetv2_50x1_bit.goog_in21k_ft_in1k
bit-m-c     ImageNet-21k, then fine-tuned on CIFAR-10   BiT-M-R50x1-CIFAR10.npz       none
==========  ==========================================  ============================  ==============================

BiT-M-C is honest guesswork on our side: Google released BiT-M fine-tuned on ILSVRC-2012 and
on the 19 VTAB-1k tasks (CIFAR-100 among them, not CIFAR-10), but no CIFAR-10 model, so the
authors most likely fine-tuned BiT-M on CIFAR-10 themselves with the BiT code. covidct looks
for that file under the name above; make it with the BiT code (or use another fine-tuned
BiT-M file by path). Other architectures use the same names with their size, e.g.
``BiT-M-R101x1.npz`` for ``resnetv2_101x1_bit``.

Named files are looked up in ``$COVIDCT_WEIGHTS`` (if set) and ``~/.cache/covidct/weights``.
``init`` may also be a path: an original BiT ``.npz``, a timm/PyTorch state dict
(``.pt``/``.pth``/``.bin``), a ``.safetensors`` file, or a covidct model file (to continue
fine-tuning). The classification head is never taken from the file: it is re-created for
the 3 COVIDx classes and set to zero, as BiT fine-tuning does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import BIT_INITS
from ..errors import ModelError

INITS = BIT_INITS
#: Original release file name per init; {size} is e.g. R50x1.
RELEASE_FILES = {
    "bit-s": "BiT-S-{size}.npz",
    "bit-m": "BiT-M-{size}.npz",
    "bit-m-s": "BiT-M-{size}-ILSVRC2012.npz",
    "bit-m-c": "BiT-M-{size}-CIFAR10.npz",
}
#: timm pretrained tags per init (appended to the architecture name).
HUB_TAGS = {"bit-m": "goog_in21k", "bit-m-s": "goog_in21k_ft_in1k"}


@dataclass(frozen=True)
class WeightsSource:
    """Where the initial weights of a run come from (recorded in config.json and the model)."""

    init: str
    kind: str            # "random", "file" or "hub"
    location: str = ""   # path or hub name

    def describe(self) -> str:
        return self.init if self.kind == "random" else f"{self.init} ({self.kind}: {self.location})"


def weights_dirs() -> list[Path]:
    env = os.environ.get("COVIDCT_WEIGHTS")
    dirs = [Path(env)] if env else []
    return dirs + [Path.home() / ".cache" / "covidct" / "weights"]


def bit_size(arch: str) -> str:
    """``resnetv2_50x1_bit`` -> ``R50x1`` (the size as BiT file names spell it)."""
    match = re.fullmatch(r"resnetv2_(\d+)x(\d+)_bit", arch)
    return f"R{match.group(1)}x{match.group(2)}" if match else arch


def resolve(init: str, arch: str) -> WeightsSource:
    """Turn an init name or path into a concrete source, or say exactly what is missing."""
    if init == "random":
        return WeightsSource(init, "random")
    if init not in INITS:
        path = Path(init).expanduser()
        if not path.is_file():
            raise ModelError(f"--init must be one of {', '.join(INITS)} or a weights file; "
                             "file not found", path)
        return WeightsSource(str(path), "file", str(path))
    filename = RELEASE_FILES[init].format(size=bit_size(arch))
    for folder in weights_dirs():
        if (folder / filename).is_file():
            return WeightsSource(init, "file", str(folder / filename))
    tag = HUB_TAGS.get(init)
    hub_name = f"{arch}.{tag}" if tag else None
    if hub_name and _hub_known(hub_name) and not _offline():
        return WeightsSource(init, "hub", hub_name)
    where = " or ".join(str(d) for d in weights_dirs())
    hub = (f", or go online to let timm fetch {hub_name}" if hub_name and _hub_known(hub_name)
           else "")
    raise ModelError(f"weights for init {init!r} not found: put {filename} in {where}{hub}, "
                     "pass a weights file as --init PATH, or use --init random")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_known(name: str) -> bool:
    import timm

    return name in timm.list_pretrained(name.split(".")[0] + ".*")


def load_weights(model: torch.nn.Module, source: WeightsSource) -> None:
    """Copy a file's weights into ``model`` (the head excluded); hub sources are loaded by timm."""
    if source.kind != "file":
        return
    path = Path(source.location)
    if path.suffix == ".npz":
        _load_npz(model, path)
    else:
        _load_state_dict(model, _read_state_dict(path), path)


def _load_npz(model: torch.nn.Module, path: Path) -> None:
    """The original BiT release layout, read by timm's own converter."""
    if not hasattr(model, "load_pretrained"):
        raise ModelError(f"{type(model).__name__} cannot read BiT .npz files; use a ResNet-v2 BiT "
                         "architecture", path)
    try:
        with torch.no_grad():
            model.load_pretrained(str(path))
    except KeyError as exc:
        raise ModelError(f"not a BiT .npz for this architecture (missing {exc})", path) from None
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"BiT .npz does not fit the architecture ({_first_line(exc)})", path) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights ({type(exc).__name__}: {_first_line(exc)})", path) from None
    for key in ("state_dict", "model", "state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("no state dict (name -> tensor) in weights file", path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    head = {name for name, _ in _head_parameters(model)}
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and k not in head and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and k not in head]
    if missing:
        raise ModelError(f"weights do not fit the architecture: {len(missing)} tensors missing or "
                         f"of another shape, e.g. {', '.join(missing[:3])}", path)
    model.load_state_dict(usable, strict=False)


def _head_parameters(model: torch.nn.Module):
    classifier = model.get_classifier()
    ids = {id(p) for p in classifier.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def zero_head(model: torch.nn.Module) -> None:
    """BiT's zero-initialised head: the first steps start from uniform class probabilities."""
    with torch.no_grad():
        for _, param in _head_parameters(model):
            param.zero_()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
