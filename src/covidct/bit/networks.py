"""The BiT slice classifier's networks: timm ResNet-v2 models by name, with the paper's
initialisations (:mod:`.weights`) and a zero head, and batched inference over them."""
from __future__ import annotations

from functools import partial

import torch

from ..constants import SLICE_CLASSES
from ..errors import ModelError
from .slice_data import normalize
from .settings import DEFAULT_ARCH, TINY_ARCH
from .weights import WeightsSource, load_weights, resolve, zero_head


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
