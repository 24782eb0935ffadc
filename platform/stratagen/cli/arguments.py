"""Argument parsing that follows the CLI's error rule: one ``error:`` line, exit code 2.

The value types check what argparse alone would accept silently (``--count 0``) or answer
with a traceback later (``--classes a,b``, an ``--out`` that is a file).
"""
from __future__ import annotations

import argparse
import os
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line (``error: <command>: <what>``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def class_ids(text: str) -> list[int] | None:
    """``all`` (None) or comma-separated non-negative class ids."""
    if text.strip() == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated class ids (e.g. 0,3) or 'all', got {text!r}")
    return [int(p) for p in parts]


def folder(text: str) -> str:
    """A folder to write into: absent (it is created) or a directory, not a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (it is created if missing)")
    return text


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation (permissions, a file where a folder belongs, ...)."""
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {exc.strerror or exc}" if where else f"{exc.strerror or exc}"


__all__ = ["Parser", "class_ids", "folder", "os_error_line", "positive_int"]
