"""Penultimate-layer features and their t-SNE map, as the BiT paper's Fig. 4.

The penultimate features are what the last linear layer reads: for timm networks (BiT
ResNet-v2) ``forward_head(forward_features(x), pre_logits=True)``, i.e. the globally pooled,
normalised activations; for CovidCTNet's 3D CNN the 32 units of its hidden dense layer.
t-SNE places cases with similar features close together; well separated class clusters
mean the network's representation separates the classes, overlap shows where it does not.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..progress import inner_bar
from .gradcam import network_input
from .plotting import class_colour, new_figure

#: Cases embedded at most (t-SNE costs O(n log n) per iteration; Fig. 4 is a sample too).
DEFAULT_MAX_ITEMS = 1500


def penultimate(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Penultimate features (N, D) of one batch, for timm models and CovidCTNet's CNN3D."""
    members = getattr(network, "members", None)
    if isinstance(members, nn.ModuleList):  # CNN3DMembers: every member's features, side by side
        return torch.cat([penultimate(m, images).flatten(1) for m in members], dim=1)
    if hasattr(network, "forward_features") and hasattr(network, "forward_head"):
        return network.forward_head(network.forward_features(images), pre_logits=True)
    features, head = getattr(network, "features", None), getattr(network, "classifier", None)
    if isinstance(features, nn.Module) and isinstance(head, nn.Sequential) and len(head) > 2:
        # CNN3D: flatten -> dense 32 -> ReLU -> dropout -> dense; stop before the dropout.
        hidden = [m for m in head if not isinstance(m, nn.Dropout)][:-1]
        return nn.Sequential(*hidden)(features(images))
    raise ValueError(f"cannot find the penultimate layer of {type(network).__name__} "
                     "(need timm's forward_features/forward_head or features + classifier)")


@torch.inference_mode()
def compute_features(network: nn.Module, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Penultimate features (N, D) float32 of every image in ``batches`` (in order)."""
    network.eval()
    device = next(network.parameters()).device
    out = [penultimate(network, x.to(device)).float().flatten(1).cpu() for x in batches]
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def sample_indices(labels: np.ndarray, max_items: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_items`` indices, stratified by class (every class keeps its share)."""
    labels = np.asarray(labels)
    n = len(labels)
    if not max_items or n <= max_items:
        return np.arange(n)
    rng = np.random.default_rng([seed, 4099])
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, int(round(max_items * len(members) / n)))
        keep.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def dataset_features(classifier: Any, split_file, image_dir, max_items: int | None = DEFAULT_MAX_ITEMS,
                     seed: int = 0, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Penultimate features of a SliceClassifier on (a class-stratified sample of) a COVIDx split.

    Returns ``features`` (N, D), ``labels`` (N,), ``groups`` (patients) and ``items`` (file
    names) of the sampled slices, pre-processed exactly as evaluation does.
    """
    # lazy: imports PIL, which this module does not need on import
    from ..bit.slice_data import collate

    dataset = classifier.dataset(split_file, image_dir)
    chosen = sample_indices(dataset.labels, max_items, seed)
    subset = torch.utils.data.Subset(dataset, chosen.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate)
    batches = inner_bar(loader, "features", "batch")
    features = compute_features(classifier.net, (network_input(images) for images, _ in batches))
    records = [dataset.records[i] for i in chosen]
    return {"features": features, "labels": dataset.labels[chosen],
            "groups": np.array([r.patient for r in records], dtype=str),
            "items": np.array([r.filename for r in records], dtype=str)}


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2D t-SNE of (N, D) features (PCA to 50 dimensions first when D > 50, as usual).

    Perplexity defaults to 30, lowered for small N (it must stay below N).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    if features.ndim != 2 or n < 3:
        raise ValueError(f"t-SNE needs at least 3 feature vectors, got shape {features.shape}")
    features = features - features.mean(axis=0)
    if features.shape[1] > 50 and n > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    if perplexity is None:
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=min(perplexity, n - 1.0), init="pca",
                learning_rate="auto", random_state=seed)
    # One OpenMP thread: on a busy 2-core machine the default threads spin against other
    # work and run 5-10x slower than one thread (measured: 60 points 5.4 s vs 0.5 s).
    with threadpool_limits(limits=1):
        return tsne.fit_transform(features).astype(np.float32)


def neighbour_agreement(points: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest other point has the same class (1-NN accuracy, leave-one-out)."""
    from scipy.spatial import cKDTree

    points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
    if len(points) < 2:
        return float("nan")
    _, index = cKDTree(points).query(points, k=2)
    return float(np.mean(labels[index[:, 1]] == labels))


def plot_tsne(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              title: str | None = None, synthetic: bool = False):
    """Scatter of the t-SNE map coloured by true class (a matplotlib Figure)."""
    points, labels = np.asarray(points), np.asarray(labels)
    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    size = 14 if len(points) < 500 else 6
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=size, alpha=0.75, linewidths=0,
                       color=class_colour(index), label=f"{name} (n = {int(mask.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("t-SNE 1", fontsize=8)
    ax.set_ylabel("t-SNE 2", fontsize=8)
    ax.legend(fontsize=8, frameon=False, loc="best", markerscale=1.5)
    heading = title or "t-SNE of penultimate-layer features"
    ax.set_title(heading + (" (SYNTHETIC data)" if synthetic else ""), fontsize=9)
    return fig
