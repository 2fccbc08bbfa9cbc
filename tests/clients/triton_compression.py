"""Scores mlp-small through the official Triton HTTP client with compressed requests and answers.

Usage: triton_compression.py URL EXPECTED_JSON [KEY]

With KEY, URL is a gateway whose endpoint named as the model takes KEY (`Authorization: Bearer`).

For gzip and deflate, with JSON and with binary tensors, the request body is compressed by the
client (`request_compression_algorithm`) and the answer is asked for compressed
(`response_compression_algorithm`); the outputs must match the expected file's within its
tolerance, and the client must have decompressed each answer (counted by wrapping the gzip and
zlib modules the client's result parser uses), so an answer sent uncompressed fails.
"""

import gzip
import json
import sys
import zlib

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http._infer_result as infer_result

# 3 expected rows repeated: 66 rows of 10 outputs, an answer well over the 1 KiB below which
# Sluice does not compress.
REPEAT = 22

decompressed = {"gzip": 0, "deflate": 0}


class Counting:
    """A module stand-in whose `decompress` counts its calls."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def decompress(self, data, *args, **kwargs):
        decompressed[self.name] += 1
        return self.module.decompress(data, *args, **kwargs)


infer_result.gzip = Counting(gzip, "gzip")
infer_result.zlib = Counting(zlib, "deflate")


def main():
    url, expected_path = sys.argv[1], sys.argv[2]
    auth = {"Authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
    with open(expected_path) as f:
        want = json.load(f)
    spec = want["inputs"][0]
    x = np.tile(np.array(spec["data"], dtype=np.float32).reshape(spec["shape"]), (REPEAT, 1))
    out_spec = want["outputs"][0]
    expected = np.tile(np.array(out_spec["data"], dtype=np.float32).reshape(out_spec["shape"]), (REPEAT, 1))
    tolerance = want["tolerance"]

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_ready(), "server not ready"
    for algorithm in ("gzip", "deflate"):
        for binary in (True, False):
            what = f"{algorithm}, {'binary' if binary else 'JSON'} tensors"
            inp = httpclient.InferInput(spec["name"], list(x.shape), spec["datatype"])
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput(out_spec["name"], binary_data=binary)
            before = decompressed[algorithm]
            result = client.infer(
                want["model"],
                [inp],
                outputs=[out],
                # A fresh dict each call: the client adds Inference-Header-Content-Length to the
                # one it is given, and a stale one would describe the next body wrongly.
                headers=dict(auth) if auth else None,
                request_compression_algorithm=algorithm,
                response_compression_algorithm=algorithm,
            )
            got = result.as_numpy(out_spec["name"])
            assert got is not None, f"{what}: no output"
            assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
            worst = float(np.max(np.abs(got - expected)))
            assert worst <= tolerance, f"{what}: off by {worst} (tolerance {tolerance})"
            assert decompressed[algorithm] == before + 1, f"{what}: the answer was not {algorithm}-compressed"
            print(f"ok: {what}: {got.shape[0]} rows within {worst:.2e}")
    client.close()


if __name__ == "__main__":
    main()
