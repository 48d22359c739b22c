"""The CLI's one error type, in a module of its own: the entry point must not import the kubernetes library.

`operator run --kubeconfig` exports the path as $KUBECONFIG before anything imports kubernetes, which reads
it once, at import time (kopf's login goes through that default).
"""

from __future__ import annotations


class CliError(Exception):
    """One line for the user; exit code 1."""
