"""Writes the OIP binary-extension form of a v2 JSON infer body: the JSON part (each input with
parameters.binary_data_size, outputs asked in binary) then the raw little-endian tensor bytes.
Prints the JSON part's length (for Inference-Header-Content-Length).

Usage: binary_body.py V2_JSON OUT
"""
import json
import struct
import sys

DTYPES = {"FP32": "f", "FP64": "d", "INT64": "q", "INT32": "i"}

body = json.load(open(sys.argv[1]))
blobs = []
for inp in body["inputs"]:
    flat = []

    def walk(v):
        if isinstance(v, list):
            for x in v:
                walk(x)
        else:
            flat.append(v)

    walk(inp.pop("data"))
    blob = struct.pack("<%d%s" % (len(flat), DTYPES[inp["datatype"]]), *flat)
    inp["parameters"] = {"binary_data_size": len(blob)}
    blobs.append(blob)
body["parameters"] = {"binary_data_output": True}
head = json.dumps(body, separators=(",", ":")).encode()
with open(sys.argv[2], "wb") as f:
    f.write(head + b"".join(blobs))
print(len(head))
