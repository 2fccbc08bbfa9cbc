"""Scores the scikit-learn string models through the official Triton or KServe gRPC client,
straight to a scoring server and through a gateway, and compares every answer with the expected
file (made with ONNX Runtime in Python when the models were generated: models/make_sklearn.py).

Usage: grpc_strings.py triton|kserve DIRECT_GRPC GATEWAY_GRPC KEY EXPECTED_DIR

One client per process (both register the protocol's messages in protobuf's default pool). The
gateway has one endpoint per model, named as the model, with key auth (KEY, sent as metadata
`authorization: Bearer KEY`). iris-labels takes FP32 and answers a BYTES label and one FP32
output per class; ticket-router takes BYTES (two string columns) and answers a BYTES label and
FP32 probabilities. The Triton client sends BYTES as length-prefixed raw_input_contents; the
KServe client both that way and as typed bytes_contents. Answers come in raw_output_contents.
Each check prints `ok: ...`; the first failure raises.
"""

import asyncio
import json
import os
import sys

import numpy as np

MODELS = ["iris-labels", "ticket-router"]
NUMPY = {"FP32": np.float32, "BYTES": np.object_}


def expected(expected_dir, model):
    with open(os.path.join(expected_dir, f"{model}.json")) as f:
        return json.load(f)


def inputs_of(want):
    """(name, datatype, array) per input of the expected file."""
    return [
        (s["name"], s["datatype"], np.array(s["data"], dtype=NUMPY[s["datatype"]]).reshape(s["shape"]))
        for s in want["inputs"]
    ]


def check(want, output, what):
    """`output(name)` is the answer's array for an output name."""
    for spec in want["outputs"]:
        about = f"{what}, output {spec['name']}"
        got = output(spec["name"])
        assert got is not None, f"{about}: missing"
        assert list(got.shape) == spec["shape"], f"{about}: shape {got.shape}, expected {spec['shape']}"
        if spec["datatype"] == "BYTES":
            # The clients give BYTES as Python bytes.
            text = [g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)]
            assert text == spec["data"], f"{about}: {text} != {spec['data']}"
        else:
            worst = float(np.max(np.abs(got.reshape(-1).astype(np.float32) - np.array(spec["data"], dtype=np.float32))))
            assert worst <= want["tolerance"], f"{about}: off by {worst}"
    print(f"ok: {what}: answers {want['outputs'][0]['data']} as ONNX Runtime does", flush=True)


def triton(places, expected_dir):
    import tritonclient.grpc as tg

    for url, headers, where in places:
        client = tg.InferenceServerClient(url=url)
        for model in MODELS:
            want = expected(expected_dir, model)
            inputs = []
            for name, datatype, data in inputs_of(want):
                inp = tg.InferInput(name, list(data.shape), datatype)
                inp.set_data_from_numpy(data)
                inputs.append(inp)
            outputs = [tg.InferRequestedOutput(o["name"]) for o in want["outputs"]]
            result = client.infer(model, inputs, outputs=outputs, headers=dict(headers) if headers else None)
            check(want, result.as_numpy, f"triton gRPC client, {where}, {model}")
        client.close()


async def kserve(places, expected_dir):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    for url, headers, where in places:
        metadata = list(headers.items()) if headers else None
        async with InferenceGRPCClient(url=url, retries=0) as client:
            for model in MODELS:
                want = expected(expected_dir, model)
                for binary in (True, False):
                    inputs = []
                    for name, datatype, data in inputs_of(want):
                        if binary:
                            inp = InferInput(name, list(data.shape), datatype)
                            inp.set_data_from_numpy(data, binary_data=True)
                        else:
                            flat = data.reshape(-1).tolist()
                            typed = [s.encode() for s in flat] if datatype == "BYTES" else flat
                            inp = InferInput(name, list(data.shape), datatype, data=typed)
                        inputs.append(inp)
                    response = await client.infer(InferRequest(model_name=model, infer_inputs=inputs), headers=metadata)
                    by_name = {o.name: o.as_numpy() for o in response.outputs}
                    how = "raw_input_contents" if binary else "typed contents"
                    check(want, by_name.get, f"kserve gRPC client, {where}, {model}, {how}")


def main():
    client, direct, gateway, key, expected_dir = sys.argv[1:6]
    places = [(direct, None, "direct"), (gateway, {"authorization": f"Bearer {key}"}, "gateway")]
    if client == "triton":
        triton(places, expected_dir)
    else:
        asyncio.run(kserve(places, expected_dir))


if __name__ == "__main__":
    main()
