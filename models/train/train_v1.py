"""Trains the sparsifying autoencoder on random tiles of any folder of images.

    python train_v1.py --data data/train --val data/val --out runs/photo64 --epochs 30

Each batch draws k uniformly in [k/4, k] and keeps the top ones, so decoding from
only the largest k_p real nonzeros (a preview key) degrades gracefully.
Checkpoints go to OUT/last.pt (every epoch) and OUT/best.pt (best validation
loss); running the same command again resumes from OUT/last.pt.
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model import Autoencoder, top_k_magnitude

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def load_pyramid(paths, size, scales=(1.0, 0.75, 0.5)):
    """Loads every image as uint8 CHW tensors at a few scales (more variety of detail per tile)."""
    out = []
    for p in paths:
        try:
            img = Image.open(p).convert("RGB")
        except Exception as exc:
            print(f"skip {p}: {exc}")
            continue
        for s in scales:
            w, h = int(img.width * s), int(img.height * s)
            if min(w, h) < size:
                continue
            im = img if s == 1.0 else img.resize((w, h), Image.LANCZOS)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous())
    if not out:
        raise SystemExit(f"no usable images (at least {size}x{size}) found")
    return out


class TileSampler:
    """Random crops with flips and colour jitter, images picked in proportion to sqrt(area)."""

    def __init__(self, images, size, seed, jitter=True):
        self.images = images
        self.size = size
        self.jitter = jitter
        self.rng = random.Random(seed)
        weights = np.array([math.sqrt(im.shape[1] * im.shape[2]) for im in images])
        self.cum = np.cumsum(weights / weights.sum())

    def one(self):
        im = self.images[min(int(np.searchsorted(self.cum, self.rng.random())), len(self.images) - 1)]
        _, h, w = im.shape
        y, x = self.rng.randint(0, h - self.size), self.rng.randint(0, w - self.size)
        t = im[:, y : y + self.size, x : x + self.size].float() / 255.0
        if self.rng.random() < 0.5:
            t = t.flip(2)
        if self.jitter:
            b = 1.0 + self.rng.uniform(-0.2, 0.2)
            c = 1.0 + self.rng.uniform(-0.2, 0.2)
            s = 1.0 + self.rng.uniform(-0.3, 0.3)
            grey = t.mean(0, keepdim=True)
            t = grey + (t - grey) * s
            t = (t - t.mean()) * c + t.mean()
            t = (t * b).clamp(0.0, 1.0)
        return t

    def batch(self, n):
        return torch.stack([self.one() for _ in range(n)])


def psnr(x, y):
    mse = F.mse_loss(x, y, reduction="none").flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean().item()


@torch.no_grad()
def validate(model, tiles, k, batch):
    model.eval()
    loss, ps = 0.0, {}
    for kk in (k, k // 2, k // 4):
        acc_p, acc_l = 0.0, 0.0
        for i in range(0, len(tiles), batch):
            x = tiles[i : i + batch].contiguous(memory_format=torch.channels_last)
            dense = model.encoder(x)
            logits = model.decoder(top_k_magnitude(dense, kk))
            acc_l += F.binary_cross_entropy_with_logits(logits, x, reduction="sum").item()
            acc_p += psnr(torch.sigmoid(logits), x) * x.shape[0]
        ps[kk] = acc_p / len(tiles)
        if kk == k:
            loss = acc_l / tiles.numel()
    model.train()
    return loss, ps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder of training images (searched recursively)")
    ap.add_argument("--val", type=Path, help="folder of validation images (default: 10%% of --data held out)")
    ap.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and log")
    ap.add_argument("--size", type=int, default=64, help="tile size (pixels)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=16, help="L, number of code-maps")
    ap.add_argument("--dim", type=int, default=256, help="m, dims per code-map")
    ap.add_argument("--k", type=int, default=64, help="nonzeros kept per code-map")
    ap.add_argument("--width", type=int, default=24, help="conv channels")
    ap.add_argument("--scales", default="1,2,1,2,1,2", help="down-sampling factors of the conv blocks")
    ap.add_argument("--epochs", type=int, default=30, help="total epochs (resuming continues up to this)")
    ap.add_argument("--tiles-per-epoch", type=int, default=20000)
    ap.add_argument("--val-tiles", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-k-frac", type=float, default=0.25, help="k per batch drawn in [k*frac, k]")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    scales = [int(s) for s in args.scales.split(",")]
    config = {
        "size": args.size, "channels": args.channels, "codes": args.codes, "dim": args.dim, "k": args.k,
        "width": args.width, "scales": scales,
    }

    paths = list_images(args.data)
    if args.val:
        val_paths = list_images(args.val)
    else:
        rng = random.Random(args.seed)
        val_paths = rng.sample(paths, max(1, len(paths) // 10))
        paths = [p for p in paths if p not in val_paths]
    train_images = load_pyramid(paths, args.size)
    val_images = load_pyramid(val_paths, args.size, scales=(1.0,))
    val_tiles = TileSampler(val_images, args.size, seed=12345, jitter=False).batch(args.val_tiles).to(device)
    print(f"{len(paths)} training images ({len(train_images)} with scales), {len(val_paths)} validation images, device {device}")

    model = Autoencoder(args.channels, args.size, args.width, scales, args.codes, args.dim, args.k).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    start_epoch, best = 0, float("inf")
    last = args.out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device)
        if ck["config"] != config:
            raise SystemExit(f"{last} was trained with {ck['config']}, not {config}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start_epoch, best = ck["epoch"], ck["best"]
        print(f"resumed from {last} at epoch {start_epoch}, best validation loss {best:.5f}")
    nparams = sum(p.numel() for p in model.parameters())
    print(f"parameters: {nparams}")

    sampler = TileSampler(train_images, args.size, seed=args.seed * 1000 + start_epoch)
    steps = args.tiles_per_epoch // args.batch
    kmin = max(1, int(round(args.k * args.min_k_frac)))
    log = open(args.out / "log.jsonl", "a")
    for epoch in range(start_epoch, args.epochs):
        t0, tl, tp = time.time(), 0.0, 0.0
        for step in range(steps):
            x = sampler.batch(args.batch).to(device).contiguous(memory_format=torch.channels_last)
            k = random.randint(kmin, args.k)
            logits, _ = model(x, k)
            loss = F.binary_cross_entropy_with_logits(logits, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tl += loss.item()
            tp += psnr(torch.sigmoid(logits.detach()), x)
            if step % 50 == 0:
                print(f"  epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        vl, vp = validate(model, val_tiles, args.k, args.batch)
        sched.step(vl)
        rec = {
            "epoch": epoch + 1, "train_loss": tl / steps, "train_psnr": tp / steps, "val_loss": vl,
            "val_psnr_k": vp[args.k], "val_psnr_k2": vp[args.k // 2], "val_psnr_k4": vp[args.k // 4],
            "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)
        ck = {"config": config, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
              "epoch": epoch + 1, "best": min(best, vl), "train_data": str(args.data)}
        if vl < best:
            best = vl
            torch.save(ck, args.out / "best.pt")
        torch.save(ck, args.out / "last.pt.tmp")
        Path(args.out / "last.pt.tmp").replace(last)


if __name__ == "__main__":
    main()
