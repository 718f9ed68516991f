"""``proxy.yaml``'s JSON Schema, generated from the pydantic classes in :mod:`proxy.config.schema`, for editors.

    wxgate check --schema > docs/proxy.schema.json      (``make docs``; a test fails when the file is stale)

``proxy.yaml`` names it in a ``# yaml-language-server: $schema=…`` modeline, so editors with the YAML language
server complete keys, show each key's description (the field docstrings) and flag unknown keys. The schema
describes the file as written, before :mod:`proxy.config.loading` reads it:

* a secret key takes an ``${ENV_VAR}`` reference (never a literal) or its ``<key>_file`` sibling (a path);
* a duration is seconds as a number or a string such as ``4.5s``/``10m``; a size, bytes or ``64k``/``1m``;
* any other typed value may be an ``${ENV_VAR}`` reference instead (the loader interpolates every string).

It is looser than ``wxgate check`` where JSON Schema cannot say what the loader checks (a route's keys, file
contents, cross-field rules), never stricter: a configuration ``wxgate check`` accepts is valid here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from proxy.config import schema
from proxy.config.schema import SECRET_KEYS, Config

SCHEMA_ID = (
    "https://wxgate.invalid/proxy.schema.json"  # a name, not a place: the file is docs/proxy.schema.json
)
# One ${NAME} or ${NAME:-default} reference, as proxy.config.loading reads them.
ENV_REF = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
SECRET_REF = rf"^\s*{ENV_REF}\s*$"
# parse_duration's and parse_size's forms (ECMA-262 has no inline case-insensitive flag: sizes spell both cases).
DURATION = schema._DURATION.pattern
SIZE = r"^\s*(\d+)\s*([kKmMgG][iI]?[bB]?|[bB])?\s*$"

_SCALAR_TYPES = {"integer", "number", "boolean"}


class _ConfigSchema(GenerateJsonSchema):
    """Pydantic's generator, taught the values the loader and the schema's validators accept as written."""

    def function_before_schema(self, schema_: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema_["function"]["function"]
        if function is schema.parse_duration:
            return {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION}]}
        if function is schema.parse_size:
            return {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE}]}
        if function is schema._to_secret:
            return {"type": "string", "pattern": SECRET_REF}
        return super().function_before_schema(schema_)


def _kinds(prop: JsonSchemaValue) -> list[JsonSchemaValue]:
    """The alternatives of ``prop``, nested ``anyOf`` (an optional duration: number | string | null) flattened."""
    if set(prop) - {"title", "description", "default"} != {"anyOf"}:
        return [prop]
    return [kind for option in prop["anyOf"] for kind in _kinds(option)]


def _env_or(prop: JsonSchemaValue) -> JsonSchemaValue:
    """A typed value, or an ``${ENV}`` reference in its place (annotations stay on the outside)."""
    notes: dict[str, Any] = {k: prop[k] for k in ("title", "description", "default") if k in prop}
    kinds = [{k: v for k, v in kind.items() if k not in notes} for kind in _kinds(prop)]
    typed = any(k.get("type") in _SCALAR_TYPES or "enum" in k or "pattern" in k for k in kinds)
    if not typed or any("const" in k for k in kinds):  # plain strings take a reference already
        return prop
    return {"anyOf": [*kinds, {"type": "string", "pattern": ENV_REF}], **notes}


def _secret_files(model: JsonSchemaValue) -> None:
    """Each secret key gets its ``<key>_file`` sibling; a required secret is satisfied by either."""
    props: dict[str, Any] = model.get("properties", {})
    required: list[str] = model.get("required", [])
    either = []
    for key in sorted(SECRET_KEYS & props.keys()):
        props[f"{key}_file"] = {
            "type": "string",
            "description": f"A file holding `{key}` (read once at start and on reload), instead of `{key}`.",
        }
        if key in required:
            required.remove(key)
            either.append({"anyOf": [{"required": [key]}, {"required": [f"{key}_file"]}]})
    if either:
        model["allOf"] = either
    if "required" in model and not required:
        del model["required"]


def _adapt(model: JsonSchemaValue) -> None:
    for name, prop in list(model.get("properties", {}).items()):
        if name != "protocol":
            model["properties"][name] = _env_or(prop)
    _secret_files(model)


def generate() -> dict[str, Any]:
    out = Config.model_json_schema(mode="validation", schema_generator=_ConfigSchema)
    for model in [out, *out.get("$defs", {}).values()]:
        _adapt(model)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "wxgate proxy.yaml",
        **{k: v for k, v in out.items() if k != "title"},
    }


def render() -> str:
    return json.dumps(generate(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
