"""One tenant's registry that accepts and never answers must not hold up another tenant's abort: registry calls
lend out the reconcile's worker while they wait, in threads of their own, at most a namespace's share at once.

Before, each registry read (and each registry action) held one of the queue's 4 workers for up to 10 s (RequestPolicy:
5 s, one retry): 12 such rollouts in one namespace made an on-call abort in another take 21 s instead of 1 s (review
s27runtime, HIGH 1). The real RolloutStepper, Reconciler, WakeupQueue and MlflowRegistry, against a real TCP server on
127.0.0.1 that reads each request and never answers; test_operator_interrupts' Tenants for the rest (traffic and the
victim's registry observation are stand-ins).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_operator_interrupts import ABORT, Key, Tenants, until

from controller.api.commands import COMMAND_ANNOTATION
from controller.api.status import ModelRolloutStatus, Phase
from controller.engine.actions import Action
from controller.engine.observations import RegistryObservation
from controller.operator.runtime import (
    MAX_REGISTRY_CALLS_PER_NAMESPACE,
    ROLLBACK_REGISTRY_WAIT_SECONDS,
    RolloutRuntime,
)

STALLED = "tenant-s"
REAL_OBSERVE_REGISTRY = RolloutRuntime.observe_registry
REAL_ACT = RolloutRuntime.act


class Blackhole:
    """A registry that accepts, reads the request and never answers. Counts the calls open now, at most at once,
    and ended (the client gave up: its deadline passed, or the server closed)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.open = self.most = self.ended = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                self.open += 1
                self.most = max(self.most, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):  # until the client hangs up
                pass
        with self.lock:
            self.open -= 1
            self.ended += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(): a close alone leaves it accepting
        self.listener.close()
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


def stalled_tenant(monkeypatch: pytest.MonkeyPatch, reads: threading.Event) -> Tenants:
    """Tenants whose namespace STALLED calls its real registry: to act on it, and to read it once `reads` is set
    (the stand-in's reads before); every other namespace's registry is the stand-in."""
    world = Tenants(monkeypatch)
    stand_in_read, stand_in_act = RolloutRuntime.observe_registry, RolloutRuntime.act

    def observe_registry(self: RolloutRuntime, status: Any = None) -> Any:
        real = reads.is_set() and self.namespace.startswith(STALLED)
        return (REAL_OBSERVE_REGISTRY if real else stand_in_read)(self, status)

    def act(self: RolloutRuntime, action: Action, status: Any) -> None:
        real = self.namespace.startswith(STALLED) and RolloutRuntime.calls_registry(action)
        (REAL_ACT if real else stand_in_act)(self, action, status)

    monkeypatch.setattr(RolloutRuntime, "observe_registry", observe_registry)
    monkeypatch.setattr(RolloutRuntime, "act", act)
    return world


def stopped(world: Tenants, hole: Blackhole) -> None:
    """The registry goes away: its calls end at once, and the stepper's registry threads with them."""
    hole.close()
    for pool in world.stepper._registry_pools.values():
        pool.shutdown(wait=True, cancel_futures=True)


async def paused_at_ten(world: Tenants, key: Key) -> None:
    await until(lambda: world.weights.get(key) == 10 and world.store.status(*key).get("phase") == "Paused", 10)


async def abort_acted_on_while_stalled(world: Tenants, hole: Blackhole, victim: Key,
                                      open_calls: int = MAX_REGISTRY_CALLS_PER_NAMESPACE) -> None:
    """The victim's abort is decided and its traffic taken off before any of the stalled registry calls ended (they
    end only at their 10 s deadline): nothing waited for them."""
    world.abort(victim)
    await until(lambda: "abort-1" in world.store.status(*victim).get("handledCommands", ()) and
                victim not in world.weights, 8)
    assert hole.ended == 0, "the abort waited for the stalled registry calls to give up"
    assert world.store.status(*victim)["phase"] in ("RollingBack", "RolledBack")
    assert hole.open == open_calls and hole.most == open_calls


def test_an_abort_is_acted_on_while_another_tenants_registry_reads_hang(
        monkeypatch: pytest.MonkeyPatch, blackhole: Blackhole) -> None:
    reads = threading.Event()
    reads.set()
    world = stalled_tenant(monkeypatch, reads)

    async def scenario(world: Tenants) -> None:
        victim = world.create("tenant-v", ["v"])[0]
        await paused_at_ten(world, victim)
        stalled = world.create(STALLED, [f"s{i}" for i in range(12)], registry={"trackingUri": blackhole.url})
        await until(lambda: blackhole.open == MAX_REGISTRY_CALLS_PER_NAMESPACE, 5)
        # Every stalled rollout's reconcile began (each lent its worker while it waits for the namespace's share).
        await until(lambda: set(stalled) <= set(world.steps), 5)
        try:
            await abort_acted_on_while_stalled(world, blackhole, victim)
        finally:
            stopped(world, blackhole)
        assert not any(key in world.weights for key in stalled)  # nothing resolved: nothing staged

    world.run(scenario)
    assert len(world.stepper._registry_shares) == 0  # every share given back, cancelled waits included


def test_an_abort_is_acted_on_while_another_tenants_registry_actions_hang(
        monkeypatch: pytest.MonkeyPatch, blackhole: Blackhole) -> None:
    """Aborted, the stalled tenant's rollouts take their traffic off (no registry needed) and then tag the candidate
    rejected in a registry that never answers."""
    world = stalled_tenant(monkeypatch, threading.Event())

    async def scenario(world: Tenants) -> None:
        stalled = world.create(STALLED, [f"s{i}" for i in range(8)], registry={"trackingUri": blackhole.url})
        victim = world.create("tenant-v", ["v"])[0]
        for key in [*stalled, victim]:
            await paused_at_ten(world, key)
        for key in stalled:
            world.store.annotate(*key, COMMAND_ANNOTATION, ABORT)
        await until(lambda: blackhole.open == MAX_REGISTRY_CALLS_PER_NAMESPACE, 5)
        try:
            await abort_acted_on_while_stalled(world, blackhole, victim)
        finally:
            stopped(world, blackhole)

    world.run(scenario)


def test_a_rollback_moves_traffic_back_without_waiting_for_its_own_registry_that_hangs(
        monkeypatch: pytest.MonkeyPatch, blackhole: Blackhole) -> None:
    """The abort's decision waits ROLLBACK_REGISTRY_WAIT_SECONDS for the registry, not its 10 s: the candidate's
    10% goes back while the read is still pending (review s27runtime, LOW 2)."""
    reads = threading.Event()
    world = stalled_tenant(monkeypatch, reads)

    async def scenario(world: Tenants) -> None:
        rollout = world.create(STALLED, ["s"], registry={"trackingUri": blackhole.url})[0]
        await paused_at_ten(world, rollout)
        reads.set()  # the registry stops answering
        world.abort(rollout)
        try:
            await until(lambda: blackhole.open >= 1, 5)
            await until(lambda: rollout not in world.weights, 8)
            assert blackhole.ended == 0, "traffic moved only once the registry read gave up"
            status = world.store.status(*rollout)
            assert status["phase"] == "RollingBack" and "abort-1" in status["handledCommands"]
            assert f"no answer within {ROLLBACK_REGISTRY_WAIT_SECONDS:g}s" in status["retry"]["reason"]
        finally:
            stopped(world, blackhole)

    world.run(scenario)


def test_several_tenants_registries_hanging_do_not_hold_up_a_third_tenants_registry(
        monkeypatch: pytest.MonkeyPatch, blackhole: Blackhole) -> None:
    """Three namespaces each fill their share with reads that never end: the victim's own registry read still runs at
    once (its namespace's threads are its own), so its abort is decided on a registry that answered, not cut at
    ROLLBACK_REGISTRY_WAIT_SECONDS as unavailable (review s27r5: one pool of 8 shared by all namespaces)."""
    reads = threading.Event()
    reads.set()
    world = stalled_tenant(monkeypatch, reads)

    async def scenario(world: Tenants) -> None:
        victim = world.create("tenant-v", ["v"])[0]
        await paused_at_ten(world, victim)
        for suffix in ("", "-2", "-3"):
            world.create(f"{STALLED}{suffix}", [f"s{i}" for i in range(6)], registry={"trackingUri": blackhole.url})
        hung = 3 * MAX_REGISTRY_CALLS_PER_NAMESPACE
        await until(lambda: blackhole.open == hung, 8)
        try:
            await abort_acted_on_while_stalled(world, blackhole, victim, open_calls=hung)
            retry = world.store.status(*victim).get("retry") or {}
            assert "no answer within" not in str(retry.get("reason")), retry
        finally:
            stopped(world, blackhole)

    world.run(scenario)


@pytest.mark.parametrize(("phase", "cut"), [("Progressing", True), ("Succeeded", False)])
def test_only_a_rollback_with_traffic_to_move_cuts_the_registry_read_short(monkeypatch: pytest.MonkeyPatch,
                                                                           phase: str, cut: bool) -> None:
    """A rollback command to a Succeeded rollout may need the registry to know which version serves: its read is
    waited for in full, not taken as unavailable after ROLLBACK_REGISTRY_WAIT_SECONDS (review s27r5)."""
    world = Tenants(monkeypatch)
    answered = RegistryObservation()

    class SlowRegistry:
        namespace, name = "tenant-v", "v"

        def observe_registry(self, status: Any) -> RegistryObservation:
            time.sleep(ROLLBACK_REGISTRY_WAIT_SECONDS + 0.5)
            return answered

    async def scenario(world: Tenants) -> None:
        status = ModelRolloutStatus(phase=Phase(phase))
        seen = await world.stepper._observe_registry(SlowRegistry(), status, True)  # type: ignore[arg-type]
        assert (seen is not answered) is cut
        assert (seen.error is not None and "no answer within" in seen.error.message) is cut

    world.run(scenario)


def test_a_namespaces_registry_threads_go_once_its_calls_have_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespaces come and go (one per pull request): each one's registry threads must not outlive its calls
    (review s27r6: 1000 namespaces left 3999 idle threads)."""
    world = Tenants(monkeypatch)
    threads_before = threading.active_count()

    async def scenario(world: Tenants) -> None:
        answers = await asyncio.gather(*(world.stepper._registry_call(f"team-{i}", lambda i=i: i) for i in range(50)))
        assert answers == list(range(50))
        await until(lambda: not world.stepper._registry_pools, 5)
        assert len(world.stepper._registry_shares) == 0

    world.run(scenario)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before + 2, threading.active_count()
