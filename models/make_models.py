#!/usr/bin/env python3
"""Writes Sluice's bundled ONNX models and their expected outputs, with fixed seeds.

  mlp-small      input FP32 [batch,64]  -> Gemm 64->128 -> Relu -> Gemm 128->10 -> Softmax -> output
  mlp-large      input FP32 [batch,784] -> Gemm 784->1024 -> Relu -> Gemm 1024->1024 -> Relu
                 -> Gemm 1024->10 -> output (logits)
  tabular-mixed  features FP32 [batch,8] + category INT64 [batch] (embedding lookup, 16 ids)
                 -> score FP32 [batch,1] (sigmoid) and flag BOOL [batch,1] (score > 0.5)
  dtype-echo     one Identity per protocol datatype: in_<DT> [batch,2] -> out_<DT> (for tests)

mlp-small and mlp-large are the same graphs and weights as the peer benchmark's models
(shared/bench/models/make_models.py: same seed rule, opset 13, IR 8), so benchmarks compare like
with like. Expected outputs in expected/<model>.json come from a NumPy forward pass, independent
of ONNX Runtime, so the tests check the engine rather than themselves.

Usage: python make_models.py [outdir]   (needs numpy and onnx; see README "Bundled models")
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
OPSET = 13
IR_VERSION = 8


def finish(graph, name):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bench/make_models.py")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp(name, dims, softmax):
    """Dense ReLU network; weights He-initialised from the benchmark's seed rule."""
    rng = np.random.default_rng(SEED + len(dims) * 1000 + dims[0])
    nodes, inits, weights = [], [], []
    cur = "input"
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((din, dout)) * np.sqrt(2.0 / din)).astype(np.float32)
        b = (rng.standard_normal((dout,)) * 0.01).astype(np.float32)
        weights.append((w, b))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [f"gemm{i}"], name=f"Gemm{i}"))
        cur = f"gemm{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i}"], name=f"Relu{i}"))
            cur = f"relu{i}"
    if softmax:
        nodes.append(helper.make_node("Softmax", [cur], ["output"], axis=-1, name="Softmax"))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["output"], name="Out"))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        initializer=inits)

    def forward(x):
        h = x.astype(np.float64)
        for i, (w, b) in enumerate(weights):
            h = h @ w.astype(np.float64) + b.astype(np.float64)
            if i < len(weights) - 1:
                h = np.maximum(h, 0.0)
        if softmax:
            e = np.exp(h - h.max(axis=-1, keepdims=True))
            h = e / e.sum(axis=-1, keepdims=True)
        return {"output": h.astype(np.float32)}

    return finish(graph, name), forward


def tabular_mixed():
    rng = np.random.default_rng(SEED + 7)
    emb = (rng.standard_normal((16, 4)) * 0.5).astype(np.float32)
    w1 = (rng.standard_normal((12, 16)) * np.sqrt(2.0 / 12)).astype(np.float32)
    b1 = (rng.standard_normal((16,)) * 0.01).astype(np.float32)
    w2 = (rng.standard_normal((16, 1)) * np.sqrt(1.0 / 16)).astype(np.float32)
    b2 = np.zeros((1,), np.float32)
    half = np.array([0.5], np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(emb, "E"), (w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"), (half, "half")]]
    nodes = [
        helper.make_node("Gather", ["E", "category"], ["emb"], axis=0),
        helper.make_node("Concat", ["features", "emb"], ["joined"], axis=1),
        helper.make_node("Gemm", ["joined", "W1", "B1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2", "B2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
        helper.make_node("Greater", ["score", "half"], ["flag"]),
    ]
    graph = helper.make_graph(
        nodes, "tabular-mixed",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("category", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 1])],
        initializer=inits)

    def forward(features, category):
        joined = np.concatenate([features.astype(np.float64), emb[category].astype(np.float64)], axis=1)
        h = np.maximum(joined @ w1 + b1, 0.0)
        score = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))
        return {"score": score.astype(np.float32), "flag": score > 0.5}

    return finish(graph, "tabular-mixed"), forward


# protocol datatype -> (ONNX element type, numpy dtype)
DTYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_), "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16), "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64), "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16), "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64), "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32), "FP64": (TensorProto.DOUBLE, np.float64),
}


def dtype_echo():
    nodes = [helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in DTYPES]
    graph = helper.make_graph(
        nodes, "dtype-echo",
        [helper.make_tensor_value_info(f"in_{d}", t, ["batch", 2]) for d, (t, _) in DTYPES.items()],
        [helper.make_tensor_value_info(f"out_{d}", t, ["batch", 2]) for d, (t, _) in DTYPES.items()])
    return finish(graph, "dtype-echo")


def tensor_json(name, arr, datatype):
    data = arr.reshape(-1)
    if arr.dtype == np.bool_:
        data = [bool(x) for x in data]
    elif np.issubdtype(arr.dtype, np.integer):
        data = [int(x) for x in data]
    else:
        data = [float(x) for x in data]
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def write_expected(outdir, name, inputs, outputs, tolerance):
    kinds = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}
    doc = {
        "model": name,
        "tolerance": tolerance,
        "inputs": [tensor_json(k, v, kinds[v.dtype]) for k, v in inputs.items()],
        "outputs": [tensor_json(k, v, kinds[v.dtype]) for k, v in outputs.items()],
    }
    os.makedirs(os.path.join(outdir, "expected"), exist_ok=True)
    with open(os.path.join(outdir, "expected", f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    rng = np.random.default_rng(SEED + 99)
    for name, dims, softmax in [("mlp-small", [64, 128, 10], True), ("mlp-large", [784, 1024, 1024, 10], False)]:
        model, forward = mlp(name, dims, softmax)
        onnx.save(model, os.path.join(outdir, f"{name}.onnx"))
        x = rng.standard_normal((3, dims[0])).astype(np.float32)
        write_expected(outdir, name, {"input": x}, forward(x), 1e-4)

    model, forward = tabular_mixed()
    onnx.save(model, os.path.join(outdir, "tabular-mixed.onnx"))
    features = rng.standard_normal((4, 8)).astype(np.float32)
    category = np.array([0, 3, 9, 15], np.int64)
    write_expected(outdir, "tabular-mixed", {"features": features, "category": category},
                   forward(features, category), 1e-4)

    onnx.save(dtype_echo(), os.path.join(outdir, "dtype-echo.onnx"))
    for f in sorted(os.listdir(outdir)):
        if f.endswith(".onnx"):
            print(f"{f}: {os.path.getsize(os.path.join(outdir, f))} bytes")


if __name__ == "__main__":
    main()
