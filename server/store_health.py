"""Whether a channel's store takes writes, as its batcher sees them: one log line when the store
becomes full (StoreFull) or unreachable (StoreUnavailable), one when writes go through again (how
long it lasted, how many commits were refused), and the state in metrics.

Why a state and not a log line per failure: both are expected outages that end by themselves
(space returns, Redis comes back) and nothing is lost meanwhile (publishers are told and resend),
so a traceback per refused commit or per retention tick buried the one line an operator needs.
Unexpected exceptions are not handled here: the batcher still logs those with their traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from .store import StoreFull, StoreUnavailable

log = logging.getLogger("latentwire.server.batcher")

Op = Literal["commit", "trim"]
STATES = ("full", "unavailable")


@dataclass
class Outage:
    state: str  # one of STATES
    since: float  # time.monotonic() when it began
    refused_commits: int = 0
    refused_frames: int = 0
    failed_trims: int = 0


class StoreHealth:
    """Called from the channel's one batcher thread only."""

    def __init__(self, channel: str, metrics: Any = None) -> None:
        self.channel, self.metrics = channel, metrics
        self.outage: Outage | None = None

    def failed(self, error: StoreFull | StoreUnavailable, op: Op, frames: int = 0) -> None:
        """A commit (of `frames` frames) or a trim was refused by the store; nothing of it was written."""
        state = "full" if isinstance(error, StoreFull) else "unavailable"
        if self.outage is None or self.outage.state != state:
            if self.outage is not None:
                self._set_gauge(self.outage.state, 0)
            self.outage = Outage(state, time.monotonic())
            self._set_gauge(state, 1)
            until = "space returns" if state == "full" else "the store is reachable again"
            told = "RESOURCE_EXHAUSTED" if state == "full" else "UNAVAILABLE"
            log.warning("channel %s: %s: a %s was refused, and so is every write until %s (publishers are told "
                        "%s and resend; retention waits too); one line follows when writes go through",
                        self.channel, error, op, until, told)
        if op == "commit":
            self.outage.refused_commits += 1
            self.outage.refused_frames += frames
            if self.metrics is not None:
                self.metrics.commits_refused.labels(self.channel, state).inc()
        else:
            self.outage.failed_trims += 1

    def succeeded(self, op: Op) -> None:
        """A store call went through. A trim ends only an unreachable spell: one with nothing to drop
        writes nothing, so it says nothing about free space."""
        o = self.outage
        if o is None or (op == "trim" and o.state == "full"):
            return
        self.outage = None
        self._set_gauge(o.state, 0)
        what = "space returned" if o.state == "full" else "the store is reachable again"
        log.info("channel %s: writes go through again (%s after %.1f s; %d commits of %d frames were refused and "
                 "left to their publishers to resend, %d retention trims failed)", self.channel, what,
                 time.monotonic() - o.since, o.refused_commits, o.refused_frames, o.failed_trims)

    def _set_gauge(self, state: str, value: int) -> None:
        if self.metrics is not None:
            self.metrics.store_state.labels(self.channel, state).set(value)
