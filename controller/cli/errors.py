"""The CLI's one error type, in a module of its own: the entry point must not import the kubernetes library
(it is slow to import, and `dev` and `exporter` commands do not need it)."""

from __future__ import annotations


class CliError(Exception):
    """One line for the user; exit code 1 unless `code` says otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
