"""Exports a trained checkpoint to single-file ONNX and writes the manifest.

    python export_v1.py --checkpoint runs/photo64/best.pt --data data --out ../photo64 --name photo64

Writes OUT/encoder.onnx (image [N,C,T,T] in [0,1] -> dense code-maps [N,L,m], no
top-k: top-k runs in Rust), OUT/decoder.onnx (sparse code-maps -> image in [0,1]),
and OUT/manifest.json (sizes, L, m, k, k_fake, tile size, fitted value
distribution per map, training data description, test set, sha256 of each file).
Checks onnxruntime against PyTorch on random and real tiles and prints the
largest absolute difference.
"""

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model import Autoencoder, ExportDecoder, ExportEncoder, top_k_magnitude
from train_v1 import TileSampler, list_images, load_pyramid


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
def value_distribution(model, tiles, k, m):
    """Per code-map statistics of the kept (real) values on training tiles.

    threshold_mean: mean over tiles of the smallest kept magnitude (λ);
    sigma_ctg: the σ that k/m implies for that λ (the paper's choice, FakeModel::paper);
    sigma_mle: σ of a zero-mean Gaussian tail above λ fitted to the kept values;
    kept_abs_mean: mean kept magnitude; position_rate: how often each position is kept.
    """
    dense = model.encoder(tiles)
    code = top_k_magnitude(dense, k)
    mags = code.abs()
    kept = mags > 0
    lam = torch.where(kept, mags, torch.full_like(mags, float("inf"))).min(dim=2).values  # (N, L)
    per_map = []
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(1.0 - k / m)).item()
    for l in range(code.shape[1]):
        lam_l = lam[:, l]
        vals = mags[:, l][kept[:, l]]
        ratio = (mags[:, l] / lam_l[:, None])[kept[:, l]]
        # Moment fit of a Gaussian tail: E[x^2 | x > λ] = σ² + λ σ φ(λ/σ)/Q(λ/σ); solve by bisection on σ/λ.
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
        "tiles": int(tiles.shape[0]),
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
    ap.add_argument("--preview-k", default="16,32", help="k_p of the preview tier first (k/4), then other reported k_p")
    args = ap.parse_args()

    ck = torch.load(args.checkpoint, map_location="cpu")
    cfg = ck["config"]
    model = Autoencoder(cfg["channels"], cfg["size"], cfg["width"], cfg["scales"], cfg["codes"], cfg["dim"], cfg["k"])
    model.load_state_dict(ck["model"])
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    t, c, L, m, k = cfg["size"], cfg["channels"], cfg["codes"], cfg["dim"], cfg["k"]

    enc_path, dec_path = args.out / "encoder.onnx", args.out / "decoder.onnx"
    export(ExportEncoder(model), torch.rand(2, c, t, t), enc_path, "image", "code")
    example_code = top_k_magnitude(torch.randn(2, L, m), k)
    export(ExportDecoder(model), example_code, dec_path, "code", "image")

    # onnxruntime against PyTorch, on random tiles and on real ones (batch 5: not the export batch).
    train_images = load_pyramid(list_images(args.data / "train"), t, scales=(1.0,))
    tiles = TileSampler(train_images, t, seed=7, jitter=False).batch(2048)
    enc = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), providers=["CPUExecutionProvider"])
    diffs = {}
    with torch.no_grad():
        for name, x in (("random", torch.rand(5, c, t, t)), ("photo", tiles[:5])):
            dense_pt = model.encoder(x).numpy()
            dense_ort = enc.run(None, {"image": x.numpy()})[0]
            code = top_k_magnitude(torch.from_numpy(dense_pt), k)
            img_pt = torch.sigmoid(model.decoder(code)).numpy()
            img_ort = dec.run(None, {"code": code.numpy()})[0]
            diffs[name] = {"encoder": float(np.abs(dense_pt - dense_ort).max()), "decoder": float(np.abs(img_pt - img_ort).max())}
    print("max abs diff onnxruntime vs PyTorch:", json.dumps(diffs))

    with torch.no_grad():
        dist = value_distribution(model, tiles, k, m)

    sources = json.loads((args.data / "sources.json").read_text())
    log_path = args.checkpoint.parent / "log.jsonl"
    history = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    manifest = {
        "format": "ambishare-model/1",
        "name": args.name,
        "tile_size": t,
        "channels": c,
        "maps": L,
        "dim": m,
        "k": k,
        "k_fake": args.k_fake,
        "preview_k": [int(v) for v in args.preview_k.split(",")],
        "encoder": {"file": enc_path.name, "sha256": sha256(enc_path), "input": "image", "output": "code"},
        "decoder": {"file": dec_path.name, "sha256": sha256(dec_path), "input": "code", "output": "image"},
        "value_distribution": dist,
        "architecture": {
            "paper": "Ferdowsi et al., ICASSP'20, sparsifying layers on convolutional groups",
            "width": cfg["width"],
            "scales": cfg["scales"],
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "training": {
            "data": "random 64x64 crops (flips, colour jitter, scales 1, 0.75, 0.5) of the photos below",
            "train_files": [s for s in sources if s["file"].startswith("train/")],
            "validation_files": [s for s in sources if s["file"].startswith("val/")],
            "epochs": ck["epoch"],
            "k_per_batch": f"uniform in [{max(1, round(k * 0.25))}, {k}]",
            "loss": "binary cross-entropy on the sigmoid output, Adam",
            "last_epoch": history[-1] if history else None,
        },
        "test_set": [s for s in sources if s["file"].startswith("test/")],
        "onnx_check_max_abs_diff": diffs,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = enc_path.stat().st_size + dec_path.stat().st_size
    print(f"wrote {args.out} ({total / 1e6:.2f} MB of ONNX)")


if __name__ == "__main__":
    main()
