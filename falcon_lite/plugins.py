"""Installed plugins: problems (entry-point group ``falcon_lite.problems``) and embedding
networks (``falcon_lite.embeddings``), found through the packages' metadata.

A request only ever *names* a registered plugin: nothing is imported from a path or a
string sent over HTTP. A name is looked up among the installed entry points, and only that
entry point's own target is imported.

    [project.entry-points."falcon_lite.problems"]
    my_model = "my_pkg.model:make"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

PROBLEMS = "falcon_lite.problems"
EMBEDDINGS = "falcon_lite.embeddings"


class PluginError(ValueError):
    """A plugin that is not registered, cannot be loaded, or is called with parameters its
    factory does not take. ``field`` names the config field at fault (dotted), for a 422."""

    def __init__(self, message: str, field: str = "name") -> None:
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=None)
def registered(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of `group`, by name (cached: see `refresh`)."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}


def refresh() -> None:
    """Forget what was found, so that packages installed since are seen."""
    registered.cache_clear()
    factory.cache_clear()


def names(group: str) -> list[str]:
    return list(registered(group))


@lru_cache(maxsize=None)
def factory(group: str, name: str) -> Callable[..., Any]:
    """The factory registered as `name` in `group`; `PluginError` lists the registered ones, or
    names the package that failed to import."""
    found = registered(group)
    if name not in found:
        kind = "problem" if group == PROBLEMS else "embedding"
        raise PluginError(f"unknown {kind} {name!r}; registered: {', '.join(found) or 'none'}")
    entry = found[name]
    try:
        loaded = entry.load()
    except Exception as exc:  # an installed but broken (or partly installed) package
        raise PluginError(f"{name!r} is registered by {entry.value!r}, which cannot be loaded here: "
                          f"{type(exc).__name__}: {exc} (is its package installed on this machine?)") from exc
    if not callable(loaded):
        raise PluginError(f"{name!r} is registered by {entry.value!r}, which is not a factory (not callable)")
    return loaded


def bind(group: str, name: str, params: dict[str, Any]) -> Callable[[], Any]:
    """The factory called with `params`, checked against its signature first (a parameter it
    does not take, or a required one missing, is a `PluginError` naming it)."""
    make = factory(group, name)
    signature = inspect.signature(make)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key in params:
        if not takes_any and key not in signature.parameters:
            raise PluginError(f"{name!r} takes no parameter {key!r}; it takes: "
                              f"{', '.join(signature.parameters) or 'none'}", field=f"params.{key}")
    try:
        bound = signature.bind(**params)
    except TypeError as exc:
        raise PluginError(f"{name!r}: {exc}", field="params") from None
    return lambda: make(*bound.args, **bound.kwargs)


def schema(group: str, name: str) -> dict[str, Any]:
    """The factory's keyword parameters as a JSON schema (types from its annotations where
    they are plain JSON types; defaults as given)."""
    properties: dict[str, Any] = {}
    required = []
    for p in inspect.signature(factory(group, name)).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        entry: dict[str, Any] = {}
        kind = _json_type(p.annotation)
        if kind:
            entry["type"] = kind
        if p.default is p.empty:
            required.append(p.name)
        else:
            entry["default"] = _jsonable(p.default)
        properties[p.name] = entry
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "list": "array",
               "tuple": "array", "dict": "object"}


def _json_type(annotation: Any) -> str | None:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    head = str(text).split("[")[0].split("|")[0].strip()
    return _JSON_TYPES.get(head)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
