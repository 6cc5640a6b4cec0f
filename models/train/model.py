"""Sparsifying autoencoder on convolutional groups (Ferdowsi et al., ICASSP'20).

Encoder: down-sampling residual conv blocks whose skip branches are concatenated,
a 1x1 conv to L code-maps, then one bias-free linear layer per code-map (the
"grouped linear layer") to m dims, followed by top-k by magnitude (sign kept).
Decoder: the transposed grouped weights (tied), a 1x1 conv, and bilinear
up-sampling blocks that mirror the encoder.

The exported encoder stops before top-k (dense code-maps out): top-k runs in
Rust, so the ONNX graph holds only standard ops.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_groups(channels: int) -> int:
    """Largest group count in (8, 6, 5, 4, 3, 2) dividing `channels` (the paper used 5 at width 40)."""
    for g in (8, 6, 5, 4, 3, 2):
        if channels % g == 0:
            return g
    return 1


def top_k_magnitude(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the k largest magnitudes along the last axis, zeroes the rest; signs kept."""
    _, idx = torch.topk(x.abs(), k, dim=-1)
    mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return x * mask


class DownBlockMain(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.res = nn.Conv2d(cin, cout, 1, stride=stride)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 5, padding=2, stride=stride, groups=conv_groups(cout))
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        r = self.res(x)
        x = F.leaky_relu(self.conv1(x))
        x = self.bn(self.conv2(x))
        return F.leaky_relu(x + r)


class DownBlockSkip(nn.Module):
    """Skip branch from one level straight to the bottleneck resolution."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.res = nn.Conv2d(cin, cout, 1, stride=stride)
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.conv2 = nn.Conv2d(cin, cin, 5, padding=2, groups=cin)  # depth-wise
        self.conv3 = nn.Conv2d(cin, cout, 1, stride=stride)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        r = self.res(x)
        x = F.leaky_relu(self.conv1(x))
        x = self.conv3(self.conv2(x))
        return F.leaky_relu(self.bn(x) + r)


class UpBlockMain(nn.Module):
    def __init__(self, cin, cout, scale):
        super().__init__()
        self.scale = scale
        self.res = nn.Conv2d(cin, cout, 1)
        self.conv1 = nn.Conv2d(cin, cout, 5, padding=2)
        self.gn = nn.GroupNorm(1, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        r = self.res(x)
        x = F.leaky_relu(self.gn(self.conv1(x)))
        return self.conv2(x) + r


class UpBlockSkip(nn.Module):
    def __init__(self, cin, cout, scale):
        super().__init__()
        self.scale = scale
        self.res = nn.Conv2d(cin, cout, 1)
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1, groups=conv_groups(cin))
        self.gn = nn.GroupNorm(conv_groups(cin), cin)
        self.conv2 = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        r = self.res(x)
        x = F.leaky_relu(self.gn(self.conv1(x)))
        return self.conv2(x) + r


class Encoder(nn.Module):
    """Image (B, C, H, W) in [0, 1] -> dense code-maps (B, L, m)."""

    def __init__(self, channels, size, width, scales, num_codes, code_dim):
        super().__init__()
        total = math.prod(scales)
        assert size % total == 0, "tile size must be divisible by the product of the scale factors"
        self.neck = size // total
        self.main = nn.ModuleList()
        self.skip = nn.ModuleList()
        cin, remaining = channels, total
        for s in scales:
            self.main.append(DownBlockMain(cin, width, s))
            self.skip.append(DownBlockSkip(cin, width, remaining))
            cin, remaining = width, remaining // s
        self.point = nn.Conv2d(width * (len(scales) + 1), num_codes, 1)
        # One bias-free linear map per code-map, stored as (L, neck*neck, m).
        fan_in = self.neck * self.neck
        self.grouped = nn.Parameter(torch.randn(num_codes, fan_in, code_dim) / math.sqrt(fan_in))

    def forward(self, x):
        branches = []
        for main, skip in zip(self.main, self.skip):
            branches.append(skip(x))
            x = main(x)
        branches.append(x)
        z = self.point(torch.cat(branches, dim=1))  # (B, L, n, n)
        b, l = z.shape[0], z.shape[1]
        z = z.reshape(b, l, -1).transpose(0, 1)  # (L, B, n*n)
        code = torch.matmul(z, self.grouped)  # (L, B, m)
        return code.transpose(0, 1)  # (B, L, m)


class Decoder(nn.Module):
    """Sparse code-maps (B, L, m) -> image logits (B, C, H, W); weights of the grouped layer tied."""

    def __init__(self, encoder: Encoder, channels, width, scales, num_codes):
        super().__init__()
        self.encoder_ref = [encoder]  # tied weights, kept out of this module's parameters
        self.neck = encoder.neck
        self.width = width
        nblocks = len(scales)
        self.point = nn.Conv2d(num_codes, width * (nblocks + 1), 1)
        self.main = nn.ModuleList()
        self.skip = nn.ModuleList()
        outs = [width] * (nblocks - 1) + [channels]
        cin, acc = width, 1
        for s, cout in zip(reversed(scales), outs):
            acc *= s
            self.main.append(UpBlockMain(cin, cout, s))
            self.skip.append(UpBlockSkip(width, cout, acc))
            cin = cout

    def forward(self, code):
        weights = self.encoder_ref[0].grouped  # (L, n*n, m)
        b, l = code.shape[0], code.shape[1]
        x = torch.matmul(code.transpose(0, 1), weights.transpose(1, 2))  # (L, B, n*n)
        x = x.transpose(0, 1).reshape(b, l, self.neck, self.neck)
        x = self.point(x)
        w = self.width
        y = x[:, 0:w]
        last = len(self.main) - 1
        for i, (main, skip) in enumerate(zip(self.main, self.skip)):
            y = main(y) + skip(x[:, w * (i + 1) : w * (i + 2)])
            if i < last:
                y = F.leaky_relu(y)
        return y


class Autoencoder(nn.Module):
    def __init__(self, channels=3, size=64, width=24, scales=(1, 2, 1, 2, 1, 2), num_codes=16, code_dim=256, k=64):
        super().__init__()
        self.k = k
        self.encoder = Encoder(channels, size, width, list(scales), num_codes, code_dim)
        self.decoder = Decoder(self.encoder, channels, width, list(scales), num_codes)

    def forward(self, x, k=None):
        dense = self.encoder(x)
        code = top_k_magnitude(dense, k or self.k)
        return self.decoder(code), code


class ExportEncoder(nn.Module):
    """Encoder as exported: image in [0, 1] -> dense code-maps (no top-k)."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.encoder = ae.encoder

    def forward(self, image):
        return self.encoder(image)


class ExportDecoder(nn.Module):
    """Decoder as exported: sparse code-maps -> image in [0, 1] (sigmoid applied)."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.encoder = ae.encoder  # owns the tied grouped weights
        self.decoder = ae.decoder

    def forward(self, code):
        return torch.sigmoid(self.decoder(code))
