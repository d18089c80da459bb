"""BCDU-Net (Azad et al. 2019), the D3 variant CovidCTNet uses as its slice "denoiser".

A U-Net whose encoder goes 32-64-128 channels with max pooling, whose bottleneck is three
densely connected conv blocks of 256 channels (block 3 sees blocks 1 and 2), and whose
skip connections are fused with the upsampled decoder features by a bidirectional
ConvLSTM reading the two-step sequence (encoder feature, decoder feature). The output is a
sigmoid image in [0, 1], trained with binary cross-entropy against the clean slice.

Channel widths scale with ``base`` (32 in the method) so tests can build a narrow copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _he_normal(module: nn.Module) -> None:
    """Keras' he_normal, the initialiser of the method's code, for every conv layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions with ReLU, the building block of every level."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell run over a short sequence; returns the last hidden state."""

    def __init__(self, in_ch: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.input_conv = nn.Conv2d(in_ch, 4 * hidden, kernel, padding=kernel // 2)
        self.hidden_conv = nn.Conv2d(hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        # The first step starts from zero state: no recurrent term, and its forget gate
        # multiplies a zero cell, so that quarter of its input convolution is not computed
        # (a tenth of the cell's work; the ConvLSTMs are two thirds of BCDU-Net's FLOPs).
        h = c = None
        for x in sequence:
            if c is None:
                i, g, o = self._first_gates(x).chunk(3, 1)
                c = torch.sigmoid(i) * torch.tanh(g)
            else:
                i, f, g, o = (self.input_conv(x) + self.hidden_conv(h)).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h

    def _first_gates(self, x: torch.Tensor) -> torch.Tensor:
        """The input, cell and output gates (not the forget gate) of the input convolution."""
        n, conv = self.hidden, self.input_conv
        weight = torch.cat([conv.weight[:n], conv.weight[2 * n:]])
        bias = None if conv.bias is None else torch.cat([conv.bias[:n], conv.bias[2 * n:]])
        return F.conv2d(x, weight, bias, padding=conv.padding)


class BiConvLSTM(nn.Module):
    """Bidirectional ConvLSTM over (encoder, decoder) merged as tanh(W_f*H_f + W_b*H_b + b)."""

    def __init__(self, in_ch: int, hidden: int):
        super().__init__()
        self.forward_cell = ConvLSTMCell(in_ch, hidden)
        self.backward_cell = ConvLSTMCell(in_ch, hidden)
        self.merge = nn.Conv2d(2 * hidden, hidden, 1)

    def forward(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        h_forward = self.forward_cell([encoder, decoder])
        h_backward = self.backward_cell([decoder, encoder])
        return torch.tanh(self.merge(torch.cat([h_forward, h_backward], 1)))


class UpBlock(nn.Module):
    """Transposed conv (x2) + batch norm + ReLU, BiConvLSTM skip fusion, then two convs."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
        self.fuse = BiConvLSTM(out_ch, out_ch // 2)
        self.conv = DoubleConv(out_ch // 2, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(self.fuse(skip, self.up(x)))


class BCDUNet(nn.Module):
    """BCDU-Net D3 for one-channel square slices whose side is a multiple of 8."""

    def __init__(self, base: int = 32, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4 = base, 2 * base, 4 * base, 8 * base
        self.base = base
        self.enc1, self.enc2, self.enc3 = DoubleConv(1, c1), DoubleConv(c1, c2), DoubleConv(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)
        # Densely connected bottleneck: D3 reads the concatenation of D1 and D2.
        self.dense1 = DoubleConv(c3, c4)
        self.dense2 = DoubleConv(c4, c4)
        self.dense3 = DoubleConv(2 * c4, c4)
        self.up3, self.up2, self.up1 = UpBlock(c4, c3), UpBlock(c3, c2), UpBlock(c2, c1)
        # The method's head is conv 3x3 to 2 channels with ReLU, then 1x1 conv and sigmoid. A
        # ReLU on only two channels right before the output dies in about one seed of three
        # on reconstruction (constant output, training stalls), so that layer stays linear.
        self.head = nn.Sequential(nn.Conv2d(c1, 2, 3, padding=1), nn.Conv2d(2, 1, 1))
        _he_normal(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid output, (N, 1, H, W); BCE-with-logits on it is the method's BCE."""
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"BCDU-Net needs (N, 1, H, W) with H, W multiples of 8, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d1 = self.drop(self.dense1(self.pool(e3)))
        d2 = self.drop(self.dense2(d1))
        d3 = self.drop(self.dense3(torch.cat([d2, d1], 1)))
        y = self.up3(d3, self.drop(e3))
        y = self.up2(y, e2)
        y = self.up1(y, e1)
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))
