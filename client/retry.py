"""When the client retries a call, and how long it waits between tries (shared by subscribe and
publish, so both back off the same way)."""

from __future__ import annotations

import random

import grpc

# Statuses after which resending is safe: the server did not commit what it did not acknowledge,
# and producer offsets make a resent message a no-op where it did.
# RESOURCE_EXHAUSTED is retried on purpose: the server sends it for states that clear by themselves,
# a full batcher queue (limits.queue_frames) or a full data dir (the store refuses writes until space
# returns, server/README.md "Faults"); either way the stream ends at the first message not committed.
# A publisher backs off and resends, up to max_retries reconnects in a row without progress; then the
# status, naming the data dir and its free bytes, reaches the caller (raise max_retries / max_backoff
# to wait out a longer spell).
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
})


def backoff(attempt: int, max_backoff: float) -> float:
    """Seconds before retry number ``attempt`` (from 0): exponential from 50 ms, capped, with jitter
    so that many clients cut off together do not reconnect together."""
    return min(max_backoff, 0.05 * (2 ** attempt)) * (0.5 + random.random() / 2)
