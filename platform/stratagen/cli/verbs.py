"""The table of CLI verbs: each module of :mod:`stratagen.cli` registers its handlers here."""
from __future__ import annotations

import argparse
from typing import Callable

Handler = Callable[[argparse.Namespace], "int | None"]
HANDLERS: dict[str, Handler] = {}


def verb(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of ``stratagen <name>``."""
    def wrap(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn
    return wrap
