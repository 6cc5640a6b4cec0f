"""Exports a model v2 checkpoint to single-file ONNX and writes the manifest.

    python export.py --checkpoint checkpoints/v2-best.pt --data DATA --out ../photo64 --name photo64

Writes OUT/encoder.onnx (image [N,3,T,T] in [0,1] -> dense code-maps [N,L,m], no
top-k: top-k runs in Rust), OUT/decoder.onnx (sparse code-maps -> image in [0,1]),
and OUT/manifest.json (format ambishare-model/1: sizes, L, m, k, k_fake, tile size,
fitted value distribution per map, training data, test set, sha256 of each file).
Checks onnxruntime against PyTorch on random and real tiles (batch 5, not the export
batch) and FAILS (exit 1, files removed) when they differ by more than --tolerance.
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_v2 import ExportDecoder, ExportEncoder, build, top_k_magnitude
from train import TileSampler, list_images, load_images


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(module, example, path, input_name, output_name):
    module.eval()
    # Export with a batch of 2: a batch of 1 gets the batch axis fixed to 1.
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes={input_name: {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=18,
        dynamo=True,
        external_data=False,
    )


NOTE = (
    "statistics of the real (kept) values on training tiles. ambishare draws each map's fakes from the "
    "complementary truncated Gaussian with λ = that map's smallest kept magnitude and σ fitted to its "
    "real values (FakeModel::fitted), at positions weighted by position_rate, and scrambles the real values' "
    "signs; sigma_ctg = λ / (√2 erfc⁻¹(k/m)) is the paper's choice (FakeModel::paper)"
)


@torch.no_grad()
def value_distribution(dense_all, k, m):
    """Per code-map statistics of the kept (real) values on training tiles (see NOTE)."""
    code = top_k_magnitude(dense_all, k)
    mags = code.abs()
    kept = mags > 0
    lam = torch.where(kept, mags, torch.full_like(mags, float("inf"))).min(dim=2).values  # (N, L)
    per_map = []
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(1.0 - k / m)).item()
    for l in range(code.shape[1]):
        lam_l = lam[:, l]
        vals = mags[:, l][kept[:, l]]
        ratio = (mags[:, l] / lam_l[:, None])[kept[:, l]]
        m2 = float((ratio**2).mean())
        lo, hi = 1e-3, 1e3
        for _ in range(100):
            s = math.sqrt(lo * hi)
            t = 1.0 / s
            q = 0.5 * math.erfc(t / math.sqrt(2))
            phi = math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
            pred = s * s + s * phi / max(q, 1e-300)
            lo, hi = (s, hi) if pred < m2 else (lo, s)
        per_map.append({
            "threshold_mean": float(lam_l.mean()),
            "sigma_ctg": float(lam_l.mean()) / z,
            "sigma_mle": float(lam_l.mean()) * math.sqrt(lo * hi),
            "kept_abs_mean": float(vals.mean()),
            "kept_abs_max": float(vals.max()),
        })
    position_rate = kept.float().mean(dim=0)  # (L, m)
    return {
        "kind": "complementary-truncated-gaussian",
        "note": NOTE,
        "tiles": int(code.shape[0]),
        "per_map": per_map,
        "position_rate": [[round(float(r), 5) for r in row] for row in position_rate],
        "position_rate_min": float(position_rate.min()),
        "position_rate_max": float(position_rate.max()),
        "position_rate_expected": k / m,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="folder made by prepare_data.py (train/, val/, test/, sources.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="photo64")
    ap.add_argument("--k-fake", type=int, default=64)
    ap.add_argument("--preview-k", default="", help="k_p of the preview tiers (default: k/4,k/2)")
    ap.add_argument("--tiles", type=int, default=10000, help="training tiles for the value statistics and the rank check")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |onnxruntime - PyTorch|")
    args = ap.parse_args()

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    t, L, m, k = cfg["size"], model.maps, cfg["dim"], cfg["k"]
    preview = [int(v) for v in args.preview_k.split(",")] if args.preview_k else [k // 4, k // 2]

    enc_path, dec_path = args.out / "encoder.onnx", args.out / "decoder.onnx"
    export(ExportEncoder(model).eval(), torch.rand(2, 3, t, t), enc_path, "image", "code")
    example_code = top_k_magnitude(torch.randn(2, L, m), k)
    export(ExportDecoder(model).eval(), example_code, dec_path, "code", "image")

    # onnxruntime against PyTorch, on random tiles and on real ones (batch 5: not the export batch).
    train_images = load_images(list_images(args.data / "train"), t, (1.0,))
    tiles = TileSampler([(1.0, train_images)], t, seed=7, jitter=False).batch(args.tiles)
    enc = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), providers=["CPUExecutionProvider"])
    diffs = {}
    with torch.no_grad():
        for name, x in (("random", torch.rand(5, 3, t, t)), ("photo", tiles[:5])):
            dense_pt = model.encode(x)
            dense_ort = enc.run(None, {"image": x.numpy()})[0]
            code = top_k_magnitude(dense_pt, k)
            img_pt = model.decode(code).clamp(0, 1).numpy()
            img_ort = dec.run(None, {"code": code.numpy()})[0]
            diffs[name] = {"encoder": float(np.abs(dense_pt.numpy() - dense_ort).max()),
                           "decoder": float(np.abs(img_pt - img_ort).max())}
    print("max abs diff onnxruntime vs PyTorch:", json.dumps(diffs))
    worst = max(v for d in diffs.values() for v in d.values())
    if not worst <= args.tolerance:
        enc_path.unlink()
        dec_path.unlink()
        raise SystemExit(f"FAIL: onnxruntime and PyTorch differ by {worst:.3g} > tolerance {args.tolerance}")

    with torch.no_grad():
        dense_all = torch.cat([model.encode(tiles[i : i + 500]) for i in range(0, len(tiles), 500)])
        dist = value_distribution(dense_all, k, m)
        sv = torch.linalg.svdvals(dense_all.transpose(0, 1))
        sv_ratio = (sv[:, -1] / sv[:, 0]).tolist()
    print(f"rank check over {len(tiles)} tiles: smallest m-th/1st singular value ratio {min(sv_ratio):.4f}; "
          f"position rate {dist['position_rate_min']:.3f}..{dist['position_rate_max']:.3f} (k/m = {k / m:.3f})")

    sources = json.loads((args.data / "sources.json").read_text())
    history = ck.get("history", [])
    tr = ck["args"]
    manifest = {
        "format": "ambishare-model/1",
        "name": args.name,
        "tile_size": t,
        "channels": 3,
        "maps": L,
        "dim": m,
        "k": k,
        "k_fake": args.k_fake,
        "preview_k": preview,
        "encoder": {"file": enc_path.name, "sha256": sha256(enc_path), "input": "image", "output": "code"},
        "decoder": {"file": dec_path.name, "sha256": sha256(dec_path), "input": "code", "output": "image"},
        "value_distribution": dist,
        "architecture": {
            "kind": "v2: learned code from an 8x8 block DCT in YCbCr (models/train/model_v2.py)",
            "config": cfg,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dense_code_sv_ratio_min": min(sv_ratio),
        },
        "training": {
            "data": f"random {t}x{t} crops (flips, colour jitter, {tr.get('grey_frac')} grey, scales {tr.get('scales')}) "
                    f"of the photos below, sources weighted by {tr.get('source_weight')}",
            "train_files": [s for s in sources if s["file"].startswith("train/")],
            "validation_files": [s for s in sources if s["file"].startswith("val/")],
            "epochs": ck["epoch"],
            "elapsed_hours": ck.get("elapsed", 0.0) / 3600,
            "k_per_batch": f"uniform in [{max(1, round(k * tr.get('min_k_frac', 0.25)))}, {k}]",
            "loss": f"MSE (border {tr.get('border')} px x{tr.get('border_weight')}) + {tr.get('rate_weight')} x rate-band "
                    f"loss (band {tr.get('rate_band')}), q8 simulated: {not tr.get('no_q8')}, Adam",
            "arguments": tr,
            "last_epoch": history[-1] if history else None,
        },
        "test_set": [s for s in sources if s["file"].startswith("test/")],
        "onnx_check_max_abs_diff": diffs,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = enc_path.stat().st_size + dec_path.stat().st_size
    print(f"wrote {args.out} ({total / 1e6:.2f} MB of ONNX)")


if __name__ == "__main__":
    sys.exit(main())
