"""The official Triton and KServe gRPC clients against Sluice's OIP gRPC fronts.

Usage: grpc_clients.py triton|kserve DIRECT_GRPC DIRECT_HTTP GATEWAY_GRPC GATEWAY_HTTP KEY EXPECTED_JSON

One client per process: both packages register the protocol's messages (package `inference`) in
protobuf's default descriptor pool, so they cannot be imported into one interpreter.

DIRECT_* are a `sluice serve --grpc-port` of mlp-small; GATEWAY_* a gateway whose endpoint `ep`
(key auth, KEY) has version `blue` (mlp-small, the default) and `green` (tabular-mixed, no
traffic unless pinned). Each check prints `ok: WHAT`; the first failure raises.

Checked, with both clients where they can: ServerLive, ServerReady, ServerMetadata, ModelReady,
ModelMetadata and ModelInfer (raw_input_contents from the Triton client and the KServe client with
binary data; typed contents from the KServe client with list data), outputs read from
raw_output_contents and compared with the expected file and with the HTTP path's answer; through
the gateway: the key as metadata `authorization: Bearer KEY`, UNAUTHENTICATED without it or with a
wrong one, a version pinned with `x-sluice-version` answering from that version, and the version
that answered in response metadata `x-sluice-version`; malformed raw contents are
INVALID_ARGUMENT and an unknown model NOT_FOUND.
"""

import asyncio
import json
import sys
import urllib.request

import grpc
import numpy as np


def ok(what):
    print(f"ok: {what}", flush=True)


def http_infer(url, headers, name, x):
    """The HTTP path's answer for the same input, as JSON tensors."""
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(request) as r:
        out = json.load(r)["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def expect_code(code, call, what):
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{code}", f"{what}: got {e.status()} {e.message()}"
        ok(f"{what}: {code} ({e.message()})")
        return
    except grpc.RpcError as e:
        assert e.code() == getattr(grpc.StatusCode, code), f"{what}: got {e.code()} {e.details()}"
        ok(f"{what}: {code} ({e.details()})")
        return
    raise AssertionError(f"{what}: no error")


def main():
    client, direct_grpc, direct_http, gateway_grpc, gateway_http, key, expected_path = sys.argv[1:8]
    with open(expected_path) as f:
        want = json.load(f)
    spec, out = want["inputs"][0], want["outputs"][0]
    x = np.array(spec["data"], dtype=np.float32).reshape(spec["shape"])
    y = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    tolerance = want["tolerance"]
    auth = {"authorization": f"Bearer {key}"}
    # Both clients' answers must equal the HTTP path's exactly: same model, same replica.
    direct = http_infer(f"{direct_http}/v2/models/mlp-small/infer", {}, spec["name"], x)
    assert np.allclose(direct, y, atol=tolerance), (direct, y)
    if client == "triton":
        triton(direct_grpc, gateway_grpc, gateway_http, auth, spec, out, x, direct)
    else:
        asyncio.run(kserve(direct_grpc, gateway_grpc, auth, spec, x, direct))


def triton(direct_grpc, gateway_grpc, gateway_http, auth, spec, out, x, over_http):
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def triton_infer(client, model, headers=None):
        inp = tg.InferInput(spec["name"], list(x.shape), spec["datatype"])
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], headers=headers, request_id="req-7")
        assert result.get_response().id == "req-7"
        return result.as_numpy(out["name"])

    # === the Triton client, straight to the scoring server ===
    c = tg.InferenceServerClient(url=direct_grpc)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta.name == "sluice" and "binary_tensor_data" in meta.extensions, meta
    assert c.is_model_ready("mlp-small") and c.is_model_ready("mlp-small", "1")
    model = c.get_model_metadata("mlp-small")
    assert model.name == "mlp-small" and list(model.versions) == ["1"], model
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [(spec["name"], "FP32", [-1, x.shape[1]])]
    assert [(t.name, t.datatype) for t in model.outputs] == [(out["name"], "FP32")]
    ok("triton client, direct: live, ready, server and model metadata, model ready")
    direct = triton_infer(c, "mlp-small")
    assert np.array_equal(direct, over_http), (direct, over_http)
    ok("triton client, direct: infer matches the HTTP path's answer (and the expected outputs)")
    expect_code("NOT_FOUND", lambda: c.get_model_metadata("nope"), "an unknown model")
    expect_code("NOT_FOUND", lambda: c.is_model_ready("mlp-small", "9"), "an unknown version")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(direct_grpc))
    bad = service_pb2.ModelInferRequest(model_name="mlp-small")
    bad.inputs.add(name=spec["name"], datatype="FP32", shape=[1, x.shape[1]])
    bad.raw_input_contents.append(b"abc")
    expect_code("INVALID_ARGUMENT", lambda: stub.ModelInfer(bad), "malformed raw_input_contents")
    mixed = service_pb2.ModelInferRequest(model_name="mlp-small")
    mixed.inputs.add(name=spec["name"], datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    mixed.raw_input_contents.append(b"\0\0\0\0")
    expect_code("INVALID_ARGUMENT", lambda: stub.ModelInfer(mixed), "contents and raw_input_contents together")

    # === the Triton client, through the gateway ===
    g = tg.InferenceServerClient(url=gateway_grpc)
    assert g.is_server_live() and g.is_server_ready()
    assert g.is_model_ready("ep", headers=auth)
    assert g.get_model_metadata("ep", headers=auth).name == "mlp-small"
    through = triton_infer(g, "ep", headers=auth)
    assert np.array_equal(through, direct), (through, direct)
    over_http = http_infer(f"{gateway_http}/v2/models/ep/infer", auth, spec["name"], x)
    assert np.array_equal(through, over_http), (through, over_http)
    ok("triton client, gateway: infer with the key matches the direct and HTTP answers")
    expect_code("UNAUTHENTICATED", lambda: triton_infer(g, "ep"), "no key")
    expect_code("UNAUTHENTICATED", lambda: triton_infer(g, "ep", {"authorization": "Bearer wrong"}), "a wrong key")
    pinned = g.get_model_metadata("ep", headers={**auth, "x-sluice-version": "green"})
    assert pinned.name == "tabular-mixed", pinned
    ok("triton client, gateway: x-sluice-version green answers from green (tabular-mixed)")
    expect_code(
        "NOT_FOUND",
        lambda: g.get_model_metadata("ep", headers={**auth, "x-sluice-version": "purple"}),
        "a pin to a version the endpoint lacks",
    )
    gstub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway_grpc))
    request = service_pb2.ModelInferRequest(model_name="ep")
    request.inputs.add(name=spec["name"], datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    response, call = gstub.ModelInfer.with_call(request, metadata=list(auth.items()))
    versions = [v for k, v in call.initial_metadata() if k == "x-sluice-version"]
    assert versions == ["blue"], call.initial_metadata()
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))
    assert np.array_equal(got, direct)
    ok("raw stub, gateway: x-sluice-version blue in the response metadata")
    metadata = list({**auth, "x-sluice-version": "green"}.items())
    expect_code("INVALID_ARGUMENT", lambda: gstub.ModelInfer(request, metadata=metadata), "mlp input pinned to green")
    bad.model_name = "ep"
    expect_code(
        "INVALID_ARGUMENT", lambda: gstub.ModelInfer(bad, metadata=list(auth.items())), "malformed raw, gateway"
    )


async def kserve(direct_grpc, gateway_grpc, auth, spec, x, direct):
    """The KServe client (asyncio): raw and typed contents, direct and through the gateway."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    for url, model, headers, where in [
        (direct_grpc, "mlp-small", None, "direct"),
        (gateway_grpc, "ep", list(auth.items()), "gateway"),
    ]:
        async with InferenceGRPCClient(url=url, retries=0) as k:
            assert await k.is_server_live(headers=headers)
            assert await k.is_server_ready(headers=headers)
            assert await k.is_model_ready(model, headers=headers)
            for binary in (True, False):
                inp = InferInput(spec["name"], list(x.shape), "FP32")
                if binary:
                    inp.set_data_from_numpy(x, binary_data=True)
                else:
                    inp = InferInput(spec["name"], list(x.shape), "FP32", data=x.flatten().tolist())
                request = InferRequest(model_name=model, infer_inputs=[inp], request_id="k-1")
                response = await k.infer(request, headers=headers)
                got = response.outputs[0].as_numpy().reshape(direct.shape)
                assert np.array_equal(got, direct), (where, binary, got, direct)
                what = "raw_input_contents" if binary else "typed contents"
                ok(f"kserve client, {where}: infer with {what} matches")
        if headers:
            async with InferenceGRPCClient(url=url, retries=0) as k:
                inp = InferInput(spec["name"], list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                try:
                    await k.infer(InferRequest(model_name=model, infer_inputs=[inp]))
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
                    ok("kserve client, gateway: no key is UNAUTHENTICATED")
                else:
                    raise AssertionError("no key was let through")


if __name__ == "__main__":
    main()
