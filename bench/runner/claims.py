"""Claims: two runs on one store share the work instead of both doing it (issue 17, "Concurrency").

Before a run starts a task it claims the task's key in the store's ``claims`` table, in one SQLite
transaction that also checks whether the task is done; a second ``advbench run`` on the same store (the
same suite or another that shares tasks) finds the claim, runs something else, and waits for what only
the other run can finish. A claim is dropped when its task ends (done or failed) and when the run exits
(Ctrl-C included). A run that died without dropping its claims (kill -9, a lost node) does not block the
others: its claims are abandoned when its process is gone (same host) or when its heartbeat, which a
background thread renews every ``HEARTBEAT_S`` while the run lives, is older than ``STALE_AFTER_S``.

Executors that run tasks elsewhere use the same claims through ``Claims.take``/``release`` (the scheduler
issue's pool and Ray share this mechanism, not a second one).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..store import Store

HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Claims:
    """This run's claims on one store; a context manager that keeps them alive and drops them at exit."""

    def __init__(self, store_dir: str | Path, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.store_dir = Path(store_dir)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Claims":
        self._thread = threading.Thread(target=self._beat, name="advbench-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        store = Store(self.store_dir)
        try:
            store.release(self.owner)
        finally:
            store.close()

    def _beat(self) -> None:
        store = Store(self.store_dir)  # SQLite connections stay in their thread
        try:
            while not self._stop.wait(self.heartbeat_s):
                store.touch_claims(self.owner)
        finally:
            store.close()

    def stale(self, claim: dict) -> bool:
        """Whether another run's claim is abandoned: its process is gone, or its heartbeat stopped."""
        if claim["host"] == self.host and claim["pid"] != self.pid and not process_alive(claim["pid"]):
            return True
        return time.time() - claim["heartbeat"] > self.stale_after_s

    def take(self, store: Store, key: str) -> str:
        """"claimed" (run it), "done" (another run stored it meanwhile) or "held" (another live run has it)."""
        return store.claim(key, self.owner, self.host, self.pid, stale=self.stale)

    def release(self, store: Store, key: str) -> None:
        store.release(self.owner, key)

    def waiting_line(self, store: Store, keys: list[str]) -> str:
        """What a run says once when all it can do now is wait for tasks another run holds."""
        return f"waiting for {len(keys)} task(s) that another run is doing ({self.holders(store, keys)})"

    def holders(self, store: Store, keys: list[str]) -> str:
        """Who holds claims on ``keys``, for the waiting message: "pid 123 on host-a, ..."."""
        live = {(c["pid"], c["host"]) for c in store.claims_held(keys) if c["owner"] != self.owner}
        return ", ".join(f"pid {pid} on {host}" for pid, host in sorted(live)) or "another run"
