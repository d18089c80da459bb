"""CovidCTNet's networks: the published 3D CNN layer structure, BCDU-Net D3 shapes, overfitting."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from covidct.covidctnet.bcdunet import BCDUNet, BiConvLSTM, ConvLSTMCell  # noqa: E402
from covidct.covidctnet.cnn3d import CNN3D, flattened_size  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests run two workers on two cores: more threads only contend.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_cnn3d_has_the_published_layers():
    model = CNN3D()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    assert convs[0].padding == (0, 0, 0) and all(c.padding == (1, 1, 1) for c in convs[1:])
    assert sum(isinstance(m, nn.MaxPool3d) for m in model.modules()) == 5
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(1152, 32), (32, 3)]
    dropout = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropout] == [0.3]
    # The parameter count of the method's Keras model summary.
    assert sum(p.numel() for p in model.parameters()) == 920_715


def test_cnn3d_forward_shapes_and_softmax():
    model = CNN3D().eval()
    out = model.predict_proba(torch.rand(1, 1, 50, 128, 128))
    assert out.shape == (1, 3)
    assert torch.allclose(out.sum(1), torch.ones(1))
    small = CNN3D(n_classes=2, input_shape=(34, 48, 48)).eval()
    assert small(torch.rand(2, 1, 34, 48, 48)).shape == (2, 2)
    with pytest.raises(ValueError, match="needs"):
        small(torch.rand(2, 1, 34, 40, 40))
    with pytest.raises(ValueError, match="too small"):
        flattened_size((20, 128, 128))


def test_cnn3d_init_is_he_uniform():
    conv = CNN3D().features[2]  # 8 -> 8 channels, fan_in 8 * 27
    bound = np.sqrt(6.0 / (8 * 27))
    w = conv.weight.detach().numpy()
    assert np.abs(w).max() <= bound + 1e-6
    assert np.abs(w).max() > 0.9 * bound  # uniform over the whole range, not a narrower draw
    assert np.all(conv.bias.detach().numpy() == 0)


def test_bcdunet_d3_structure():
    net = BCDUNet()
    encoder = [net.enc1, net.enc2, net.enc3]
    assert [block[0].out_channels for block in encoder] == [32, 64, 128]
    dense = [net.dense1, net.dense2, net.dense3]
    assert [block[0].out_channels for block in dense] == [256, 256, 256]
    assert net.dense3[0].in_channels == 512  # densely connected: D3 reads D1 and D2
    assert net.drop.p == 0.5
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [128, 64, 32]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    fusions = [m for m in net.modules() if isinstance(m, BiConvLSTM)]
    assert len(fusions) == 3
    assert all(f.forward_cell is not f.backward_cell for f in fusions)


def test_bcdunet_shapes_and_range():
    net = BCDUNet().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 128, 128))
    assert out.shape == (2, 1, 128, 128)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 100, 100))


def test_biconvlstm_reads_both_directions():
    torch.manual_seed(0)
    fuse = BiConvLSTM(4, 4)
    a, b = torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    out = fuse(a, b)
    assert out.shape == (1, 4, 8, 8)
    # Swapping encoder and decoder swaps the roles of the two directions: the output changes.
    assert not torch.allclose(out, fuse(b, a))
    out.square().sum().backward()
    for cell in (fuse.forward_cell, fuse.backward_cell):
        assert cell.input_conv.weight.grad.abs().sum() > 0
        assert cell.hidden_conv.weight.grad.abs().sum() > 0  # the second step is recurrent


def test_convlstm_is_the_textbook_cell_from_zero_state():
    """The cell skips the first step's forget gate and recurrent term (both meet zeros): the
    result is the full LSTM recurrence from h = c = 0, and so are the gradients."""
    torch.manual_seed(0)
    cell = ConvLSTMCell(4, 6)
    sequence = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    h = c = torch.zeros(2, 6, 8, 8)
    for x in sequence:
        i, f, g, o = (cell.input_conv(x) + cell.hidden_conv(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    expected = torch.autograd.grad(h.sum(), [cell.input_conv.weight, cell.input_conv.bias])
    out = cell(sequence)
    torch.testing.assert_close(out, h, rtol=0, atol=1e-6)
    got = torch.autograd.grad(out.sum(), [cell.input_conv.weight, cell.input_conv.bias])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bcdunet_overfits_a_handful_of_slices():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    targets = []
    for k in range(4):
        cy, cx = rng.uniform(12, 28, 2)
        targets.append(0.2 + 0.6 * (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(30, 90)))
    y = torch.tensor(np.array(targets), dtype=torch.float32)[:, None]
    x = y + 0.1 * torch.randn_like(y)
    net = BCDUNet(base=4)
    # Three times the method's 1e-3, so that a few dozen steps suffice.
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def error() -> float:
        net.eval()
        with torch.no_grad():
            return float(((net(x) - y) ** 2).mean())

    before = error()
    net.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net.logits(x), y)
        loss.backward()
        optimizer.step()
    after = error()
    assert after < 0.25 * before, (before, after)


@pytest.mark.parametrize("norm,layer", [("batch", nn.BatchNorm3d), ("group", nn.GroupNorm)])
def test_cnn3d_normalisation_option_adds_one_layer_per_convolution(norm, layer):
    model = CNN3D(input_shape=(34, 48, 48), norm=norm)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    norms = [m for m in model.modules() if isinstance(m, layer)]
    assert len(norms) == len(convs) == 10
    # each normalisation sits between its convolution and the ReLU
    kinds = [type(m) for m in model.features]
    for k, kind in enumerate(kinds):
        if kind is nn.Conv3d:
            assert kinds[k + 1] is layer and kinds[k + 2] is nn.ReLU
    model.train()
    assert model(torch.rand(3, 1, 34, 48, 48)).shape == (3, 3)
    plain = CNN3D(input_shape=(34, 48, 48))
    assert not any(isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)) for m in plain.modules())
    with pytest.raises(ValueError, match="normalisation"):
        CNN3D(norm="layer")


def test_cnn_members_average_their_probabilities():
    from covidct.covidctnet.cnn3d import CNN3DMembers, build_cnn

    assert type(build_cnn(3, (34, 48, 48))) is CNN3D  # one member: the method's network
    torch.manual_seed(0)
    ensemble = build_cnn(3, (34, 48, 48), members=3).eval()
    assert isinstance(ensemble, CNN3DMembers) and len(ensemble.members) == 3
    x = torch.randn(2, 1, 34, 48, 48)
    with torch.no_grad():
        each = torch.stack([torch.softmax(m(x), dim=1) for m in ensemble.members])
        assert not torch.allclose(each[0], each[1])  # different draws
        torch.testing.assert_close(ensemble.predict_proba(x), each.mean(0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least two"):
        CNN3DMembers([CNN3D(3, (34, 48, 48))])
