"""Errors that tell the user exactly which input is at fault."""

from __future__ import annotations

from pathlib import Path


class NoteLLMError(Exception):
    """Base class of every error the project raises on purpose (shown without a traceback)."""


class DataError(NoteLLMError):
    """A table broke its contract: names the file, and where known the row and the column."""

    def __init__(self, message: str, *, file: str | Path | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        self.detail = message
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(NoteLLMError):
    """A setting is missing, unknown or out of range."""
