"""Grad-CAM heat maps with the maintained pytorch-grad-cam library, for any CNN classifier.

:func:`gradcam` is the generic core; :func:`slice_gradcam` applies it to a trained
:class:`covidct.bit.model.SliceClassifier` on one 8-bit slice with exactly the model's
evaluation pre-processing (body box crop, resize to the crop size, BiT normalisation), and
returns the map at the resolution of the cropped slice so it can be laid over it.

Grad-CAM weights the feature maps of a layer by the gradient of one class's logit and keeps
the positive part: it shows where evidence *for that class* was found, at the layer's
coarse resolution (1/32 of the input for ResNet-v2), upsampled bilinearly.

For BiT (timm ResNet-v2) the target layer's output is exactly what the head averages and
weighs, so the gradient is known without a backward pass and Grad-CAM is the class
activation map; :func:`gradcam` then runs one forward pass (see :func:`_linear_head_weights`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .plotting import blend_heat, draw_outline, fit_within, resize_to


def gradcam(network: nn.Module, target_layer: nn.Module, image_tensor: torch.Tensor,
            class_index: int) -> np.ndarray:
    """Grad-CAM of ``class_index`` for one image: float32 (H, W) in [0, 1], the image's size.

    ``image_tensor`` is (C, H, W) or (1, C, H, W), already pre-processed for ``network``.
    A map that is zero everywhere means the layer held no positive evidence for the class
    (e.g. an untrained zero head). The network's train/eval mode is left as it was.
    """
    if image_tensor.ndim == 3:
        image_tensor = image_tensor[None]
    if image_tensor.ndim != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"gradcam needs one (C, H, W) image, got shape {tuple(image_tensor.shape)}")
    weights = _linear_head_weights(network, target_layer)
    if weights is not None:
        return _forward_gradcam(network, weights[int(class_index)], image_tensor)
    # lazy: the library (and scikit-learn, which it imports) only for other networks
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    parameter = next(network.parameters())
    # Grad-CAM needs the gradient at the target layer's output only. With the target layer's
    # own parameters the only ones that require it, the backward pass stops there instead
    # of running back through every layer to the weights and the input (for BiT-R50x1 at
    # 480 px it cost more than the forward pass); the gradient it stops at, and so the map,
    # is computed by the same operations. A target layer without parameters falls back to a
    # graph from the input.
    own = {id(p) for p in target_layer.parameters()}
    saved = [(p, p.requires_grad) for p in network.parameters()]
    # A fresh tensor outside inference mode: the library needs a graph back to the layer even
    # when the caller's tensors were made under torch.inference_mode or params are frozen.
    with torch.inference_mode(False), torch.enable_grad():
        x = image_tensor.detach().clone().to(parameter.device, parameter.dtype)
        x.requires_grad_(not own)
        was_training = network.training
        try:
            for p, _ in saved:
                p.requires_grad_(id(p) in own)
            with GradCAM(model=network, target_layers=[target_layer]) as cam:
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(class_index))])
        finally:
            network.train(was_training)
            for p, flag in saved:
                p.requires_grad_(flag)
    out = np.nan_to_num(np.asarray(maps[0], dtype=np.float32), nan=0.0)
    return np.clip(out, 0.0, 1.0)


def _linear_head_weights(network: nn.Module, target_layer: nn.Module) -> torch.Tensor | None:
    """(classes, channels) weights of a head that global-average-pools ``target_layer``'s
    output and applies one linear map (timm's ResNet-v2: ``forward_features`` ends with
    ``norm``, the head is average pooling and a 1x1 convolution or linear layer); else None.

    Then the gradient of class c's logit at every position of feature map k is w_ck / (h w):
    Grad-CAM's weights are known without a backward pass, and its map is the class
    activation map sum_k w_ck A_k (Zhou et al. 2016), which one forward pass gives (the
    backward route also imports the library, and with it scikit-learn: 0.8 s of a cold
    `covidct predict`). A head with layers between pooling and ``fc`` gives None."""
    head = getattr(network, "head", None)
    pool, fc = getattr(head, "global_pool", None), getattr(head, "fc", None)
    if (target_layer is not getattr(network, "norm", None)
            or not hasattr(network, "forward_features") or getattr(pool, "pool_type", None) != "avg"
            or not isinstance(getattr(head, "pre_logits", nn.Identity()), nn.Identity)):
        return None
    if isinstance(fc, nn.Conv2d) and fc.kernel_size == (1, 1) and fc.groups == 1:
        return fc.weight.detach()[:, :, 0, 0]
    if isinstance(fc, nn.Linear):
        return fc.weight.detach()
    return None


def _forward_gradcam(network: nn.Module, class_weights: torch.Tensor,
                     image_tensor: torch.Tensor) -> np.ndarray:
    """Grad-CAM through a linear head (see :func:`_linear_head_weights`), post-processed by
    the library's own steps (positive part, min-max scaling, bilinear resize), so it equals
    the backward route's map."""
    parameter = next(network.parameters())
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            x = image_tensor.to(parameter.device, parameter.dtype)
            activations = network.forward_features(x).float().cpu().numpy()
    finally:
        network.train(was_training)
    h, w = activations.shape[-2:]
    # the gradient Grad-CAM averages: the same value at every position of map k
    weights = (class_weights.float().cpu().numpy() / np.float32(h * w))[None]
    cam = np.maximum((weights[:, :, None, None] * activations).sum(axis=1), 0)
    # the library's scaling (to [0, 1], resized bilinearly with half-pixel centres, scaled
    # again), without importing it: its package pulls in scikit-learn (0.8 s of a cold predict)
    size = tuple(image_tensor.shape[-2:])
    cam = torch.nn.functional.interpolate(torch.from_numpy(_unit(cam))[None], size=size,
                                          mode="bilinear", align_corners=False)[0].numpy()
    out = np.nan_to_num(_unit(cam)[0], nan=0.0)
    return np.clip(out, 0.0, 1.0)


def _unit(cam: np.ndarray) -> np.ndarray:
    """Each (h, w) map of ``cam`` shifted to a minimum of 0 and divided by its maximum, as the
    library scales (float32)."""
    cam = cam - cam.min(axis=(-2, -1), keepdims=True)
    return np.float32(cam / (np.float32(1e-7) + cam.max(axis=(-2, -1), keepdims=True)))


def default_target_layer(network: nn.Module) -> nn.Module:
    """The last spatial layer before global pooling.

    timm ResNet-v2 (BiT) is pre-activation, so its final ``norm`` (GroupNorm + ReLU) gives the
    activations the head actually pools; otherwise the last stage, else the last Conv2d.
    """
    for name in ("norm", "final_norm"):
        layer = getattr(network, name, None)
        if isinstance(layer, nn.Module) and any(True for _ in layer.parameters()):
            return layer
    stages = getattr(network, "stages", None) or getattr(network, "layer4", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return stages[-1]
    if isinstance(stages, nn.Module):
        return stages
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(network).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]


def slice_tensor(classifier: Any, pixels: np.ndarray) -> torch.Tensor:
    """A cropped 8-bit slice as the classifier's (3, crop, crop) float evaluation input."""
    return network_input(classifier.eval_transform()(np.asarray(pixels, dtype=np.uint8))[None])[0]


def network_input(images: torch.Tensor) -> torch.Tensor:
    """What the slice classifier's transforms give (N, C, H, W) -> the float network input.

    The transforms hand over 8-bit single-channel pictures and ``slices.data.normalize``
    finishes them (BiT scaling to [-1, 1], three channels); float batches are final already.
    """
    # lazy: imports PIL, which this module does not need on import
    from ..bit import slice_data as data

    normalize = getattr(data, "normalize", None)
    if images.dtype == torch.uint8 and normalize is not None:
        return normalize(images)
    return images.float()


def slice_probabilities(classifier: Any, tensor: torch.Tensor) -> np.ndarray:
    net = classifier.net
    net.eval()
    with torch.inference_mode():
        logits = net(tensor[None].to(next(net.parameters()).device))
    return torch.softmax(logits.float(), dim=1)[0].double().cpu().numpy()


def slice_gradcam(classifier: Any, pixels: np.ndarray, box: Sequence[int] | None = None,
                  class_index: int | None = None) -> dict[str, Any]:
    """Grad-CAM of a :class:`SliceClassifier` on one 8-bit slice.

    ``box`` (xmin, ymin, xmax, ymax, inclusive) crops the slice first, as the COVIDx boxes
    and the automatic body box do; ``class_index`` defaults to the predicted class.
    Returns ``{"pixels": cropped uint8 slice, "cam": (h, w) in [0, 1] at that size,
    "probabilities": (C,), "class_index": explained class}``; ``probabilities`` is None when
    ``class_index`` is given (a whole forward pass that no caller of that kind needs).
    """
    # lazy: imports PIL, which this module does not need on import
    from ..bit.slice_data import crop_box

    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected one 2D slice, got shape {pixels.shape}")
    cropped = crop_box(pixels, box) if box is not None else pixels
    tensor = slice_tensor(classifier, cropped)
    probabilities = slice_probabilities(classifier, tensor) if class_index is None else None
    target = int(np.argmax(probabilities)) if class_index is None else int(class_index)
    # A model on ONNX Runtime keeps the PyTorch network it came from for gradients.
    net = getattr(classifier, "torch_net", classifier.net)
    cam = gradcam(net, default_target_layer(net), tensor, target)
    return {"pixels": np.asarray(cropped, dtype=np.uint8), "cam": resize_to(cam, cropped.shape),
            "probabilities": probabilities, "class_index": target}


def gradcam_picture(pixels: np.ndarray, cam: np.ndarray, side: int = 224,
                    lungs: np.ndarray | None = None) -> np.ndarray:
    """The slice and its Grad-CAM overlay side by side (RGB uint8, longer side ``side``);
    ``lungs`` (a mask of the slice) is outlined on both."""
    gray = np.asarray(pixels)
    base = blend_heat(gray, np.zeros(gray.shape))  # the plain slice, as RGB
    overlay = blend_heat(gray, cam)
    if lungs is not None:
        base, overlay = draw_outline(base, lungs), draw_outline(overlay, lungs)
    left, right = fit_within(base, side, enlarge=True), fit_within(overlay, side, enlarge=True)
    gap = np.full((left.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
