#!/usr/bin/env python3
"""Writes the bundled scikit-learn models (exported with skl2onnx) and their expected outputs.

  iris-labels     features FP32 [batch,4] -> LogisticRegression with string class labels, ZipMap as
                  columns: output_label BYTES [batch] and one FP32 [batch] output per class
                  (ssetosa, sversicolor, svirginica)
  ticket-router   fields BYTES [batch,2] (channel, product) -> OneHotEncoder -> LogisticRegression:
                  label BYTES [batch], probabilities FP32 [batch,3] (billing, sales, tech)

Both are what skl2onnx makes of common scikit-learn pipelines: string labels out, string
features in. The data is fixed (iris ships with scikit-learn; the tickets are generated from a
seed), so the models are reproducible with the pinned versions in requirements-sklearn.txt.
Expected outputs in expected/<model>.json are ONNX Runtime's (Python), checked against
scikit-learn's own predictions before they are written.

Usage: pip install -r requirements-sklearn.txt; python make_sklearn.py [outdir]
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

SEED = 20261203
OPSETS = {"": 18, "ai.onnx.ml": 3}
CHANNELS = ["email", "phone", "chat", "web"]
PRODUCTS = ["invoice", "router", "plan", "refund", "upgrade"]


def iris_labels():
    iris = load_iris()
    x = iris.data.astype(np.float32)
    y = np.array(iris.target_names)[iris.target]
    model = LogisticRegression(max_iter=1000).fit(x, y)
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, 4]))],
                  options={id(model): {"zipmap": "columns"}}, target_opset=OPSETS)
    sample = x[[0, 60, 120, 149]]
    return onx, {"features": sample}, model.predict(sample)


def ticket_router():
    rng = np.random.default_rng(SEED)
    n = 400
    fields = np.stack([rng.choice(CHANNELS, n), rng.choice(PRODUCTS, n)], axis=1).astype(object)
    team = {"invoice": "billing", "refund": "billing", "plan": "sales", "upgrade": "sales", "router": "tech"}
    labels = np.array([team[p] if rng.random() > 0.1 else rng.choice(["billing", "sales", "tech"])
                       for p in fields[:, 1]])
    model = Pipeline([("encode", OneHotEncoder(handle_unknown="ignore")),
                      ("classify", LogisticRegression(max_iter=1000))]).fit(fields, labels)
    onx = to_onnx(model, initial_types=[("fields", StringTensorType([None, 2]))],
                  options={id(model.steps[-1][1]): {"zipmap": False}}, target_opset=OPSETS)
    sample = np.array([["email", "invoice"], ["chat", "router"], ["web", "upgrade"],
                       ["phone", "unknown product"]], dtype=object)
    return onx, {"fields": sample}, model.predict(sample)


def tensor_json(name, arr):
    flat = arr.reshape(-1)
    if arr.dtype == object:
        datatype, data = "BYTES", [str(v) for v in flat]
    elif arr.dtype == np.float32:
        datatype, data = "FP32", [float(v) for v in flat]
    else:
        raise ValueError(f"{name}: unexpected dtype {arr.dtype}")
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(outdir, "expected"), exist_ok=True)
    for name, make in [("iris-labels", iris_labels), ("ticket-router", ticket_router)]:
        onx, inputs, predicted = make()
        path = os.path.join(outdir, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, inputs)))
        assert list(outputs[names[0]]) == list(predicted), f"{name}: ONNX and scikit-learn disagree"
        doc = {
            "model": name,
            "tolerance": 1e-5,
            "inputs": [tensor_json(k, v) for k, v in inputs.items()],
            "outputs": [tensor_json(k, v) for k, v in outputs.items()],
        }
        with open(os.path.join(outdir, "expected", f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"{name}.onnx: {os.path.getsize(path)} bytes; outputs {names}")


if __name__ == "__main__":
    main()
