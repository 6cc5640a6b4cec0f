#!/usr/bin/env python3
"""Builds the tiny ONNX fixture used by shared/tests/model_runner.rs.

The model is a linear autoencoder small enough to check by hand: tile 8,
3 channels, L=2 code maps of m=16 values. It needs only `onnx` and `numpy`
to build; `onnxruntime`, when installed, produces the expected outputs (and
they are cross-checked against numpy).

    /work/venv-train/py/bin/python shared/testdata/make_tiny_model.py

writes encoder.onnx, decoder.onnx, manifest.json and expected.json into
shared/testdata/tiny_model/. The output is deterministic (fixed seeds).
"""

import hashlib
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TILE, CHANNELS, MAPS, DIM, K, K_FAKE = 8, 3, 2, 16, 4, 4
PIXELS = CHANNELS * TILE * TILE  # 192
CODE = MAPS * DIM  # 32
OPSET = 18
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_model")


def weights() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    return (rng.standard_normal((PIXELS, CODE)) * 0.1).astype(np.float32)


def shape_const(name: str, dims: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(dims, dtype=np.int64), name)


def save(graph: onnx.GraphProto, path: str) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ambishare-make-tiny-model",
        ir_version=9,
    )
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def encoder(w: np.ndarray) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["dense"]),
        helper.make_node("Reshape", ["dense", "code_shape"], ["code"]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, TILE, TILE])],
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["N", MAPS, DIM])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            shape_const("flat_shape", [-1, PIXELS]),
            shape_const("code_shape", [-1, MAPS, DIM]),
        ],
    )


def decoder(w: np.ndarray) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Reshape", ["code", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "Wt"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "image_shape"], ["image"]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_decoder",
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["N", MAPS, DIM])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, TILE, TILE])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(w.T), "Wt"),
            shape_const("flat_shape", [-1, CODE]),
            shape_const("image_shape", [-1, CHANNELS, TILE, TILE]),
        ],
    )


def reference(w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    code = (x.reshape(-1, PIXELS) @ w).reshape(-1, MAPS, DIM)
    image = 1.0 / (1.0 + np.exp(-(code.reshape(-1, CODE) @ w.T)))
    return code.astype(np.float32), image.reshape(-1, CHANNELS, TILE, TILE).astype(np.float32)


def run_onnxruntime(enc_path: str, dec_path: str, x: np.ndarray):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    enc = ort.InferenceSession(enc_path, opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(dec_path, opts, providers=["CPUExecutionProvider"])
    (code,) = enc.run(["code"], {"image": x})
    (image,) = dec.run(["image"], {"code": code})
    return code, image


def main() -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    w = weights()
    enc_path = os.path.join(OUT_DIR, "encoder.onnx")
    dec_path = os.path.join(OUT_DIR, "decoder.onnx")
    enc_bytes = save(encoder(w), enc_path)
    dec_bytes = save(decoder(w), dec_path)

    manifest = {
        "format": "ambishare-model/1",
        "name": "tiny8",
        "tile_size": TILE,
        "channels": CHANNELS,
        "maps": MAPS,
        "dim": DIM,
        "k": K,
        "k_fake": K_FAKE,
        "preview_k": [2],
        "encoder": {
            "file": "encoder.onnx",
            "sha256": hashlib.sha256(enc_bytes).hexdigest(),
            "input": "image",
            "output": "code",
        },
        "decoder": {
            "file": "decoder.onnx",
            "sha256": hashlib.sha256(dec_bytes).hexdigest(),
            "input": "code",
            "output": "image",
        },
        "value_distribution": {"kind": "test-fixture"},
    }
    with open(os.path.join(OUT_DIR, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    x = np.random.default_rng(7).random((2, CHANNELS, TILE, TILE), dtype=np.float32)
    code, image = reference(w, x)
    ran = run_onnxruntime(enc_path, dec_path, x)
    if ran is not None:
        np.testing.assert_allclose(ran[0], code, atol=1e-5)
        np.testing.assert_allclose(ran[1], image, atol=1e-5)
        code, image = ran

    expected = {
        "n": 2,
        "input_shape": list(x.shape),
        "input": [float(v) for v in x.ravel()],
        "code_shape": list(code.shape),
        "code": [float(v) for v in code.ravel()],
        "image_shape": list(image.shape),
        "image": [float(v) for v in image.ravel()],
    }
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f)
        f.write("\n")
    print(f"wrote {OUT_DIR} (onnxruntime check: {'yes' if ran is not None else 'skipped'})")


if __name__ == "__main__":
    main()
