"""The local stack's port picks stay out of the kernel's ephemeral range: a port the kernel handed out is one it also
gives outgoing connections, and one of those took the port picked for kube-apiserver before it started, failing a CI
run's whole integration session ("bind: address already in use")."""

from __future__ import annotations

import socket

import pytest

from controller.devstack import processes
from controller.devstack.processes import LOOPBACK, free_port


def test_picks_are_below_the_ephemeral_range_and_never_the_same_twice() -> None:
    low = processes._ephemeral_low()
    picks = [free_port() for _ in range(300)]
    assert len(set(picks)) == len(picks)
    assert all(processes._LOWEST_PICK <= port < low for port in picks), (low, sorted(picks)[-3:])


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    in_use, free = free_port(), free_port()
    processes._HANDED_OUT.discard(free)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, in_use))
        taken.listen()
        picks = iter([in_use, free])  # the random picks: the port in use first, then a free one
        monkeypatch.setattr(processes._RANDOM, "randrange", lambda *_: next(picks))
        assert free_port() == free
