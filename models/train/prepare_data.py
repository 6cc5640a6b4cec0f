"""Builds the whole training / validation / test set from packages, in one command.

    python prepare_data.py --out /work/main/.data/v2

Sources (see ../../../shared/DATA.md of the project guide):
  - the ~355 natural photos of `shared/data/fetch_photos.sh` (Debian gcompris-qt-data,
    enlightenment-data, lomiri-wallpapers-16.04, mate-backgrounds, plasma-workspace-wallpapers,
    lxqt-themes, tuxpaint-data), one folder per package; run here unless --photos names a
    folder where it already ran;
  - today's (v1) training photos: scikit-image's colour sample photos and the photos of
    Debian's opencv-doc (examples/data/), downloaded with `apt-get download opencv-doc`
    unless --opencv-doc names an unpacked copy.

Writes OUT/train/<source>/*.png, OUT/val/<source>/*.png, OUT/test/*.png and
OUT/sources.json. Every photo is downscaled to a long side of at most --max-side
(1024) pixels. train.py samples the sources of OUT/train with weights (default:
proportional to the square root of each source's pixel area, so gcompris, which
holds most of the photos, gives about a third of the tiles instead of most of them).

The test set is never trained on: the 10 test photos of fetch_photos.sh (sporco's
barbara, kodim23, monarch, sail, tulips; libjxl's flower, hdr_room and three
500px photos) plus today's 8 (opencv-doc baboon, butterfly, fruits, home, messi5,
orange; scikit-learn china, flower). Any training or validation photo that looks
like a test photo (16x16 thumbnail correlation > 0.97) is dropped as well.
Validation photos: about one photo in 12 of each source, chosen by a hash of its
name (so the split is stable), plus opencv-doc's aero3, squirrel_cls, lena, building.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
FETCH = Path(os.environ.get("AMBISHARE_FETCH_PHOTOS", "/work/shared/data/fetch_photos.sh"))
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

# Today's test photos (v1), held out as well.
TEST_OPENCV = ["baboon.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "messi5.jpg", "orange.jpg"]
VAL_OPENCV = ["aero3.jpg", "squirrel_cls.jpg", "lena.jpg", "building.jpg"]
# Not photographs (charts, logos, text, masks, calibration patterns): left out entirely.
SKIP_OPENCV = {
    "alphabet_36.txt", "alphabet_94.txt", "chessboard.png", "digits.png", "gradient.png", "imageTextN.png",
    "imageTextR.png", "LinuxLogo.jpg", "WindowsLogo.jpg", "mask.png", "ml.png", "notes.png", "opencv-logo.png",
    "opencv-logo-white.png", "sudoku.png", "text_defocus.jpg", "text_motion.jpg", "aloeGT.png", "templ.png",
    "tmpl.png", "box.png", "box_in_scene.png", "ellipses.jpg", "detect_blob.png", "pic1.png", "pic2.png",
    "pic3.png", "pic4.png", "pic5.png", "pic6.png", "cards.png", "licenseplate_motion.jpg",
}
SKIMAGE_COLOUR = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
                  "hubble_deep_field", "immunohistochemistry", "retina", "cat", "stereo_motorcycle", "lily",
                  "kidney", "skin", "camera", "moon", "grass", "gravel", "brick", "clock", "coins"]
MIN_SIDE = 64
VAL_EVERY = 12


def to_rgb(arr: np.ndarray):
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return None
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            arr = (arr * 255.0).round().astype(np.uint8)
        elif lo >= 0.0 and hi <= 255.0:
            arr = arr.round().astype(np.uint8)
        else:
            return None
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] < 3:
        return None
    return np.ascontiguousarray(arr[:, :, :3])


def downscale(arr: np.ndarray, max_side: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    s = max_side / max(h, w)
    im = Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    return np.asarray(im)


def thumb(arr: np.ndarray) -> np.ndarray:
    g = np.asarray(Image.fromarray(arr).convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64).ravel()
    g = g - g.mean()
    return g / (np.linalg.norm(g) + 1e-9)


def is_val(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % VAL_EVERY == 0


def load(path: Path):
    try:
        return to_rgb(np.asarray(Image.open(path).convert("RGB")))
    except Exception as exc:
        print(f"skip {path}: {exc}")
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--photos", type=Path, help="output folder of fetch_photos.sh (fetched into OUT/raw-photos if absent)")
    ap.add_argument("--opencv-doc", type=Path, help="root of an unpacked opencv-doc package (downloaded if absent)")
    ap.add_argument("--max-side", type=int, default=1024)
    args = ap.parse_args()
    out = args.out
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ambishare-data-"))

    photos = args.photos or out / "raw-photos"
    if not (photos / "train").is_dir() or not (photos / "test").is_dir():
        print(f"fetching photos into {photos} with {FETCH}")
        subprocess.run(["bash", str(FETCH), str(photos)], check=True)
    opencv = args.opencv_doc
    if opencv is None:
        print("downloading opencv-doc")
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True)
        deb = next(tmp.glob("opencv-doc_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "opencv-doc")], check=True)
        opencv = tmp / "opencv-doc"

    # (split, source, stem, array, origin) for every photo
    items = []
    for p in sorted((photos / "test").iterdir()):
        if p.suffix.lower() in IMAGE_EXTS:
            origin = "sporco 0.2.2.post1 (PyPI) sporco/data" if p.stem in {"barbara", "kodim23", "monarch", "sail", "tulips"} \
                else "Debian libjxl-testdata"
            items.append(("test", None, f"fetch_{p.stem}", load(p), f"{origin}/{p.name}"))
    for src_dir in sorted(d for d in (photos / "train").iterdir() if d.is_dir()):
        for p in sorted(src_dir.rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS:
                split = "val" if is_val(p.name) else "train"
                items.append((split, src_dir.name, p.stem, load(p), f"fetch_photos.sh {src_dir.name}/{p.name}"))

    import skimage
    import skimage.data as sd

    for name in SKIMAGE_COLOUR:
        if not hasattr(sd, name):
            continue
        try:
            img = getattr(sd, name)()
        except Exception as exc:  # some loaders need a download: skip them
            print(f"skip skimage.{name}: {exc.__class__.__name__}")
            continue
        if isinstance(img, tuple):
            img = img[0]
        items.append(("train", "skimage", name, to_rgb(img), f"scikit-image {skimage.__version__} skimage.data.{name}()"))

    data_dir = next(opencv.rglob("examples/data"))
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png") or path.name in SKIP_OPENCV:
            continue
        if re.fullmatch(r"(left|right)\d\d\.jpg", path.name):  # chessboard calibration shots
            continue
        split = "test" if path.name in TEST_OPENCV else "val" if path.name in VAL_OPENCV else "train"
        items.append((split, None if split == "test" else "opencv", f"opencv_{path.stem}", load(path),
                      f"Debian opencv-doc 4.6.0 examples/data/{path.name}"))

    from sklearn.datasets import load_sample_images
    import sklearn

    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        items.append(("test", None, f"sklearn_{Path(fname).stem}", to_rgb(img),
                      f"scikit-learn {sklearn.__version__} load_sample_images() {os.path.basename(fname)}"))

    items = [it for it in items if it[3] is not None and min(it[3].shape[:2]) >= MIN_SIDE]
    test_thumbs = [thumb(it[3]) for it in items if it[0] == "test"]
    sources, dropped = [], []
    seen = set()
    for split, source, stem, arr, origin in items:
        if split != "test":
            t = thumb(arr)
            if any(float(t @ u) > 0.97 for u in test_thumbs):
                dropped.append(origin)
                continue
            digest = hashlib.sha256(arr.tobytes()).hexdigest()
            if digest in seen:  # exact duplicates inside the training photos
                continue
            seen.add(digest)
        arr = downscale(arr, args.max_side) if split != "test" else arr
        rel = Path(split) / (source or "") / f"{stem}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(out / rel)
        sources.append({"file": str(rel), "source": source, "origin": origin, "width": int(arr.shape[1]),
                        "height": int(arr.shape[0])})

    (out / "sources.json").write_text(json.dumps(sources, indent=1))
    for split in ("train", "val", "test"):
        rows = [s for s in sources if s["file"].startswith(split + "/")]
        by = {}
        for s in rows:
            by[s["source"]] = by.get(s["source"], 0) + 1
        print(split, len(rows), json.dumps(by))
    if dropped:
        print("dropped as near-duplicates of a test photo:", dropped)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
