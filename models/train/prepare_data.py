"""Collects the training and test photos that these machines can have offline.

Sources (see ../shared/DATA.md of the project guide):
  - scikit-image's bundled colour sample photos (skimage.data.*);
  - the photos of Debian's opencv-doc package (examples/data/), unpacked with
    `apt-get download opencv-doc && dpkg -x opencv-doc_*.deb DIR`;
  - scikit-learn's two sample photos (china, flower), always held out.

Writes DIR/train/*.png, DIR/val/*.png and DIR/test/*.png plus DIR/sources.json.
The test set is fixed (TEST_OPENCV + scikit-learn's two) and never trained on.

    python prepare_data.py --opencv-doc /path/to/unpacked/opencv-doc --out data
"""

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

# Named opencv-doc photos held out as the test set (with scikit-learn's china and flower).
TEST_OPENCV = ["baboon.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "messi5.jpg", "orange.jpg"]
# Held out from training to watch validation loss; not part of the test set.
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
                  "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "cat", "logo",
                  "stereo_motorcycle", "lily", "kidney", "skin", "binary_blobs", "page", "camera",
                  "moon", "grass", "gravel", "brick", "text", "horse", "clock", "coins"]
SKIMAGE_SKIP = {"colorwheel", "logo", "binary_blobs", "page", "text", "horse"}
MIN_SIDE = 64


def to_rgb(arr: np.ndarray) -> np.ndarray | None:
    if arr.dtype != np.uint8:
        arr = np.asarray(arr)
        if arr.dtype == bool:
            return None
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= 1.0 and lo >= 0.0:
            arr = (arr * 255.0).round().astype(np.uint8)
        else:
            return None
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] < 3:
        return None
    return arr[:, :, :3]


def save(arr, path, sources, split, origin):
    if arr is None or min(arr.shape[0], arr.shape[1]) < MIN_SIDE:
        return
    Image.fromarray(arr).save(path)
    sources.append({"file": f"{split}/{path.name}", "origin": origin, "width": arr.shape[1], "height": arr.shape[0]})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opencv-doc", type=Path, required=True, help="root of the unpacked opencv-doc package")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for split in ("train", "val", "test"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    sources = []

    import skimage
    import skimage.data as sd

    for name in SKIMAGE_COLOUR:
        if name in SKIMAGE_SKIP or not hasattr(sd, name):
            continue
        try:
            img = getattr(sd, name)()
        except Exception as exc:  # some loaders need a download: skip them
            print(f"skip skimage.{name}: {exc.__class__.__name__}")
            continue
        if isinstance(img, tuple):
            img = img[0]
        save(to_rgb(img), args.out / "train" / f"skimage_{name}.png", sources, "train",
             f"scikit-image {skimage.__version__} skimage.data.{name}()")

    data_dir = next(args.opencv_doc.rglob("examples/data"))
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png") or path.name in SKIP_OPENCV:
            continue
        if re.fullmatch(r"(left|right)\d\d\.jpg", path.name):  # chessboard calibration shots
            continue
        split = "test" if path.name in TEST_OPENCV else "val" if path.name in VAL_OPENCV else "train"
        arr = to_rgb(np.asarray(Image.open(path).convert("RGB")))
        save(arr, args.out / split / f"opencv_{path.stem}.png", sources, split,
             f"Debian opencv-doc 4.6.0 examples/data/{path.name}")

    from sklearn.datasets import load_sample_images
    import sklearn

    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        stem = Path(fname).stem
        save(to_rgb(img), args.out / "test" / f"sklearn_{stem}.png", sources, "test",
             f"scikit-learn {sklearn.__version__} load_sample_images() {os.path.basename(fname)}")

    (args.out / "sources.json").write_text(json.dumps(sources, indent=1))
    for split in ("train", "val", "test"):
        print(split, sum(1 for s in sources if s["file"].startswith(split + "/")))


if __name__ == "__main__":
    main()
