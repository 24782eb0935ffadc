"""One short line per validation error: the file, the key path, the bad value, what is accepted."""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys accepted at ``loc`` (used to say what is accepted for an unknown key)."""
    annotation: Any = model
    for part in loc:
        while True:
            origin = typing.get_origin(annotation)
            if origin is Annotated:
                annotation = typing.get_args(annotation)[0]
            elif origin in (Union, types.UnionType):
                options = [a for a in typing.get_args(annotation) if a is not type(None)]
                tagged = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)
                          and part in getattr(a.model_fields.get("name"), "annotation", Any).__args__]
                if tagged:
                    annotation = tagged[0]
                    break
                annotation = options[0]
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part in annotation.model_fields:
                annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return None


def format_error(model: type[BaseModel], source: str, error: dict[str, Any], tags: set[str]) -> str:
    loc = tuple(error["loc"])
    shown = [str(p) for i, p in enumerate(loc) if not (i > 0 and p in tags and isinstance(p, str))]
    path = ".".join(shown) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        message = f"unknown key {loc[-1]!r}" + (f"; accepted: {', '.join(allowed)}" if allowed else "")
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        value = error.get("input")
        if not isinstance(value, (dict, list)) or len(repr(value)) < 60:
            message += f" (got {value!r})"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"{source}: {path}: {message}"
