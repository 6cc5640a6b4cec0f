"""Trains model v2 (model_v2.py) on random tiles of a folder of images, resumably.

    python train.py --data DATA/train --val DATA/val

DATA is what prepare_data.py writes; DATA/train/<source>/ are sampled with per-source
weights (--source-weight). Each batch draws k uniformly in [k*min_k_frac, k], keeps the
top k by magnitude per map, simulates the q8 value codec, and decodes. Loss: MSE (pixels
within --border px of the tile border weighted --border-weight) + --rate-weight times a
term that keeps every (map, position)'s soft activation rate within --rate-band of k/m.

Checkpoints: RUN/last.pt (every epoch, with the optimizer; RUN = --out) and, whenever
validation improves, CKPT/<name>-best.pt (model, optimizer moments in fp16, every argument;
under 20 MB) with CKPT/<name>-progress.json (every epoch's figures). Running again resumes
from RUN/last.pt, or else from CKPT/<name>-best.pt (what is in the repo); the arguments
saved there are used for every flag not given on the command line.
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model_v2 import build, quantize_q8, rates, soft_rates, top_k_magnitude

HERE = Path(__file__).resolve().parent
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
ARCH_KEYS = ("size", "dim", "k", "width", "blocks", "hidden", "refine", "group", "y_keep", "c_keep")


def add_args(ap, defaults=True):
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=d(None), help="training images; one sub-folder per source")
    ap.add_argument("--val", type=Path, default=d(None), help="validation images (default: 10%% of --data held out)")
    ap.add_argument("--name", default=d("v2"), help="checkpoint name: CKPT/<name>-best.pt")
    ap.add_argument("--out", type=Path, default=d(None), help="run folder for last.pt (default /work/main/.data/runs/<name>)")
    ap.add_argument("--ckpt-dir", type=Path, default=d(HERE / "checkpoints"), help="where <name>-best.pt goes")
    # architecture (fixed once trained)
    ap.add_argument("--size", type=int, default=d(64), help="tile size (pixels)")
    ap.add_argument("--dim", type=int, default=d(256), help="m, dims per code-map")
    ap.add_argument("--k", type=int, default=d(64), help="nonzeros kept per code-map")
    ap.add_argument("--width", type=int, default=d(128), help="hidden channels of the block-grid residual blocks")
    ap.add_argument("--blocks", type=int, default=d(2), help="residual blocks in encoder and decoder each")
    ap.add_argument("--hidden", type=int, default=d(256), help="hidden width of the non-linear code projections")
    ap.add_argument("--refine", type=int, default=d(16), help="channels of the pixel-domain refinement")
    ap.add_argument("--group", type=int, default=d(2), help="8x8 blocks per code-map side (L = (T/8/group)^2)")
    ap.add_argument("--y-keep", type=int, default=d(40), help="default selection (before data init)")
    ap.add_argument("--c-keep", type=int, default=d(12), help="default selection (before data init)")
    # training
    ap.add_argument("--epochs", type=int, default=d(1000), help="total epochs (resuming continues up to this)")
    ap.add_argument("--tiles-per-epoch", type=int, default=d(12800))
    ap.add_argument("--val-tiles", type=int, default=d(1024))
    ap.add_argument("--batch", type=int, default=d(64))
    ap.add_argument("--lr", type=float, default=d(3e-4))
    ap.add_argument("--gain-lr", type=float, default=d(5e-3), help="learning rate of the per-position gains")
    ap.add_argument("--min-lr", type=float, default=d(2e-5))
    ap.add_argument("--patience", type=int, default=d(4), help="epochs without improvement before halving lr")
    ap.add_argument("--min-k-frac", type=float, default=d(0.25), help="k per batch drawn in [k*frac, k]")
    ap.add_argument("--rate-weight", type=float, default=d(1.0))
    ap.add_argument("--rate-band", type=float, default=d(1.5), help="rates within this factor of k/m are free")
    ap.add_argument("--rms-weight", type=float, default=d(0.1), help="keeps each position's RMS above --rms-floor of its map's largest")
    ap.add_argument("--rms-floor", type=float, default=d(0.05))
    ap.add_argument("--sign-weight", type=float, default=d(0.0),
                    help="weight of the term that evens out each (map, position)'s signs (0: off)")
    ap.add_argument("--sign-band", type=float, default=d(0.1),
                    help="|E[x | active]| / E[|x| | active] per (map, position) below this is free")
    ap.add_argument("--split-rate", type=float, default=d(0.25), help="data init: split coefficients needed more often")
    ap.add_argument("--border", type=int, default=d(2), help="border ring width (px) weighted in the loss")
    ap.add_argument("--border-weight", type=float, default=d(2.0))
    ap.add_argument("--grey-frac", type=float, default=d(0.1), help="fraction of training tiles made grey")
    ap.add_argument("--no-q8", action="store_true", default=d(False), help="do not simulate the q8 value codec")
    ap.add_argument("--source-weight", choices=["sqrt", "area", "equal"], default=d("sqrt"),
                    help="sampling weight of each source folder: sqrt of its pixel area (default), area, or equal")
    ap.add_argument("--scales", default=d("1,0.75,0.5"), help="image scales tiles are cut from")
    ap.add_argument("--threads", type=int, default=d(2), help="torch CPU threads (0: leave default)")
    ap.add_argument("--device", default=d("auto"), choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=d(1))
    ap.add_argument("--max-steps", type=int, default=d(0), help="stop after this many steps in this run (smoke tests)")
    ap.add_argument("--max-hours", type=float, default=d(0.0), help="stop after this long in this run (0: no limit)")
    ap.add_argument("--init-from", type=Path, default=d(None),
                    help="start a new run (--name) from this checkpoint's weights and arguments")
    ap.add_argument("--fresh", action="store_true", default=d(False), help="ignore existing checkpoints")


def list_images(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def load_images(paths, size, scales):
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
    return out


class TileSampler:
    """Random crops: a source by its weight, then an image of it by area; flips, mild colour
    jitter, a fraction made grey."""

    def __init__(self, groups, size, seed, jitter=True, grey_frac=0.0):
        self.groups = [g for g in groups if g[1]]
        self.size, self.jitter, self.grey_frac = size, jitter, grey_frac
        self.rng = random.Random(seed)
        w = np.array([g[0] for g in self.groups], dtype=np.float64)
        self.src_cum = np.cumsum(w / w.sum())
        self.img_cum = []
        for _, ims in self.groups:
            a = np.array([im.shape[1] * im.shape[2] for im in ims], dtype=np.float64)
            self.img_cum.append(np.cumsum(a / a.sum()))

    def one(self):
        g = min(int(np.searchsorted(self.src_cum, self.rng.random())), len(self.groups) - 1)
        ims, cum = self.groups[g][1], self.img_cum[g]
        im = ims[min(int(np.searchsorted(cum, self.rng.random())), len(ims) - 1)]
        _, h, w = im.shape
        y, x = self.rng.randint(0, h - self.size), self.rng.randint(0, w - self.size)
        t = im[:, y : y + self.size, x : x + self.size].float() / 255.0
        if self.jitter:
            if self.rng.random() < 0.5:
                t = t.flip(2)
            b = 1.0 + self.rng.uniform(-0.15, 0.15)
            c = 1.0 + self.rng.uniform(-0.15, 0.15)
            s = 1.0 + self.rng.uniform(-0.2, 0.2)
            grey = t.mean(0, keepdim=True)
            t = grey + (t - grey) * s
            t = ((t - t.mean()) * c + t.mean()) * b
            t = t.clamp(0.0, 1.0)
        if self.grey_frac and self.rng.random() < self.grey_frac:
            t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0).repeat(3, 1, 1)
        return t

    def batch(self, n):
        return torch.stack([self.one() for _ in range(n)])


def source_groups(root: Path, size, scales, weighting):
    """[(weight, [images])] per source folder (first path component under root)."""
    by = {}
    for p in list_images(root):
        rel = p.relative_to(root)
        by.setdefault(rel.parts[0] if len(rel.parts) > 1 else ".", []).append(p)
    groups = []
    for src, paths in sorted(by.items()):
        ims = load_images(paths, size, scales)
        area = sum(im.shape[1] * im.shape[2] for im in ims)
        weight = {"sqrt": math.sqrt(area), "area": float(area), "equal": 1.0}[weighting] if ims else 0.0
        groups.append((weight, ims))
        print(f"  source {src}: {len(paths)} photos, {len(ims)} with scales, {area / 1e6:.1f} Mpx")
    total = sum(g[0] for g in groups)
    print("  tile shares: " + ", ".join(f"{s}={g[0] / total:.2f}" for s, g in zip(sorted(by), groups)))
    return groups


def sign_figures(dense, k):
    """What the sign prior gives an attacker who knows the support: per (map, position), the
    mean value among the tiles where it is active over the mean magnitude (sign_bias_max: the
    largest), and the share of active values whose sign is the position's usual one
    (sign_prior_acc; 0.5 when signs are even, in-sample so slightly above it by chance)."""
    _, idx = torch.topk(dense.abs(), k, dim=-1)
    mask = torch.zeros_like(dense).scatter_(-1, idx, 1.0)
    v = dense * mask
    bias = v.sum(0) / v.abs().sum(0).clamp_min(1e-12)  # (L, m)
    usual = torch.sign(torch.sign(v).sum(0))
    agree = ((torch.sign(v) == usual) & (mask > 0)).sum()
    return {"sign_bias_max": float(bias.abs().max()), "sign_prior_acc": float(agree / mask.sum())}


def sign_balance_surrogate(dense, k, ema, decay, band):
    """Linear surrogate of a penalty on |E[x | active]| / E[|x| | active] per (map, position):
    the batch's soft estimate b is pushed against the sign of a running (EMA) estimate, in
    proportion to how far that estimate is outside the band (one batch holds too few active
    values per position to penalise |b| itself). The gradient reaches the active values only
    (soft activity and the denominator are held fixed), so it shifts them rather than
    switching positions off. Updates ema in place."""
    mags = dense.abs()
    top = torch.topk(mags, k + 1, dim=-1).values.detach()
    thr = 0.5 * (top[..., k - 1 : k] + top[..., k : k + 1])
    soft = torch.sigmoid((mags - thr) / (0.15 * thr + 1e-6))
    soft = soft.detach()  # move the values, not which positions are active
    b = (soft * dense).sum(0) / (soft * mags).sum(0).detach().clamp_min(1e-8)  # (L, m)
    with torch.no_grad():
        ema.mul_(decay).add_((1 - decay) * b.detach())
        excess = F.relu(ema.abs() - band) * torch.sign(ema)
    return (excess * b).sum() / ema.numel() * 100.0


def border_mask(size, border, device):
    m = torch.zeros(size, size, dtype=torch.bool, device=device)
    m[:border, :] = m[-border:, :] = m[:, :border] = m[:, -border:] = True
    return m


def psnr_of(mse):
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def evaluate(model, tiles, k, batch, border=2, q8=True):
    """Validation figures: PSNR at k, k/2, k/4 (q8 rounding), border vs interior PSNR at k,
    activation-rate spread at k, smallest m-th/1st singular value ratio over maps, grey leak."""
    model.eval()
    bm = border_mask(tiles.shape[-1], border, tiles.device)
    out = {}
    dense_all = []
    for kk in (k, k // 2, k // 4):
        se, se_b, se_i = [], [], []
        for i in range(0, len(tiles), batch):
            x = tiles[i : i + batch]
            dense = model.encode(x)
            if kk == k:
                dense_all.append(dense)
            code = top_k_magnitude(dense, kk)
            if q8:
                code = quantize_q8(code, noise=False)
            y = model.decode(code).clamp(0, 1)
            e = (y - x) ** 2
            se.append(e.flatten(1).mean(1))
            if kk == k:
                se_b.append(e[..., bm].mean().item())
                se_i.append(e[..., ~bm].mean().item())
        mse_tile = torch.cat(se)
        out[f"psnr_k{kk}"] = psnr_of(float(mse_tile.mean()))  # over all tiles together (like a whole image)
        out[f"psnr_tile_mean_k{kk}"] = float((10 * torch.log10(1.0 / mse_tile.clamp_min(1e-10))).mean())
        if kk == k:
            out["psnr_border"], out["psnr_interior"] = psnr_of(np.mean(se_b)), psnr_of(np.mean(se_i))
    dense = torch.cat(dense_all)
    out.update(sign_figures(dense, k))
    r = rates(dense, k) / (k / dense.shape[-1])
    out["rate_min"], out["rate_max"] = float(r.min()), float(r.max())
    sv = torch.linalg.svdvals(dense.transpose(0, 1))  # (L, m)
    out["sv_ratio_min"] = float((sv[:, -1] / sv[:, 0]).min())
    g = (0.299 * tiles[:, 0] + 0.587 * tiles[:, 1] + 0.114 * tiles[:, 2]).unsqueeze(1).repeat(1, 3, 1, 1)[:256]
    y = model.decode(top_k_magnitude(model.encode(g), k)).clamp(0, 1)
    out["grey_leak_255"] = float((y - y.mean(1, keepdim=True)).abs().amax(1).mean() * 255)
    model.train()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    args = ap.parse_args()
    given = vars(add_args_parse(sys.argv[1:]))
    ckpt_dir = args.ckpt_dir
    best_path = ckpt_dir / f"{args.name}-best.pt"
    out = args.out or Path("/work/main/.data/runs") / args.name
    last_path = out / "last.pt"
    ck = None
    init_from = None
    if not args.fresh:
        for p in (last_path, best_path):
            if p.exists():
                if args.init_from is not None:  # resuming would silently ignore --init-from
                    raise SystemExit(f"--init-from: run {args.name} already has {p}; choose a new --name")
                ck = torch.load(p, map_location="cpu", weights_only=False)
                print(f"resuming from {p} (epoch {ck['epoch']})")
                break
        if ck is None and args.init_from is not None:
            ck = torch.load(args.init_from, map_location="cpu", weights_only=False)
            init_from = args.init_from
            print(f"new run {args.name} from the weights of {init_from} (epoch {ck['epoch']})")
    if ck is not None:  # saved arguments, overridden by the ones given now (not the architecture)
        saved = dict(ck["args"])
        for key, v in given.items():
            if key in ARCH_KEYS and saved.get(key) != v:
                raise SystemExit(f"--{key} {v}: the checkpoint was trained with {saved.get(key)}")
            saved[key] = v
        if init_from is not None:
            saved.update(name=args.name, init_from=str(init_from), out=None)
        for key, v in saved.items():
            if key in ("data", "val", "out", "ckpt_dir", "init_from") and v is not None:
                v = Path(v)
            setattr(args, key, v)
        args.fresh = False
    if args.data is None:
        raise SystemExit("--data is required")
    args.out = out
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    cfg = {key: getattr(args, key) for key in ARCH_KEYS}
    scales = [float(s) for s in str(args.scales).split(",")]

    print(f"training data {args.data}:")
    if args.val:
        groups = source_groups(args.data, args.size, scales, args.source_weight)
        val_images = load_images(list_images(args.val), args.size, (1.0,))
    else:
        paths = list_images(args.data)
        held = set(random.Random(args.seed).sample(paths, max(1, len(paths) // 10)))
        groups = [(1.0, load_images([p for p in paths if p not in held], args.size, scales))]
        val_images = load_images(sorted(held), args.size, (1.0,))
    val_tiles = TileSampler([(1.0, val_images)], args.size, seed=12345, jitter=False).batch(args.val_tiles).to(device)

    model = build(cfg).to(device)
    start_epoch, best, elapsed, history = 0, -1e9, 0.0, []
    opt_state = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        if init_from is None:
            start_epoch, best, elapsed = ck["epoch"], ck["best"], ck.get("elapsed", 0.0)
            history = ck.get("history", [])
            opt_state = ck.get("opt")
        else:
            print("start:", json.dumps(evaluate(model, val_tiles, args.k, 256, args.border, not args.no_q8)))
    else:
        init = TileSampler(groups, args.size, seed=args.seed + 99, jitter=False).batch(4096).to(device)
        model.init_from_data(init, args.k, band=args.rate_band, split_rate=args.split_rate)
        print("data init:", json.dumps(evaluate(model, val_tiles, args.k, 256, args.border, not args.no_q8)))
    model = model.to(memory_format=torch.channels_last)
    gain = [model.log_gain]
    rest = [p for n, p in model.named_parameters() if n != "log_gain"]
    opt = torch.optim.Adam([{"params": rest, "lr": args.lr}, {"params": gain, "lr": args.gain_lr}])
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)
            for st in opt.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        st[key] = st[key].float()
        except Exception as exc:
            print(f"optimizer state not restored ({exc}); starting Adam afresh")
    if ck is not None and "lr_scale" in ck and init_from is None:
        for g, base in zip(opt.param_groups, (args.lr, args.gain_lr)):
            g["lr"] = base * ck["lr_scale"]
    bad_epochs = ck.get("bad_epochs", 0) if ck and init_from is None else 0
    sign_ema = ck.get("sign_ema") if ck and init_from is None else None
    sign_ema = torch.zeros(model.maps, args.dim, device=device) if sign_ema is None else sign_ema.to(device)
    print(f"parameters: {sum(p.numel() for p in model.parameters())}, maps {model.maps}, device {device}")

    sampler = TileSampler(groups, args.size, seed=args.seed * 1000 + start_epoch, grey_frac=args.grey_frac)
    steps = args.tiles_per_epoch // args.batch
    kmin = max(1, int(round(args.k * args.min_k_frac)))
    target = args.k / args.dim
    weight = torch.ones(args.size, args.size, device=device)
    weight[border_mask(args.size, args.border, device)] = args.border_weight
    weight = weight / weight.mean()
    run_t0, total_steps = time.time(), 0
    for epoch in range(start_epoch, args.epochs):
        t0, tl, tr = time.time(), 0.0, 0.0
        stop = False
        for step in range(steps):
            x = sampler.batch(args.batch).to(device).contiguous(memory_format=torch.channels_last)
            k = random.randint(kmin, args.k)
            dense = model.encode(x)
            code = top_k_magnitude(dense, k)
            if not args.no_q8:
                code = quantize_q8(code, noise=True)
            y = model.decode(code)
            mse = (((y - x) ** 2) * weight).mean()
            dev = torch.log(soft_rates(dense, args.k).clamp_min(1e-4) / target).abs()
            rate_loss = (F.relu(dev - math.log(args.rate_band)) ** 2).mean()
            rms = dense.pow(2).mean(0).add(1e-12).sqrt()  # (L, m)
            rel = torch.log(rms / rms.amax(dim=-1, keepdim=True).detach())
            rms_loss = (F.relu(math.log(args.rms_floor) - rel) ** 2).mean()
            loss = 1000.0 * mse + args.rate_weight * rate_loss + args.rms_weight * rms_loss
            if args.sign_weight:
                loss = loss + args.sign_weight * sign_balance_surrogate(dense, args.k, sign_ema, 0.95, args.sign_band)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rest, 5.0)
            opt.step()
            tl += mse.item()
            tr += rate_loss.item()
            total_steps += 1
            if step % 25 == 0:
                print(f"  epoch {epoch + 1} step {step}/{steps} k {k} psnr~{psnr_of(mse.item()):.2f} rate_loss {rate_loss.item():.4f} "
                      f"({(time.time() - t0) / (step + 1):.2f} s/batch)", flush=True)
            if (args.max_steps and total_steps >= args.max_steps) or (
                    args.max_hours and time.time() - run_t0 > args.max_hours * 3600):
                stop = True
                break
        n = step + 1
        elapsed += time.time() - t0
        val = evaluate(model, val_tiles, args.k, 256, args.border, not args.no_q8)
        score = val[f"psnr_k{args.k}"] - (0 if 0.5 <= val["rate_min"] and val["rate_max"] <= 2.0 else 3.0)
        if args.sign_weight:  # 0.3 dB per point of sign-prior accuracy above 53%
            score -= 30.0 * max(0.0, val["sign_prior_acc"] - 0.53)
        improved = score > best
        if improved:
            best, bad_epochs = score, 0
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience and opt.param_groups[0]["lr"] > args.min_lr:
                for g in opt.param_groups:
                    g["lr"] *= 0.5
                bad_epochs = 0
        rec = {"epoch": epoch + 1, "steps": n, "train_psnr": psnr_of(tl / n), "train_rate_loss": tr / n, **val,
               "score": score, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
               "s_per_batch": (time.time() - t0) / n, "elapsed_hours": elapsed / 3600, "best": improved}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        state = {"format": "ambishare-train-v2", "args": {kk: (str(v) if isinstance(v, Path) else v) for kk, v in vars(args).items()},
                 "config": cfg, "model": model.state_dict(), "epoch": epoch + 1, "best": best, "elapsed": elapsed,
                 "history": history, "lr_scale": opt.param_groups[0]["lr"] / args.lr, "bad_epochs": bad_epochs,
                 "argv": sys.argv, "torch": torch.__version__, "sign_ema": sign_ema.cpu()}
        torch.save({**state, "opt": opt.state_dict()}, out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(last_path)
        if improved:
            small = opt.state_dict()
            small["state"] = {i: {key: (v.half() if torch.is_tensor(v) and v.dim() > 0 else v) for key, v in st.items()}
                              for i, st in small["state"].items()}
            torch.save({**state, "opt": small}, best_path.with_suffix(".pt.tmp"))
            best_path.with_suffix(".pt.tmp").replace(best_path)
            mb = best_path.stat().st_size / 1e6
            if mb > 20:
                print(f"warning: {best_path} is {mb:.1f} MB, above 20 MB")
        progress = {"name": args.name, "checkpoint": best_path.name, "best_score": best,
                    "best_epoch": max([r["epoch"] for r in history if r["best"]], default=None),
                    "elapsed_hours": elapsed / 3600,
                    "epochs": [{key: (round(v, 4) if isinstance(v, float) else v) for key, v in r.items()
                                if key in ("epoch", "psnr_k%d" % args.k, "psnr_k%d" % (args.k // 2), "psnr_k%d" % (args.k // 4),
                                           "psnr_border", "psnr_interior", "rate_min", "rate_max", "sv_ratio_min",
                                           "grey_leak_255", "psnr_tile_mean_k%d" % args.k, "sign_bias_max", "sign_prior_acc", "train_psnr", "s_per_batch", "elapsed_hours", "lr", "best")}
                               for r in history]}
        (ckpt_dir / f"{args.name}-progress.json").write_text(json.dumps(progress, indent=1) + "\n")
        if stop:
            break


def add_args_parse(argv):
    ap = argparse.ArgumentParser(add_help=False)
    add_args(ap, defaults=False)
    return ap.parse_args(argv)


if __name__ == "__main__":
    main()
