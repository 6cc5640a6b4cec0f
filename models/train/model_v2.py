"""Model v2: a learned sparse code that starts from an 8x8 block DCT in YCbCr.

Encoder (image (B, 3, T, T) in [0, 1] -> dense code-maps (B, L, m)):
  1. centred YCbCr, orthonormal 8x8 block DCT per channel (fixed) -> (B, 192, T/8, T/8),
     divided by a per-coefficient scale measured on training tiles (fixed buffer);
  2. residual conv blocks over the block grid (3x3 across neighbouring blocks);
  3. space-to-depth by `group` (2): one code-map per 16x16-pixel region, 768 features;
  4. the last layer, non-linear: code = split(h) + A h + B gelu(C h). split: position j
     carries feature src[j] times a soft window of its magnitude; init_from_data picks the
     features most often among the region's k largest and splits each one needed in more
     than --split-rate of the tiles over several positions (one per magnitude band, windows
     summing to 1), so no position is needed in most tiles. A and B start at zero. Then a
     learned gain per (map, position) (exp(log_gain)) sets how likely each position is to
     be among the top k (initialised so every rate is near k/m, kept there by a loss).
  L = (T/8/group)^2 maps (16 for 64x64 tiles) of m dims each.

Top-k by magnitude (exactly k per map, signs kept) happens between encoder and decoder;
in the exported ONNX it is left to Rust.

Decoder (sparse code-maps (B, L, m) -> image): divides by the gain (tied), the mirror
non-linear layer (A' z + B' gelu(C' z), A' adding up each feature's positions at first),
depth-to-space, residual conv blocks over the block grid, inverse DCT, YCbCr -> RGB,
and a small residual pixel-domain refinement (replicate padding) that smooths block
and tile borders. Output not squashed (MSE training); the export clamps it to [0, 1].

At initialisation the network is the truncated block DCT with top-k per region, so
training on CPU starts near 30 dB instead of from noise.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ITU-R BT.601 full-range RGB -> YCbCr (centred), orthonormal-ish rows are not needed: exact inverse used.
RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def dct_basis(n=8):
    """(n*n, n, n) orthonormal 2-D DCT-II basis, frequencies in zig-zag-like order (by u+v, then u)."""
    d = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        c = math.sqrt((1 if u == 0 else 2) / n)
        for x in range(n):
            d[u, x] = c * math.cos((2 * x + 1) * u * math.pi / (2 * n))
    order = sorted(((u, v) for u in range(n) for v in range(n)), key=lambda t: (t[0] + t[1], t[0] if (t[0] + t[1]) % 2 else t[1]))
    return torch.stack([torch.outer(d[u], d[v]) for u, v in order]).float()


def top_k_magnitude(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the k largest magnitudes along the last axis, zeroes the rest; signs kept."""
    _, idx = torch.topk(x.abs(), k, dim=-1)
    mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return x * mask


def quantize_q8(code: torch.Tensor, noise: bool) -> torch.Tensor:
    """What ambishare's q8 codec does to the kept values: per map, magnitudes on 127 levels
    between (about) 0 and the largest. noise=True: additive uniform noise of the same size
    (training, differentiable); False: rounding (validation)."""
    mags = code.abs()
    hi = mags.amax(dim=-1, keepdim=True).clamp_min(1e-8)
    step = hi / 127.0
    if noise:
        q = mags + (torch.rand_like(mags) - 0.5) * step
    else:
        q = torch.round(mags / step) * step
    q = q.clamp_min(step * 0.5)
    return torch.where(code != 0, torch.sign(code) * q, torch.zeros_like(code))


class ResBlock(nn.Module):
    """x + conv1x1(gelu(conv3x3(x))), the last conv zero-initialised (starts as identity)."""

    def __init__(self, ch, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, hidden, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, ch, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(x)))


class NonLinearProjection(nn.Module):
    """y = A x + B gelu(C x) with 1x1 convs; B zero-initialised."""

    def __init__(self, cin, cout, hidden):
        super().__init__()
        self.lin = nn.Conv2d(cin, cout, 1, bias=True)
        self.c = nn.Conv2d(cin, hidden, 1)
        self.b = nn.Conv2d(hidden, cout, 1)
        nn.init.zeros_(self.lin.bias)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x):
        return self.lin(x) + self.b(F.gelu(self.c(x)))


class CodecV2(nn.Module):
    def __init__(self, size=64, dim=256, width=128, blocks=2, hidden=256, refine=16, group=2, y_keep=40, c_keep=12):
        super().__init__()
        assert size % (8 * group) == 0, "tile size must be a multiple of 8 * group"
        self.size, self.dim, self.group = size, dim, group
        self.grid = size // 8 // group
        self.maps = self.grid * self.grid
        feat = 192 * group * group
        self.register_buffer("rgb2ycc", RGB2YCC.clone())
        self.register_buffer("ycc2rgb", torch.linalg.inv(RGB2YCC))
        basis = dct_basis(8)  # (64, 8, 8)
        self.register_buffer("dct_w", basis.repeat(3, 1, 1).unsqueeze(1))  # (192, 1, 8, 8)
        self.register_buffer("coef_scale", torch.ones(1, 192, 1, 1))
        # encoder
        self.enc_blocks = nn.Sequential(*[ResBlock(192, width) for _ in range(blocks)])
        self.enc_proj = NonLinearProjection(feat, dim, hidden)
        nn.init.zeros_(self.enc_proj.lin.weight)  # the split path carries the code at first
        self.log_gain = nn.Parameter(torch.zeros(self.maps, dim))
        # decoder
        self.dec_proj = NonLinearProjection(dim, feat, hidden)
        self.dec_blocks = nn.Sequential(*[ResBlock(192, width) for _ in range(blocks)])
        self.ref1 = nn.Conv2d(3, refine, 3, padding=1, padding_mode="replicate")
        self.ref2 = nn.Conv2d(refine, refine, 3, padding=1, padding_mode="replicate")
        self.ref3 = nn.Conv2d(refine, 3, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.ref3.weight)
        nn.init.zeros_(self.ref3.bias)
        self._init_selection(y_keep, c_keep)

    def _init_selection(self, y_keep, c_keep):
        """Default (before init_from_data): position j is feature sel[j], Y coefficients 0..y_keep-1
        and Cb/Cr 0..c_keep-1 of each block of the region, no splitting."""
        g2 = self.group * self.group
        sel = []
        for ch, keep in ((0, y_keep), (1, c_keep), (2, c_keep)):
            for f in range(keep):
                for sub in range(g2):
                    sel.append((ch * 64 + f) * g2 + sub)  # pixel_unshuffle channel order: c * g2 + sub
        sel = (sel + list(range(len(sel), self.dim)))[: self.dim]
        self.register_buffer("src", torch.tensor(sel))
        self.register_buffer("edge_lo", torch.full((self.dim,), -1e4))
        self.register_buffer("edge_hi", torch.full((self.dim,), 1e4))
        self._set_linear()

    @torch.no_grad()
    def _set_linear(self):
        self.dec_proj.lin.weight.zero_()
        for j, s in enumerate(self.src.tolist()):
            self.dec_proj.lin.weight[s, j, 0, 0] = 1.0

    @torch.no_grad()
    def init_from_data(self, tiles, k, band=1.5, split_rate=0.3, iters=80):
        """Data-driven start, before any training:
        - coef_scale: per-coefficient std on `tiles`;
        - which DCT coefficients the m positions carry, by how often each is among the region's k
          largest (energy-optimal selection); a coefficient needed more often than `split_rate`
          gets n = ceil(rate / split_rate) positions, each carrying it only within one band of
          magnitudes (soft windows that sum to 1, so the decoder just adds them): no position is
          needed in most tiles;
        - log_gain: so that every position's rate is within `band` of k/m."""
        c = self._dct(tiles)
        std = c.transpose(0, 1).reshape(192, -1).std(dim=1).clamp_min(1e-4)
        self.coef_scale.copy_(std.view(1, 192, 1, 1))
        h = F.pixel_unshuffle(c, self.group)  # raw coefficients, (B, 768, g, g)
        feat = h.shape[1]
        raw = h.permute(0, 2, 3, 1).reshape(-1, feat)  # one row per region
        r = rates(raw.unsqueeze(1), k).squeeze(0)  # energy-selection rate of each feature
        hn = raw / self.coef_scale.flatten().repeat_interleave(self.group * self.group)
        order = torch.argsort(r, descending=True).tolist()
        src, lo, hi = [], [], []
        for f in order:
            if len(src) >= self.dim:
                break
            n = max(1, math.ceil(float(r[f]) / split_rate))
            n = min(n, self.dim - len(src))
            a = hn[:, f].abs()
            edges = [float(torch.quantile(a, 1.0 - float(r[f]) * (n - i) / n)) for i in range(1, n)]
            bounds = [-1e4] + edges + [1e4]
            for i in range(n):
                src.append(f)
                lo.append(bounds[i])
                hi.append(bounds[i + 1])
        self.src.copy_(torch.tensor(src))
        self.edge_lo.copy_(torch.tensor(lo))
        self.edge_hi.copy_(torch.tensor(hi))
        self._set_linear()
        self.log_gain.zero_()
        target = k / self.dim
        for _ in range(iters):
            dense = self.encode(tiles)
            dev = torch.log(rates(dense, k).clamp_min(1e-4) / target)
            out = dev.abs() > math.log(band) * 0.8
            if not out.any():
                break
            self.log_gain.sub_(torch.where(out, 0.25 * dev, torch.zeros_like(dev)))

    def split(self, h):
        """Position j = feature src[j] times its soft magnitude window."""
        x = h.index_select(1, self.src)  # (B, m, g, g)
        a = x.abs()
        lo, hi = self.edge_lo.view(1, -1, 1, 1), self.edge_hi.view(1, -1, 1, 1)
        t = 0.1 * torch.maximum(lo.abs(), hi.abs()).clamp(max=1.0) + 0.02
        w = torch.sigmoid((a - lo) / t) - torch.sigmoid((a - hi) / t)
        return x * w

    def _dct(self, x):
        ycc = torch.einsum("ij,bjhw->bihw", self.rgb2ycc, x - 0.5)
        return F.conv2d(ycc, self.dct_w, stride=8, groups=3)

    def encode(self, x):
        """(B, 3, T, T) in [0, 1] -> dense code-maps (B, L, m)."""
        c = self._dct(x) / self.coef_scale
        h = self.enc_blocks(c)
        h = F.pixel_unshuffle(h, self.group)
        z = self.split(h) + self.enc_proj(h)  # (B, m, g, g)
        b = z.shape[0]
        z = z.reshape(b, self.dim, self.maps).transpose(1, 2)  # (B, L, m), map = region, row-major
        return z * torch.exp(self.log_gain)

    def decode(self, code):
        """(B, L, m) sparse code-maps -> image (B, 3, T, T), not clamped."""
        b = code.shape[0]
        z = (code * torch.exp(-self.log_gain)).transpose(1, 2).reshape(b, self.dim, self.grid, self.grid)
        h = self.dec_proj(z)
        h = F.pixel_shuffle(h, self.group)
        c = self.dec_blocks(h) * self.coef_scale
        ycc = F.conv_transpose2d(c, self.dct_w, stride=8, groups=3)
        y = torch.einsum("ij,bjhw->bihw", self.ycc2rgb, ycc) + 0.5
        r = self.ref3(F.gelu(self.ref2(F.gelu(self.ref1(y)))))
        return y + r

    def forward(self, x, k):
        dense = self.encode(x)
        code = top_k_magnitude(dense, k)
        return self.decode(code), dense


def rates(dense, k):
    """Fraction of tiles in which each (map, position) is among the k largest magnitudes: (L, m)."""
    _, idx = torch.topk(dense.abs(), k, dim=-1)
    mask = torch.zeros_like(dense).scatter_(-1, idx, 1.0)
    return mask.mean(dim=0)


def soft_rates(dense, k, temp=0.15):
    """Differentiable version of `rates`: sigmoid of the magnitude against the per-tile threshold
    (midway between the k-th and (k+1)-th largest magnitude), temperature relative to it."""
    mags = dense.abs()
    top = torch.topk(mags, k + 1, dim=-1).values.detach()
    thr = 0.5 * (top[..., k - 1 : k] + top[..., k : k + 1])
    soft = torch.sigmoid((mags - thr) / (temp * thr + 1e-6))
    return soft.mean(dim=0)


class ExportEncoder(nn.Module):
    """Encoder as exported: image in [0, 1] -> dense code-maps (no top-k)."""

    def __init__(self, model: CodecV2):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode(image)


class ExportDecoder(nn.Module):
    """Decoder as exported: sparse code-maps -> image clamped to [0, 1]."""

    def __init__(self, model: CodecV2):
        super().__init__()
        self.model = model

    def forward(self, code):
        return self.model.decode(code).clamp(0.0, 1.0)


def build(cfg: dict) -> CodecV2:
    return CodecV2(size=cfg["size"], dim=cfg["dim"], width=cfg["width"], blocks=cfg["blocks"], hidden=cfg["hidden"],
                   refine=cfg["refine"], group=cfg["group"], y_keep=cfg["y_keep"], c_keep=cfg["c_keep"])
