"""Dataclass <-> JSON-able dict with camelCase keys, driven by the type hints.

One generic converter keeps every status type's to_dict/from_dict exact and symmetric: None fields are
left out of the dict and come back as their defaults (None values of free-form maps too: a reader's `.get` sees
them as before); datetimes are RFC 3339 in UTC; enums are their values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from typing import Any

from controller.api.durations import format_duration, parse_duration

SKIP = "serialization.skip"  # dataclass field metadata: a field with no JSON key of its own (its owner writes it)


@cache
def camel_case(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, with fractional seconds only when there are some (MTTR needs sub-second)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the engine works in UTC-aware times")
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@cache
def _plan(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """Per dataclass: (attribute, JSON key, type hint, required) for each field, computed once."""
    hints = typing.get_type_hints(cls)
    return tuple((item.name, camel_case(item.name), hints[item.name],
                  item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING)
                 for item in dataclasses.fields(cls) if not item.metadata.get(SKIP))


@cache
def json_keys(cls: type) -> frozenset[str]:
    """The JSON keys dataclass `cls` reads and writes."""
    return frozenset(key for _name, key, _hint, _required in _plan(cls))


def to_json(value: Any) -> Any:
    """Convert a dataclass tree to plain JSON-able data."""
    if hasattr(type(value), "__dataclass_fields__"):
        result: dict[str, Any] = {}
        for name, key, _hint, _required in _plan(type(value)):
            field_value = getattr(value, name)
            if field_value is not None:
                result[key] = to_json(field_value)
        return result
    if isinstance(value, str | int | float | bool) and not isinstance(value, Enum):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Mapping):
        # Argo CD drops nulls when it hands the object to an action's Lua: a null kept here made every action's
        # result differ in status, and argocd-server then patched /status with its stale copy of the evidence.
        return {str(key): to_json(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        # Items are kept, None too: a position means something (alternatives_ratio beside alternatives_weight, a
        # confusion matrix's rows). No producer puts None in a list; a hand-edited status is written back as read.
        return [to_json(item) for item in value]
    return value


def from_json(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """Build dataclass `cls` from the dict to_json made; missing keys take the field defaults."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for name, key, hint, required in _plan(cls):
        raw = data.get(key)
        if raw is not None:
            kwargs[name] = _convert(hint, raw)
        elif required:
            kwargs[name] = None  # a required field that may be None was left out by to_json
    return cls(**kwargs)


def _convert(hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        last_error: Exception | None = None
        for option in options:
            try:
                return _convert(option, raw)
            except (TypeError, ValueError) as exc:
                last_error = exc
        raise ValueError(f"{raw!r} matches none of {options}") from last_error
    if origin is tuple:
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_convert(item_hint, item) for item in raw)
    if origin in (Mapping, dict, typing.Mapping):
        return _plain(raw)
    if hint is Any:
        return _plain(raw)
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return from_json(hint, raw)
        if issubclass(hint, Enum):
            return hint(raw)
        if hint is datetime:
            return parse_time(raw)
        if hint is timedelta:
            return parse_duration(raw)
        if hint is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if hint is bool and isinstance(raw, bool):
            return raw
        if hint in (int, str) and isinstance(raw, hint) and not isinstance(raw, bool):
            return raw
        raise ValueError(f"expected {hint.__name__}, got {raw!r}")
    raise TypeError(f"unsupported type hint {hint!r}")


def _plain(raw: Any) -> Any:
    """Deep copy of free-form JSON (evidence, lineage) so a status never aliases its input."""
    if isinstance(raw, Mapping):
        return {str(key): _plain(item) for key, item in raw.items()}
    if isinstance(raw, list | tuple):
        return [_plain(item) for item in raw]
    return raw
