"""The vendored OpenAI OpenAPI spec (`tests/fixtures/openapi/`) as JSON Schema validators, one per named schema.

The spec is OpenAPI 3.1 (JSON Schema 2020-12), but some of its schemas still carry OpenAPI 3.0's `nullable: true`
(the stream chunk's `usage`, `finish_reason`, `logprobs`), which a JSON Schema validator ignores: each is rewritten
as `anyOf: [<the schema>, {"type": "null"}]` before validation, so `null` is allowed exactly where the spec says.
`$ref`s resolve inside the one document (`referencing`). No format checker: `format` is documentation here
(`unixtime`, `float`).

Where OpenAI's own answers depart from its spec, a derived schema says so (`DERIVED`), named `<schema>+<why>` and
added beside the original, or, for a schema other schemas `$ref` (the Responses `Response` inside every event),
the one field is changed in place (`PATCHED`); nothing else is loosened.
"""

from __future__ import annotations

import copy
import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "openapi" / "openapi.yaml.gz"
_URI = "urn:openai-openapi"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 3 MB spec in about half a second


def without_nullable(node: Any) -> Any:
    """`node` with every OpenAPI 3.0 `nullable: true` schema turned into `anyOf: [schema, {"type": "null"}]`."""
    if isinstance(node, list):
        return [without_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: without_nullable(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def with_null_finish(schema: dict) -> dict:
    """A legacy completion as streamed: each choice's `finish_reason` is null until the choice ends (OpenAI sends
    `"finish_reason": null` on every chunk but the last, while the spec, sharing one schema for both, says string)."""
    reason = schema["properties"]["choices"]["items"]["properties"]["finish_reason"]
    schema["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [reason, {"type": "null"}]}
    return schema


def with_base64_embedding(schema: dict) -> dict:
    """Embeddings asked with `encoding_format: "base64"`: each `embedding` is the base64 of little-endian float32s,
    a string (as OpenAI sends it and its SDKs decode it), where the spec only knows the array of floats."""
    embedding = {"type": "string", "contentEncoding": "base64"}
    schema["properties"]["data"]["items"] = {
        "type": "object", "required": ["index", "object", "embedding"],
        "properties": {"index": {"type": "integer"}, "object": {"enum": ["embedding"]}, "embedding": embedding}}
    return schema


def with_null_usage(schema: dict) -> dict:
    """A legacy completion streamed with `stream_options.include_usage`: every chunk but the last carries
    `"usage": null` (OpenAI's documentation of `include_usage`: "All other chunks will also include a usage field,
    but with a null value"), which the chat chunk's schema allows and this one forgets."""
    schema = with_null_finish(schema)
    schema["properties"]["usage"] = {"anyOf": [schema["properties"]["usage"], {"type": "null"}]}
    return schema


#: name -> (the spec's schema it derives from, the change)
DERIVED: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "CreateCompletionResponse+streamed": ("CreateCompletionResponse", with_null_finish),
    "CreateCompletionResponse+streamed+usage": ("CreateCompletionResponse", with_null_usage),
    "CreateEmbeddingResponse+base64": ("CreateEmbeddingResponse", with_base64_embedding),
}


def _or_null(schemas: dict, *path: str | int) -> None:
    """Allow `null` for the schema at `path` (under `components.schemas`)."""
    *up, last = path
    node: Any = schemas
    for key in up:
        node = node[key]
    node[last] = {"anyOf": [node[last], {"type": "null"}]}


def _nullable_response_usage_user(schemas: dict) -> None:
    """A `response` carries `"usage": null` until it ends (`response.created`, `.in_progress`, `.failed`) and
    `"user": null` when the request set none: the spec's own examples of `ResponseCreatedEvent` and
    `ResponseInProgressEvent` show both, and the openai SDKs type them `Optional`; the schemas say object and
    string."""
    _or_null(schemas, "Response", "allOf", 2, "properties", "usage")
    _or_null(schemas, "ModelResponseProperties", "properties", "user")


#: Changes to the spec's own schemas, each where OpenAI's answers (and the spec's own examples) differ from them.
PATCHED: tuple[Callable[[dict], None], ...] = (_nullable_response_usage_user,)


@functools.cache
def _registry() -> tuple[Registry, dict]:
    with gzip.open(SPEC, "rb") as f:
        doc = without_nullable(yaml.load(f, Loader=_Loader))
    schemas = doc["components"]["schemas"]
    for patch in PATCHED:
        patch(schemas)
    for name, (base, change) in DERIVED.items():
        schemas[name] = change(copy.deepcopy(schemas[base]))
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    return Registry().with_resource(_URI, resource), doc


def schema_names() -> set[str]:
    """Every name under `components.schemas`."""
    return set(_registry()[1]["components"]["schemas"])


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A validator for `components.schemas.<name>` (KeyError for a name the spec lacks)."""
    registry, doc = _registry()
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"the OpenAPI spec has no schema {name!r}")
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{name}"}, registry=registry)


@functools.cache
def _members(union: str) -> dict[str, str]:
    """The schemas of a union of typed events (`ResponseStreamEvent`), by the `type` each one's enum fixes."""
    schemas = _registry()[1]["components"]["schemas"]
    out = {}
    for ref in schemas[union]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"].get("enum", ()):
            out[kind] = name
    return out


def member(union: str, kind: object) -> str | None:
    """The schema of the `union` member whose `type` is `kind` (None: no member has it). Judging an event by its
    own schema, not the union, names the field that is wrong instead of 58 branches that do not match."""
    return _members(union).get(kind) if isinstance(kind, str) else None


def violations(name: str, obj: Any) -> list[str]:
    """What in `obj` breaks schema `name`: one line per error, `<json path>: <message>` (empty when it conforms)."""
    out = []
    for err in sorted(validator(name).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        detail = err.message
        if err.context:  # anyOf/oneOf: name the branch that came closest
            best = min(err.context, key=lambda e: len(list(e.absolute_path)) * -1)
            detail += f" ({best.json_path}: {best.message})"
        out.append(f"{name} {err.json_path}: {detail}")
    return out
