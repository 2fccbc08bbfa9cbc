#!/usr/bin/env python3
"""Checks an OpenAPI document Sluice served, and requests and answers made with it.

  check.py DOC.json [EXCHANGES.json]

DOC.json must be a valid OpenAPI document (openapi-spec-validator). EXCHANGES.json, when given,
is a list of {"path", "method", "request", "status", "response"}: each request body must fit its
operation's request schema and each response the schema of its status, so the schemas say what
the server really takes and answers. Prints one line per problem and exits 1 when there is one.
"""
import json
import sys

from openapi_schema_validator import OAS30Validator, OAS31Validator
from openapi_spec_validator import validate


def resolve(node, doc, depth=0):
    """`node` with every local $ref replaced by what it points at (the documents have no cycles)."""
    if depth > 64:
        raise ValueError("$ref nesting deeper than 64")
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return resolve(target, doc, depth + 1)
        return {k: resolve(v, doc, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, doc, depth) for v in node]
    return node


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    validate(doc)
    validator = OAS31Validator if doc["openapi"].startswith("3.1") else OAS30Validator
    problems = []
    exchanges = []
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            exchanges = json.load(f)
    for x in exchanges:
        where = f'{x["method"].upper()} {x["path"]}'
        op = doc["paths"].get(x["path"], {}).get(x["method"])
        if op is None:
            problems.append(f"{where}: not in the document")
            continue
        if x.get("request") is not None:
            schema = resolve(op["requestBody"]["content"]["application/json"]["schema"], doc)
            for e in validator(schema).iter_errors(x["request"]):
                problems.append(f"{where}: request does not fit its schema: {e.message} at {list(e.path)}")
        reply = op["responses"].get(str(x["status"]))
        if reply is None:
            problems.append(f'{where}: status {x["status"]} is not documented')
            continue
        schema = resolve(reply["content"]["application/json"]["schema"], doc)
        for e in validator(schema).iter_errors(x["response"]):
            problems.append(f"{where}: response does not fit its schema: {e.message} at {list(e.path)}")
    for p in problems:
        print(p)
    print(f"openapi check: {len(doc['paths'])} paths, {len(exchanges)} exchanges, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
