"""Explanations: Grad-CAM on a planted feature, t-SNE, infection-map views, training curves,
and explain_evaluation end to end on a tiny COVIDx-layout dataset (all SYNTHETIC)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from covidct.explain.cases import select_cases
from covidct.explain.curves import plot_training_curves, read_history
from covidct.explain.features import neighbour_agreement, plot_tsne, tsne_embedding
from covidct.explain.gradcam import gradcam
from covidct.explain.infection_pictures import infection_figure, projections, slice_overlay, top_slices
from covidct.explain.plotting import blend_heat, figure_bytes

# A toy classifier with planted features ---------------------------------------------------

H, W = 40, 48                       # not square, so a transposed map would be caught
BRIGHT = (slice(6, 14), slice(30, 38))   # class 1 evidence: a bright square
DARK = (slice(24, 32), slice(8, 16))     # class 0 evidence: a dark square


class Toy(nn.Module):
    """Channel 0 fires on bright pixels, channel 1 on dark ones (after 2x max pooling, so
    the map is coarser than the image); class 0 reads channel 1, class 1 reads channel 0."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.detect.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])[..., None, None] / 3)
            self.detect.bias.copy_(torch.tensor([-0.6, 0.15]))
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x):
        features = self.pool(torch.relu(self.detect(x)))
        return self.head(features.mean(dim=(2, 3)))


def toy_image() -> torch.Tensor:
    image = torch.full((3, H, W), 0.3)
    image[(slice(None), *BRIGHT)] = 1.0
    image[(slice(None), *DARK)] = 0.0
    return image


def _share_inside(cam: np.ndarray, region) -> float:
    mask = np.zeros(cam.shape, bool)
    mask[region] = True
    return float(cam[mask].sum() / cam.sum())


def test_gradcam_has_the_image_shape_and_peaks_on_the_planted_feature():
    net = Toy()
    cam = gradcam(net, net.pool, toy_image(), class_index=1)
    assert cam.shape == (H, W)
    assert cam.dtype == np.float32 and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    row, col = np.unravel_index(np.argmax(cam), cam.shape)
    assert BRIGHT[0].start <= row < BRIGHT[0].stop and BRIGHT[1].start <= col < BRIGHT[1].stop
    # Bilinear upsampling spreads a little outside; most of the mass stays on the square.
    assert _share_inside(cam, (slice(4, 16), slice(28, 40))) > 0.9


def test_gradcam_follows_the_requested_class_and_leaves_the_mode_alone():
    net = Toy().train()
    cam = gradcam(net, net.pool, toy_image()[None], class_index=0)
    assert net.training
    assert _share_inside(cam, (slice(22, 34), slice(6, 18))) > 0.9
    assert _share_inside(cam, (slice(4, 16), slice(28, 40))) < 0.05


def test_gradcam_works_under_inference_mode_and_rejects_batches():
    net = Toy()
    with torch.inference_mode():
        image = toy_image()
        cam = gradcam(net, net.pool, image, class_index=1)
    assert cam.shape == (H, W) and cam.max() > 0
    with pytest.raises(ValueError):
        gradcam(net, net.pool, torch.stack([toy_image(), toy_image()]), class_index=1)


def test_blend_heat_leaves_cool_pixels_gray_and_colours_hot_ones():
    gray = np.full((8, 8), 100, np.uint8)
    heat = np.zeros((8, 8))
    heat[2, 3] = 1.0
    rgb = blend_heat(gray, heat)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 100).all()
    assert len(set(rgb[2, 3].tolist())) > 1  # coloured, no longer gray


# t-SNE -----------------------------------------------------------------------------------

def test_tsne_returns_2d_points_and_keeps_separable_classes_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    centres = rng.normal(0, 6, size=(3, 64))
    features = centres[labels] + rng.normal(0, 1, size=(60, 64))
    points = tsne_embedding(features, seed=0)
    assert points.shape == (60, 2) and np.isfinite(points).all()
    assert neighbour_agreement(points, labels) >= 0.95
    # The same features with shuffled labels: neighbours agree only at chance level.
    assert neighbour_agreement(points, rng.permutation(labels)) < 0.7
    fig = plot_tsne(points, labels, ("Normal", "CP", "NCP"), synthetic=True)
    assert figure_bytes(fig).startswith(b"\x89PNG")


def test_tsne_of_few_points_lowers_the_perplexity():
    points = tsne_embedding(np.random.default_rng(1).normal(size=(7, 5)), seed=0)
    assert points.shape == (7, 2)


# Case selection -----------------------------------------------------------------------------

def test_select_cases_takes_most_confident_correct_and_wrong_per_class():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.55, 0.45]])
    cases = select_cases(y_true, y_prob, n_per_class=1)
    assert [(c.index, c.kind) for c in cases] == [(0, "correct"), (2, "wrong"),
                                                  (4, "correct"), (5, "wrong")]
    assert cases[1].predicted_class == 1 and cases[1].confidence == pytest.approx(0.8)


# Infection maps ---------------------------------------------------------------------------

def test_infection_views_align_the_map_with_the_volume():
    z, d, s = 80, 40, 32
    volume = np.full((z, s, s), 0.2, np.float32)
    infection = np.zeros((d, s, s), np.float32)
    infection[30, 5:10, 20:26] = 0.3       # one lesion, in map slice 30 only
    infection += np.random.default_rng(0).normal(0, 0.005, infection.shape).astype(np.float32)
    assert top_slices(infection, k=1) == [30]
    overlay = slice_overlay(volume, infection, 30)
    assert overlay.shape == (s, s, 3)
    hot = np.abs(overlay.astype(int) - overlay[0, 0].astype(int)).sum(axis=2) > 30
    assert hot[5:10, 20:26].all() and hot.sum() <= 2 * 30
    views = projections(volume, infection)
    assert views["axial"].shape == (s, s, 3) and views["coronal"].shape == (z, s, 3)
    coronal_hot = np.abs(views["coronal"].astype(int) - views["coronal"][0, 0].astype(int)).sum(axis=2) > 30
    rows = np.flatnonzero(coronal_hot.any(axis=1))
    # Map slice 30 of 40 lies at volume slice ~60 of 80; the head is drawn at the top.
    assert rows.size and abs((z - 1 - rows.mean()) - (30.5 * z / d - 0.5)) < 3
    assert np.flatnonzero(coronal_hot.any(axis=0)).tolist() == list(range(20, 26))
    # With the field of view, the coronal rows are resampled to true proportions (2 mm columns).
    assert projections(volume, infection, fov_mm=2.0 * s)["coronal"].shape == (z // 2, s, 3)
    fig = infection_figure(volume, infection, fov_mm=340.0, title="SYNTHETIC")
    assert figure_bytes(fig).startswith(b"\x89PNG")


def test_infection_views_reject_mismatched_arrays():
    with pytest.raises(ValueError):
        projections(np.zeros((10, 32, 32)), np.zeros((5, 16, 16)))


# Training curves ----------------------------------------------------------------------------

def test_training_curves_from_a_history_csv(tmp_path):
    rows = ["step,loss,lr,images_per_s,data_wait_s,val_loss,val_acc"]
    for step in range(1, 61):
        val = f"{1.0 / step:.4f},{min(1.0, 0.3 + step / 80):.4f}" if step % 20 == 0 else ","
        rows.append(f"{step},{2.0 / step:.4f},{0.003 if step < 40 else 0.0003},50.0,0.01,{val}")
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    history = read_history(tmp_path / "history.csv")
    assert np.isnan(history["val_acc"][0]) and history["val_acc"][19] == pytest.approx(0.55)
    fig = plot_training_curves(history, title="run", synthetic=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Loss", "Learning rate", "Accuracy"]
    assert figure_bytes(fig, "svg").lstrip().startswith(b"<?xml")
    # Several runs overlay (Fig. 7), and a history without plottable columns is refused.
    fig = plot_training_curves({"a": history, "b": history})
    assert len(fig.axes[2].get_lines()) == 2
    with pytest.raises(ValueError):
        plot_training_curves({"images_per_s": np.ones(3)})


# explain_evaluation end to end (slice classifier) ----------------------------------------

def _tiny_covidx(root, n_patients=6, slices=3, size=48):
    """A SYNTHETIC COVIDx-layout test split: per class, bright blobs at class-specific places."""
    from PIL import Image

    from covidct.constants import SYNTHETIC_TAG

    images = root / "images"
    images.mkdir(parents=True)
    (root / "README.md").write_text(f"{SYNTHETIC_TAG}\n")
    rng = np.random.default_rng(0)
    lines = []
    for p in range(n_patients):
        label = p % 3
        name = ("Normal", "CP", "NCP")[label]
        for k in range(slices):
            pixels = rng.integers(20, 60, size=(size + 8, size + 8)).astype(np.uint8)
            pixels[10 + 10 * label:20 + 10 * label, 10:25] = 230
            file = f"{name}_{p}_0_{k:04d}.png"
            Image.fromarray(pixels).save(images / file)
            lines.append(f"{file} {label} 2 2 {size + 3} {size + 3}")
    (root / "test_COVIDx_CT-2A.txt").write_text("\n".join(lines) + "\n")
    return root


def test_explain_evaluation_writes_gallery_tsne_and_features(tmp_path):
    from covidct.evaluation import evaluate
    from covidct.explain import explain_evaluation
    from covidct.bit.model import TINY_ARCH, SliceClassifier, build_network

    torch.manual_seed(0)
    data = _tiny_covidx(tmp_path / "data")
    classifier = SliceClassifier(net=build_network(TINY_ARCH).eval(), arch=TINY_ARCH, resize=40,
                                 crop=32, trained_on={"synthetic": True})
    eval_dir = tmp_path / "eval"
    evaluate(classifier, data, split="test", out_dir=eval_dir, n_boot=20)
    summary = explain_evaluation(classifier, data, "test", eval_dir, n_per_class=1)

    index = json.loads((eval_dir / "gradcam" / "index.json").read_text())
    assert summary["gradcam"]["n"] == len(index["items"]) >= 3
    for item in index["items"]:
        assert (eval_dir / "gradcam" / item["file"]).read_bytes().startswith(b"\x89PNG")
        assert item["true_class"] in ("Normal", "CP", "NCP")
        assert not any("_0_" in str(v) for v in item.values())  # no file names / patient ids
    with np.load(eval_dir / "features.npz") as saved:
        assert saved["features"].shape == (18, 512) and saved["points"].shape == (18, 2)
    assert (eval_dir / "tsne.png").stat().st_size > 5000
    assert json.loads((eval_dir / "explain.json").read_text())["tsne"]["n"] == 18
    assert "synthetic_notice" in summary


def test_explain_evaluation_needs_scores(tmp_path):
    from covidct.errors import DatasetError
    from covidct.explain import explain_evaluation

    with pytest.raises(DatasetError, match="scores.npz"):
        explain_evaluation(object(), tmp_path, "test", tmp_path)


# explain_evaluation end to end (CovidCTNet) ----------------------------------------------

def test_explain_evaluation_for_covidctnet_writes_infection_gallery_and_tsne(tmp_path, make_hu_volume,
                                                                             monkeypatch):
    """An untrained CovidCTNet on four tiny SYNTHETIC NIfTI scans: the glue reads the model's own
    cached arrays and writes one picture per chosen scan and the 3D CNN's feature map."""
    from covidct.explain import run

    monkeypatch.setattr(run, "MIN_TSNE_ITEMS", 4)  # four scans keep the test quick
    from covidct.evaluation import evaluate
    from covidct.explain import explain_evaluation
    from covidct.scanio import save_scan
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    torch.manual_seed(0)
    data = tmp_path / "cohort"
    rows = ["patient_id,volume_label,split,path,synthetic"]
    for k in range(4):
        label = ("Control", "CAP", "COVID-19")[k % 3]
        save_scan(make_hu_volume(shape=(16, 64, 64), spacing=(2.5, 5.0, 5.0), seed=k), data / f"s{k}.nii.gz")
        rows.append(f"SYN{k:02d},{label},test,s{k}.nii.gz,true")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    settings = VolumeSettings(slice_size=64, volume_slices=34, max_denoised_slices=4, denoiser_width=4)
    model = CovidCTNet.build(settings, denoiser=BCDUNet(4), cache=ArrayCache(tmp_path / "cache"))
    eval_dir = tmp_path / "eval"
    evaluate(model, data, split="test", out_dir=eval_dir, n_boot=20)
    summary = explain_evaluation(model, data, "test", eval_dir, n_per_class=1)

    index = json.loads((eval_dir / "infection" / "index.json").read_text())
    assert summary["infection"]["n"] == len(index["items"]) >= 3
    for item in index["items"]:
        assert (eval_dir / "infection" / item["file"]).read_bytes().startswith(b"\x89PNG")
        assert item["level"] == "scan" and not any("SYN" in str(v) for v in item.values())
    with np.load(eval_dir / "features.npz") as saved:
        assert saved["features"].shape == (4, 32) and saved["points"].shape == (4, 2)
    assert summary["tsne"]["n"] == 4 and (eval_dir / "tsne.png").is_file()


def _full_graph_gradcam(net, layer, image, class_index):
    """Grad-CAM with gradients everywhere (input and every weight), as covidct computed it
    before the backward pass stopped at the target layer."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = image[None].clone().requires_grad_(True)
    with GradCAM(model=net, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
    return np.clip(np.nan_to_num(np.asarray(maps[0], dtype=np.float32)), 0, 1)


@pytest.mark.parametrize("frozen", [False, True])
def test_gradcam_stopping_at_the_target_layer_gives_the_full_graph_map(frozen, monkeypatch):
    """The backward route (networks whose head is not one linear map of the pooled target
    layer; forced here for BiT): the backward pass stops at the target layer."""
    from covidct.bit.model import TINY_ARCH, build_network
    from covidct.explain import gradcam as gradcam_module
    from covidct.explain.gradcam import default_target_layer

    monkeypatch.setattr(gradcam_module, "_linear_head_weights", lambda *a: None)

    torch.manual_seed(3)
    net = build_network(TINY_ARCH).eval()
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    image = torch.rand(3, 64, 64) * 2 - 1
    layer = default_target_layer(net)
    assert any(True for _ in layer.parameters())  # the route that stops early
    reference = [_full_graph_gradcam(net, layer, image, c) for c in (0, 2)]
    backward_through_stem = []
    net.stem.register_full_backward_hook(lambda *a: backward_through_stem.append(1))
    _full_graph_gradcam(net, layer, image, 0)
    assert backward_through_stem  # the hook sees a full backward pass
    backward_through_stem.clear()
    for p in net.parameters():
        p.requires_grad_(not frozen)
    for c, expected in zip((0, 2), reference):
        got = gradcam(net, layer, image, class_index=c)
        assert got.max() > 0
        np.testing.assert_array_equal(got, expected)
    assert not backward_through_stem  # the backward pass stopped at the target layer
    assert all(p.requires_grad == (not frozen) for p in net.parameters())  # left as they were


def test_bit_gradcam_from_one_forward_pass_equals_the_library_map():
    """For BiT the target layer is what the head averages and weighs, so Grad-CAM needs no
    backward pass: the forward route's map equals pytorch-grad-cam's full-graph map for every
    class (float rounding), and nothing runs backward. A network with another head (the toy:
    pooled by max, read by a linear layer outside forward_features) takes the library route."""
    from covidct.bit.model import TINY_ARCH, build_network
    from covidct.explain.gradcam import _linear_head_weights, default_target_layer

    torch.manual_seed(5)
    net = build_network(TINY_ARCH).eval()
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    layer = default_target_layer(net)
    assert _linear_head_weights(net, layer) is not None
    image = torch.rand(3, 64, 56) * 2 - 1                   # not square
    backward = []
    net.stem.register_full_backward_hook(lambda *a: backward.append(1))
    fast = [gradcam(net, layer, image, class_index=c) for c in range(3)]
    assert not backward
    for c, got in enumerate(fast):
        expected = _full_graph_gradcam(net, layer, image, c)
        assert got.shape == (64, 56) and got.max() == pytest.approx(1.0)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(fast[0], fast[1])                 # the class matters
    toy = Toy()
    assert _linear_head_weights(toy, toy.pool) is None


def test_slice_gradcam_of_a_given_class_skips_the_extra_forward_pass():
    from covidct.bit.model import TINY_ARCH, SliceClassifier, build_network
    from covidct.explain.gradcam import slice_gradcam

    torch.manual_seed(0)
    model = SliceClassifier(net=build_network(TINY_ARCH).eval(), arch=TINY_ARCH, resize=72, crop=64)
    pixels = (np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8)
    calls = []
    model.net.stem.register_forward_hook(lambda *a: calls.append(1))  # forward and forward_features
    called = slice_gradcam(model, pixels, (4, 4, 75, 75))
    assert called["probabilities"] is not None and len(calls) == 2  # probabilities + Grad-CAM
    calls.clear()
    given = slice_gradcam(model, pixels, (4, 4, 75, 75), class_index=called["class_index"])
    assert given["probabilities"] is None and len(calls) == 1
    np.testing.assert_array_equal(given["cam"], called["cam"])


def test_prepare_pictures_builds_the_torch_network_in_the_background():
    """A model file's PyTorch network (Grad-CAM's; a model on ONNX Runtime builds it on first
    use) can be built beside the prediction: `covidct predict` asks for it before predicting.
    The network is the file's, and a file whose weights do not fit still fails on first use."""
    from covidct.bit.model import TINY_ARCH, SliceClassifier, build_network
    from covidct.errors import ModelError

    torch.manual_seed(0)
    model = SliceClassifier(net=build_network(TINY_ARCH).eval(), arch=TINY_ARCH, resize=72, crop=64)
    loaded = SliceClassifier.from_payload(model.payload())
    loaded.prepare_pictures()
    assert loaded._build is None and loaded._pending is not None
    net = loaded.torch_net
    assert loaded._pending is None and loaded.torch_net is net
    for name, tensor in model.torch_net.state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor), name
    loaded.prepare_pictures()  # built already: nothing to do
    assert loaded._pending is None

    broken = SliceClassifier.from_payload({**model.payload(), "arch": "resnetv2_50x1_bit"})
    broken.prepare_pictures()
    with pytest.raises(ModelError, match="weights do not fit"):
        broken.torch_net
