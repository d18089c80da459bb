"""Initialisations: the original BiT .npz layout, state dicts, names, and the zero head."""
import numpy as np
import pytest
import torch

from covidct.errors import ModelError
from covidct.bit.model import TINY_ARCH, build_network, create_model
from covidct.bit.weights import RELEASE_FILES, bit_size, resolve


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COVIDCT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def export_bit_npz(model, path, prefix="resnet/"):
    """Write a timm ResNetV2 in the original BiT release layout (TF names, HWIO kernels)."""
    def hwio(w):
        w = w.detach().numpy()
        return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w

    out = {f"{prefix}root_block/standardized_conv2d/kernel": hwio(model.stem.conv.weight),
           f"{prefix}group_norm/gamma": hwio(model.norm.weight),
           f"{prefix}group_norm/beta": hwio(model.norm.bias),
           f"{prefix}head/conv2d/kernel": hwio(model.head.fc.weight),
           f"{prefix}head/conv2d/bias": hwio(model.head.fc.bias)}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            unit = f"{prefix}block{i + 1}/unit{j + 1:02d}/"
            for letter, conv, norm in (("a", block.conv1, block.norm1), ("b", block.conv2, block.norm2),
                                       ("c", block.conv3, block.norm3)):
                out[f"{unit}{letter}/standardized_conv2d/kernel"] = hwio(conv.weight)
                out[f"{unit}{letter}/group_norm/gamma"] = hwio(norm.weight)
                out[f"{unit}{letter}/group_norm/beta"] = hwio(norm.bias)
            if block.downsample is not None:
                out[f"{unit}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    np.savez(path, **out)


def _random_source_model(num_classes=5):
    torch.manual_seed(0)
    model = build_network(TINY_ARCH, num_classes)
    with torch.no_grad():  # GN affine parameters start at 1/0: randomise them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _features(model, x):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_original_bit_npz_gives_the_same_network_as_the_state_dict(tmp_path):
    source = _random_source_model()
    npz = tmp_path / "BiT-M-test.npz"
    export_bit_npz(source, npz)
    from_npz = create_model(TINY_ARCH, 3, str(npz)).eval()
    direct = build_network(TINY_ARCH, 3)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    direct.load_state_dict(state, strict=False)
    direct.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_features(from_npz, x), _features(direct, x))
    assert torch.equal(_features(from_npz, x), _features(source, x))
    # New 3-class head, zero-initialised as in BiT: uniform probabilities at the start.
    assert torch.count_nonzero(from_npz.head.fc.weight) == 0
    assert torch.allclose(torch.softmax(from_npz(x), 1), torch.full((2, 3), 1 / 3))


def test_named_init_resolves_to_the_release_file(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    source = _random_source_model()
    export_bit_npz(source, weights / RELEASE_FILES["bit-m"].format(size=bit_size(TINY_ARCH)))
    found = resolve("bit-m", TINY_ARCH)
    assert found.kind == "file" and found.location.endswith("BiT-M-resnetv2_tiny_bit.npz")
    model = create_model(TINY_ARCH, 3, "bit-m").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_features(model, x), _features(source, x))


def test_bit_file_names_and_missing_weights_are_explained():
    assert bit_size("resnetv2_50x1_bit") == "R50x1"
    assert RELEASE_FILES["bit-s"].format(size="R50x1") == "BiT-S-R50x1.npz"
    assert RELEASE_FILES["bit-m-s"].format(size="R50x1") == "BiT-M-R50x1-ILSVRC2012.npz"
    with pytest.raises(ModelError, match=r"BiT-M-R50x1\.npz.*go online.*resnetv2_50x1_bit\.goog_in21k"):
        resolve("bit-m", "resnetv2_50x1_bit")
    with pytest.raises(ModelError, match=r"BiT-S-R50x1\.npz") as err:
        resolve("bit-s", "resnetv2_50x1_bit")
    assert "online" not in str(err.value)  # timm has no BiT-S weights
    with pytest.raises(ModelError, match="not found"):
        resolve("no/such/file.npz", "resnetv2_50x1_bit")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_files_load_except_the_head(tmp_path, suffix):
    source = _random_source_model(num_classes=7)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model(TINY_ARCH, 3, str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_features(model, x), _features(source, x))
    assert torch.count_nonzero(model.head.fc.weight) == 0


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.ones(3, 3, 3, 3)}, path)
    with pytest.raises(ModelError, match="do not fit") as err:
        create_model(TINY_ARCH, 3, str(path))
    assert str(path) in str(err.value)
    npz = tmp_path / "bad.npz"
    np.savez(npz, something=np.ones(3))
    with pytest.raises(ModelError, match="npz"):
        create_model(TINY_ARCH, 3, str(npz))


def test_unknown_architecture_is_a_model_error():
    with pytest.raises(ModelError, match="unknown architecture"):
        create_model("resnet_nonexistent_42", 3, "random")


@pytest.mark.slow
def test_paper_architecture_reads_its_original_npz_layout(tmp_path):
    """resnetv2_50x1_bit (the paper's network): every unit and projection maps by name."""
    torch.manual_seed(1)
    source = build_network("resnetv2_50x1_bit", 3).eval()
    weights = tmp_path / "weights"
    weights.mkdir()
    export_bit_npz(source, weights / "BiT-S-R50x1.npz")
    model = create_model("resnetv2_50x1_bit", 3, "bit-s").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_features(model, x), _features(source, x))
