#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the examples below.

Run by hand after changing the examples (the JWT seeds need the `cryptography` package); the
seeds are committed, and CI only reads them. Each seed follows its target's input format, which
the target's doc comment describes.
"""
import base64
import hashlib
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "seeds"


def write(target, seeds):
    folder = ROOT / target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def ctl(step, small_limit=False, flag=False):
    """The http1 targets' control byte: bytes per read (1-64), body limit, chunked-alone/HEAD."""
    return bytes([(step - 1) | (0x40 if small_limit else 0) | (0x80 if flag else 0)])


INFER = json.dumps({"id": "1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2]}]})

requests = {
    "get": "GET /v2/health/ready HTTP/1.1\r\nHost: a\r\n\r\n",
    "infer": f"POST /v2/models/m/versions/1/infer HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(INFER)}\r\n\r\n{INFER}",
    "chunked": "POST /v2/models/m/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "4\r\n{\"in\r\n5;ext=1\r\nputs\"\r\n3\r\n:[]\r\n1\r\n}\r\n0\r\nTrailer-A: 1\r\n\r\n",
    "pipelined": "GET /v2 HTTP/1.1\r\n\r\nPOST /score HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]"
    "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    "continue": "POST /models/a%20b/versions/v%2F2/score HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n[[1]]",
    "http10": "GET /v2/models/m/ready?x=1 HTTP/1.0\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n"
    "GET /v2 HTTP/1.0\r\n\r\n",
    "conflict": "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\nabc",
}
chunked_alone = {
    "chunked-body": "a\r\n0123456789\r\n10 ; name=value\r\n0123456789abcdef\r\n0\r\n\r\n",
    "chunked-trailers": "3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
    # A chunk-size line of exactly the 4096-byte limit (CRLF included), and one byte over.
    "chunk-line-at-limit": "1;" + "a" * 4092 + "\r\nx\r\n0\r\n\r\n",
    "chunk-line-over-limit": "1;" + "a" * 4093 + "\r\nx\r\n0\r\n\r\n",
}
seeds = {f"{n}-1": ctl(1) + v.encode() for n, v in requests.items()}
seeds.update({f"{n}-7": ctl(7, small_limit=True) + v.encode() for n, v in requests.items()})
seeds.update({n: ctl(3, flag=True) + v.encode() for n, v in chunked_alone.items()})
seeds.update({f"{n}-64": ctl(64, flag=True) + v.encode() for n, v in chunked_alone.items() if "limit" in n})
write("http1_request", seeds)

BINARY = json.dumps({"model_name": "m", "model_version": "1", "outputs": [
    {"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]})
responses = {
    "ok": 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"live":1}\n',
    "binary": f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\ninference-header-content-length: "
    f"{len(BINARY)}\r\nContent-Length: {len(BINARY) + 8}\r\n\r\n{BINARY}" + "\0\0\x80?\0\0\0@",
    "chunked": "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "b\r\n{\"error\":1}\r\n0\r\n\r\n",
    "pooled": "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
    "until-close": "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nthe body runs until the end",
    "close": "HTTP/1.1 500 Internal Server Error\r\nConnection: close, X-Trace\r\nX-Trace: 1\r\n"
    "Content-Length: 0\r\n\r\n",
    # httparse gives these reason phrases as a static "" (fixed in 89e5cea: no range outside the head).
    "no-reason": "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 404\nContent-Length: 0\n\n",
    "obs-text-reason": b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 1\r\n\r\nx",
}
responses = {n: v if isinstance(v, bytes) else v.encode() for n, v in responses.items()}
seeds = {f"{n}-1": ctl(1) + v for n, v in responses.items()}
seeds.update({f"{n}-9": ctl(9, small_limit=True) + v for n, v in responses.items()})
seeds["head"] = ctl(5, flag=True) + responses["ok"] + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
write("http1_response", seeds)

oip = {
    "json": "\n" + INFER,
    "every-field": "\n" + json.dumps({"id": "r\u00e9q", "parameters": {"binary_data_output": True, "other": [1, {"x": None}]},
        "inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [-3e2, 4]]},
                   {"data": [7, 8], "shape": [2], "datatype": "INT64", "name": "b", "extra": "ignored"},
                   {"name": "c", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
                   {"name": "d", "shape": [1], "datatype": "FP16", "data": [0.5]},
                   {"name": "e", "shape": [2], "datatype": "UINT8", "data": [0, 255]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}]}, ensure_ascii=False),
}
head = json.dumps({"inputs": [
    {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
    {"name": "b", "shape": [1, 1], "datatype": "INT16", "parameters": {"binary_data_size": 2}},
    {"name": "c", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
    {"name": "d", "shape": [1], "datatype": "FP64", "data": [1e300]}],
    "parameters": {"binary_data_output": True}})
blob = struct.pack("<ff", 1.0, -2.0) + struct.pack("<h", -7) + b"\x01\x00"
oip["binary"] = f"{len(head)}\n".encode() + head.encode() + blob
oip["binary-short"] = f" {len(head)} \n".encode() + head.encode() + blob[:5]
# BYTES: JSON strings (with escapes), and the binary form, each element a 4-byte length first.
oip["strings"] = "\n" + json.dumps({"inputs": [{"name": "s", "shape": [1, 3], "datatype": "BYTES",
                                                  "data": [["a", "caf\u00e9 \"q\"", ""]]}]}, ensure_ascii=True)
strings = b"".join(struct.pack("<I", len(x)) + x for x in [b"email", b"", "\u00e9".encode()])
strings_head = json.dumps({"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(strings)}}]})
oip["strings-binary"] = f"{len(strings_head)}\n".encode() + strings_head.encode() + strings
for name, data in oip.items():
    oip[name] = data if isinstance(data, bytes) else data.encode()
write("oip_request", oip)

# JWT: the fuzz target's fixture key (seed [7; 32]) signs these.
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


kid = b64(hashlib.sha256(public).digest()[:12])
NOW = 1_750_000_000
header = json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": kid}, separators=(",", ":"))
claims = json.dumps({"iss": "i", "sub": "s", "aud": "endpoint:e", "iat": NOW, "exp": NOW + 60}, separators=(",", ":"))
signing_input = f"{b64(header.encode())}.{b64(claims.encode())}"
token = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
NONE = b'{"alg":"none"}'
jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(public), "kid": kid, "alg": "EdDSA", "use": "sig"}
other = dict(jwk, kid="other", x=b64(bytes(32)))
jwt = {
    "token": b"\0" + token.encode(),
    "bearer": b"\0" + f"Bearer   {token} ".encode(),
    "token-none": b"\0" + f"{b64(NONE)}.{b64(claims.encode())}.".encode(),
    "signed": b"\1" + header.encode() + b"\n" + claims.encode(),
    "signed-bare": b"\1" + b'{"alg":"EdDSA"}\n' + claims.encode(),
    "signed-crit": b"\1" + b'{"alg":"EdDSA","crit":["x"],"kid":null}\n{"iss":"","sub":"","aud":"","iat":0,"exp":1e20}',
    "jwks": b"\2" + json.dumps({"keys": [jwk]}).encode(),
    "jwks-two": b"\2" + json.dumps({"keys": [jwk, other]}).encode(),
    "edits": b"\3" + struct.pack("<HB", 5, ord("x")) + struct.pack("<HB", len(token) - 1, ord("A")),
}
write("jwt", jwt)
