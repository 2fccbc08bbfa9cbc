"""Scores the scikit-learn string models through the official Triton HTTP client and compares
every answer with ONNX Runtime's own (Python) on the same model files.

Usage: triton_strings.py URL MODELS_DIR [KEY]

With KEY, URL is a gateway with one endpoint per model, named as the model, whose key auth takes
KEY (sent as `Authorization: Bearer KEY`).

iris-labels (FP32 in, a BYTES label and one FP32 output per class out, ZipMap as columns) and
ticket-router (BYTES in, BYTES label and FP32 probabilities out), with string tensors sent and
received both as JSON and in the binary extension, the requests gzip-compressed; and an input the
model cannot take (numbers for strings) answered with a 400 the client reports.
"""

import os
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

INPUTS = {
    "iris-labels": {"features": np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.9, 3.1, 5.4, 2.1]],
                                         dtype=np.float32)},
    "ticket-router": {"fields": np.array([["email", "invoice"], ["chat", "router"], ["web", "upgrade"],
                                          ["phone", "never seen"], ["web", "refund"]], dtype=object)},
}
TRITON_TYPES = {np.dtype(np.float32): "FP32", np.dtype(object): "BYTES"}


def main():
    url, models_dir = sys.argv[1], sys.argv[2]
    auth = {"Authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_ready(), "server not ready"
    for model, inputs in INPUTS.items():
        session = ort.InferenceSession(os.path.join(models_dir, f"{model}.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        want = dict(zip(names, session.run(None, inputs)))
        for binary in (True, False):
            what = f"{model}, {'binary' if binary else 'JSON'} tensors, gzip"
            infer_inputs = []
            for name, value in inputs.items():
                inp = httpclient.InferInput(name, list(value.shape), TRITON_TYPES[value.dtype])
                inp.set_data_from_numpy(value, binary_data=binary)
                infer_inputs.append(inp)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
            result = client.infer(
                model,
                infer_inputs,
                outputs=outputs,
                # A fresh dict each call: the client adds Inference-Header-Content-Length to the
                # one it is given, and a stale one would describe the next body wrongly.
                headers=dict(auth) if auth else None,
                request_compression_algorithm="gzip",
            )
            for name in names:
                got, expected = result.as_numpy(name), want[name]
                assert got is not None, f"{what}: no output {name}"
                assert got.shape == expected.shape, f"{what}: {name} shape {got.shape}, expected {expected.shape}"
                if expected.dtype == object:
                    # The client gives BYTES as Python bytes; ONNX Runtime gives str.
                    got_text = [g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)]
                    assert got_text == list(expected.reshape(-1)), f"{what}: {name} {got_text} != {list(expected)}"
                else:
                    worst = float(np.max(np.abs(got - expected)))
                    assert worst <= 1e-5, f"{what}: {name} off by {worst}"
            print(f"ok: {what}: labels {[str(x) for x in want[names[0]]]}")
    bad = httpclient.InferInput("fields", [1, 2], "FP32")
    bad.set_data_from_numpy(np.array([[1, 2]], dtype=np.float32), binary_data=False)
    try:
        client.infer("ticket-router", [bad], headers=dict(auth) if auth else None)
        raise AssertionError("numbers for a string input were accepted")
    except InferenceServerException as e:
        assert "BYTES" in str(e), f"the error does not name the datatype: {e}"
        print(f"ok: numbers for strings refused: {e}")
    client.close()


if __name__ == "__main__":
    main()
