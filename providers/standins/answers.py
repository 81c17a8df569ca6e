"""What a stand-in's choices say: text, JSON that fits the asked format, or a tool call.

A real model decides these; a stand-in decides them by rule, so a client can try tool calls
and structured output end to end and a test can predict the answer:

- `n` gives n choices per prompt (prompt-major, as OpenAI numbers them);
- `tools` with `tool_choice` auto (or absent), `required` or a named function: one call to
  the named (else the first) function, with arguments that fit its `parameters` schema;
  `auto` answers with text once the conversation ends in a tool result; `none` never calls;
- `response_format` `json_object`: the text as a JSON object (`{"answer": ...}` unless it
  is one already); `json_schema`: a value built from the schema, every property filled.

Only what the vendor's contract takes is honoured (`Dialect.features`); the rest is ignored,
as a vendor with an open schema would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_DEPTH = 8  # how far a (possibly recursive) schema is followed


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class Answer:
    """One choice: its text, or (with `tool_calls`) no text and the calls."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def compose(body: dict[str, Any], features: frozenset[str], prompts: list[str], texts: list[str],
            call_id: str, last_role: str | None) -> list[Answer]:
    """The choices to answer with: each prompt's text, n times where `n` is honoured, turned
    into a tool call or JSON where the request asks and the vendor takes it."""
    n = body.get("n") if "n" in features else None
    copies = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    tool = _tool_to_call(body, last_role) if "tools" in features else None
    fmt = body.get("response_format") if "response_format" in features else None
    out: list[Answer] = []
    for prompt, text in zip(prompts, texts):
        for _ in range(copies):
            index = len(out)
            if tool is not None:
                args = sample(tool.get("parameters") or {"type": "object"}, _hint(prompt))
                name = str(tool.get("name", ""))
                out.append(Answer("", [ToolCall(f"call_{call_id[:20]}{index}", name, _dumps(args))]))
            else:
                out.append(Answer(_formatted(fmt, text, prompt)))
    return out


def _tool_to_call(body: dict[str, Any], last_role: str | None) -> dict[str, Any] | None:
    """The function definition to call, or None for a text answer."""
    tools = [t["function"] for t in body.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not tools:
        return None
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == wanted), tools[0])
    if choice == "required" or (choice == "auto" and last_role != "tool"):
        return tools[0]
    return None


def _formatted(fmt: Any, text: str, prompt: str) -> str:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        return text if isinstance(parsed, dict) else _dumps({"answer": text})
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return _dumps(sample(schema if isinstance(schema, dict) else {"type": "object"}, _hint(prompt)))
    return text


def _hint(prompt: str) -> str:
    said = " ".join(prompt.split())
    return said[:57] + "..." if len(said) > 60 else said or "stand-in"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def sample(schema: Any, text: str, root: Any = None, depth: int = 0) -> Any:
    """A value of JSON Schema `schema` with every property filled: strings are `text`,
    numbers the least allowed (1 when unbounded), enums and consts their first value."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            target = target.get(part) if isinstance(target, dict) else None
        return sample(target, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        branches = [b for b in schema.get(key) or () if isinstance(b, dict) and b.get("type") != "null"]
        if branches:
            return sample(branches[0], text, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = sample(part, text, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        declared = schema.get("properties")
        props: dict[str, Any] = declared if isinstance(declared, dict) else {}
        out = {name: sample(sub, text, root, depth + 1) for name, sub in props.items()}
        for name in schema.get("required") or ():
            out.setdefault(name, text)
        return out
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 1))
        return [sample(schema.get("items", {}), text, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        if not isinstance(low, (int, float)):
            above = schema.get("exclusiveMinimum")
            low = above + 1 if isinstance(above, (int, float)) else 1
        value = max(1, low)
        if isinstance(schema.get("maximum"), (int, float)):
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    short = text[: schema["maxLength"]] if isinstance(schema.get("maxLength"), int) else text
    return short.ljust(int(schema.get("minLength") or 0), ".")
