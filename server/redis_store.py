"""A channel store in Redis Streams, shared by every server replica (`--store redis://HOST:PORT/DB`).

Keys per channel (prefix "latentwire:<channel>"):
- `:log`        the stream: one entry per packet, entry id "<first_seq>-1" (Redis reserves 0-0),
                fields c (frames), t (commit time), m (model id), q (quality), p (packet), s (scores);
- `:meta`       hash: next_seq, bytes (payload bytes retained), model_id, and the channel's epoch
                (epoch, epoch_start, epoch_prev; server/epoch.py);
- `:producers`  hash: producer id -> next offset.

Why the entry id is the frame seq: "resume from seq" is then a range read from "<seq>-1", and
every replica hands out the same seqs. Appends run as one Lua script, so the producers' offset
check, the seq assignment, the XADDs and the high-water marks are one atomic step however many
replicas append at once; trims are scripts too (bounded work per call, so Redis never stalls).
Each replica tails the stream with blocking XREADs and hands every commit, its own or another
replica's, to the channel (its bounded in-process cache and its waiting subscribers).

Redis unreachable: calls raise StoreUnavailable (publishers are told UNAVAILABLE and resend,
subscribers reconnect); the tailer logs the outage once, counts it, and retries with backoff.
Redis out of memory (maxmemory, noeviction) refuses the write whole (its first write in a script is
where Redis checks): StoreFull, like a full disk under the embedded store.

Redis reset (flushed, restarted without persistence, failed over): once bound to an epoch, the
append script checks it and the store's next seq in the same atomic step (nothing is written when
either is off), and the tailer checks them with every XREAD (an HMGET pipelined behind it: Redis
answers it the moment the XREAD returns, so a batch is checked before it reaches the channel at no
extra round trip, and an idle tailer checks once per TAIL_BLOCK_MS) and whenever the stream does not
continue where the last entry ended; the first to notice raises or reports StoreReset and the store
refuses everything afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from .redis_settings import display_url
from .store import (
    ChannelMismatch,
    EpochState,
    OffsetConflict,
    OnCommit,
    OnReset,
    PendingPacket,
    RetentionPolicy,
    StoredPacket,
    StoreFull,
    StoreReset,
    StoreUnavailable,
    TrimReport,
    pack_scores,
    unpack_scores,
)

log = logging.getLogger("latentwire.server.store")

# redis-py types a reply for every protocol and decode mode at once; these connections speak RESP2 and
# leave replies as bytes, so a stream entry is (id, fields) in bytes and XREAD answers [(stream, entries)]
Entry = tuple[bytes, dict[bytes, bytes]]

KEY_PREFIX = "latentwire"
TAIL_BLOCK_MS = 1000  # one blocking XREAD waits this long before it looks again
TAIL_BATCH = 256  # entries per XREAD
TRIM_SCAN = 512  # entries one trim script looks at (it is called again while it trims a full scan)

# KEYS: log, meta, producers. ARGV: ts, n_packets, n_producers, epoch ("": unchecked), the lowest next
# seq the store may have, then per producer (id, expected or "", new offset), then per packet (count,
# model id, quality, payload, scores or "").
_APPEND = """
local ts, np, nprod = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then
  local meta = redis.call('HMGET', KEYS[2], 'epoch', 'next_seq')
  local held, nxt = meta[1] or '', tonumber(meta[2] or '0')
  if held ~= ARGV[4] or nxt < tonumber(ARGV[5]) then return {-2, held, nxt} end
end
local i = 6
for k = 1, nprod do
  local expected = ARGV[i + 1]
  if expected ~= '' then
    local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
    if cur ~= tonumber(expected) then return {-1, ARGV[i], cur} end
  end
  i = i + 3
end
i = 6
for k = 1, nprod do
  local new = tonumber(ARGV[i + 2])
  local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  if new > cur then redis.call('HSET', KEYS[3], ARGV[i], new) end
  i = i + 3
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'next_seq') or '0')
local first, bytes = seq, 0
for k = 1, np do
  local fields = {'c', ARGV[i], 't', ts, 'm', ARGV[i + 1], 'q', ARGV[i + 2], 'p', ARGV[i + 3]}
  if ARGV[i + 4] ~= '' then table.insert(fields, 's'); table.insert(fields, ARGV[i + 4]) end
  redis.call('XADD', KEYS[1], seq .. '-1', unpack(fields))
  bytes = bytes + string.len(ARGV[i + 3])
  seq = seq + tonumber(ARGV[i])
  i = i + 5
end
redis.call('HSET', KEYS[2], 'next_seq', seq)
redis.call('HINCRBY', KEYS[2], 'bytes', bytes)
return {first, seq}
"""

# KEYS: log, meta. ARGV: max_bytes (0: off), cutoff ts (-1: off), max_frames (0: off), scan.
# Drops the oldest entries while one bound is exceeded; returns {packets, frames, bytes, first kept seq}.
# Why it reads the head one entry first, then in small steps: XRANGE returns whole entries, payloads
# included, and Redis runs one script at a time; reading a full scan of 200 KB entries every second
# to learn that nothing is over a bound stalled every channel on the server for ~100 ms.
_TRIM = """
local max_bytes, cutoff, max_frames, scan = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local next_seq = tonumber(redis.call('HGET', KEYS[2], 'next_seq') or '0')
local packets, frames, freed, keep = 0, 0, 0, next_seq
local start, step, done = '-', 1, false
while not done do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', step)
  if #entries == 0 then break end
  for _, e in ipairs(entries) do
    local f = {}
    for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
    local first = tonumber(string.match(e[1], '^(%d+)-'))
    local count, size, ts = tonumber(f['c']), string.len(f['p']), tonumber(f['t'])
    local over = (max_bytes > 0 and bytes - freed > max_bytes)
              or (cutoff >= 0 and ts < cutoff)
              or (max_frames > 0 and next_seq - (first + count) >= max_frames and next_seq - first > max_frames)
    if not over then keep = first; done = true; break end
    packets, frames, freed = packets + 1, frames + count, freed + size
    keep = first + count
    if packets >= scan then done = true; break end
  end
  start, step = keep .. '-0', 32
end
if packets > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', keep .. '-1')
  redis.call('HINCRBY', KEYS[2], 'bytes', -freed)
end
return {packets, frames, freed, keep}
"""


# KEYS: meta, log, producers. ARGV: epoch, start seq, previous epoch, wipe ("1" or "").
# Without wipe: writes the epoch only where none is held (two replicas creating it race safely).
# With wipe (the operator's new epoch): replaces it and drops the channel's packets and offsets.
_CREATE_EPOCH = """
if ARGV[4] == '' and redis.call('HEXISTS', KEYS[1], 'epoch') == 1 then return 0 end
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HDEL', KEYS[1], 'model_id')
  redis.call('HSET', KEYS[1], 'bytes', 0, 'next_seq', ARGV[2])
else
  local cur = tonumber(redis.call('HGET', KEYS[1], 'next_seq') or '0')
  if cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'next_seq', ARGV[2]) end
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'epoch_start', ARGV[2], 'epoch_prev', ARGV[3])
return 1
"""


def _unavailable(exc: Exception, what: str) -> StoreUnavailable:
    return StoreUnavailable(f"Redis store unreachable while {what}: {exc}")


class RedisStore:
    """One channel's log in Redis (a ChannelStore); see the module docstring."""

    def __init__(self, url: str, channel: str, policy: RetentionPolicy = RetentionPolicy(), *,
                 metrics: Any = None, socket_timeout: float = 5.0) -> None:
        try:
            import redis
        except ImportError as e:  # the optional extra
            raise StoreUnavailable("--store redis:// needs redis-py: pip install 'latentwire[redis]'") from e
        self._redis_mod = redis
        self.url, self.channel, self.policy, self.metrics = url, channel, policy, metrics
        base = f"{KEY_PREFIX}:{channel}"
        self.k_log, self.k_meta, self.k_prod = f"{base}:log", f"{base}:meta", f"{base}:producers"
        self._r = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        # the tailer blocks in XREAD: its own connection, with a timeout longer than the block
        self._tail_r = redis.Redis.from_url(url, socket_timeout=TAIL_BLOCK_MS / 1000 + socket_timeout,
                                            socket_connect_timeout=socket_timeout)
        self._append = self._r.register_script(_APPEND)
        self._trim = self._r.register_script(_TRIM)
        self._create_epoch = self._r.register_script(_CREATE_EPOCH)
        self._bound: EpochState | None = None
        self._known_next = 0  # the highest next seq this replica has seen (its appends and the tail)
        self._reset: StoreReset | None = None
        self._on_reset: OnReset | None = None
        self._reset_lock = threading.Lock()
        self._followers: list[OnCommit] = []
        self._tailer: threading.Thread | None = None
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._tail_next = self._call("reading where the channel stands", self._next_seq_now)

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError) as e:
            self._count_error(what)
            raise _unavailable(e, what) from e
        except self._redis_mod.OutOfMemoryError as e:  # maxmemory with noeviction: Redis's full disk
            self._count_error(what)
            raise StoreFull(f"Redis store {self.url} is full (maxmemory reached) while {what}: {e}") from e

    def _count_error(self, op: str) -> None:
        if self.metrics is not None:
            self.metrics.store_errors.labels(self.channel, op.split()[0]).inc()

    def _next_seq_now(self) -> int:
        return int(self._r.hget(self.k_meta, "next_seq") or 0)

    # ------------------------------------------------------------------ state
    @property
    def next_seq(self) -> int:
        return self._call("reading next_seq", self._next_seq_now)

    @property
    def first_seq(self) -> int:
        def first() -> int:
            head = cast(list[Entry], self._r.xrange(self.k_log, "-", "+", count=1))
            return _seq(head[0][0]) if head else self._next_seq_now()
        return self._call("reading first_seq", first)

    @property
    def size_bytes(self) -> int:
        return self._call("reading the size", lambda: int(self._r.hget(self.k_meta, "bytes") or 0))

    def producer_next_offset(self, producer_id: str) -> int:
        return self._call("reading a producer offset", lambda: int(self._r.hget(self.k_prod, producer_id) or 0))

    def check_model(self, model_id: str) -> None:
        def check() -> str | None:
            self._r.hsetnx(self.k_meta, "model_id", model_id)
            held = cast(bytes | None, self._r.hget(self.k_meta, "model_id"))
            return None if held is None else held.decode()
        held = self._call("checking the channel's model", check)
        if held is not None and held != model_id:
            raise ChannelMismatch(
                f"channel {self.channel!r} in {self.url} holds model {held[:12]}..., this server binds it to "
                f"{model_id[:12]}...: every replica must serve a channel with the same bundle (use another channel "
                f"name for the new bundle, or delete the keys {KEY_PREFIX}:{self.channel}:* to start it over)"
            )

    # ------------------------------------------------------------------ epoch
    @property
    def epoch(self) -> str:
        return self._bound.epoch if self._bound is not None else ""

    def epoch_state(self) -> EpochState:
        return self._call("reading the channel's epoch", self._epoch_state, self._r)

    def _epoch_state(self, conn: Any) -> EpochState:
        return _state(conn.hmget(self.k_meta, *_EPOCH_FIELDS))

    def create_epoch(self, epoch: str, start_seq: int, previous: str = "", wipe: bool = False) -> EpochState:
        if not epoch:
            raise ValueError("an epoch id must not be empty (empty means: the store holds none)")
        self._call("writing the channel's epoch", self._create_epoch, [self.k_meta, self.k_log, self.k_prod],
                   [epoch, int(start_seq), previous, "1" if wipe else ""])
        return self.epoch_state()

    def watch_reset(self, on_reset: OnReset) -> None:
        self._on_reset = on_reset

    def bind(self, state: EpochState, known_next_seq: int) -> None:
        self._bound = state
        self._known_next = max(self._known_next, known_next_seq, state.next_seq)
        if self._tailer is None:
            self._tail_next = state.next_seq

    @property
    def reset(self) -> StoreReset | None:
        """The reset this store noticed (it then refuses appends), or None."""
        return self._reset

    def _fail(self, found: EpochState, what: str = "") -> StoreReset:
        """Remember the reset (once), log it, and tell the channel."""
        with self._reset_lock:
            if self._reset is not None:
                return self._reset
            assert self._bound is not None
            self._reset = StoreReset(self.channel, display_url(self.url), self._bound.epoch, found,
                                     self._known_next - 1, what)
        log.error("%s", self._reset)
        self._count_error("reset")
        if self._on_reset is not None:
            self._on_reset(self._reset)
        return self._reset

    # ------------------------------------------------------------------ writes
    def append(self, packets: list[PendingPacket], producer_offsets: dict[str, int] | None = None,
               expected_offsets: dict[str, int] | None = None, ts: float | None = None) -> list[StoredPacket]:
        if self._reset is not None:
            raise self._reset
        ts = time.time() if ts is None else ts
        offsets = producer_offsets or {}
        expected = expected_offsets or {}
        args: list[Any] = [repr(ts), len(packets), len(offsets), self.epoch, self._known_next]
        for pid, new in offsets.items():
            args += [pid, str(expected[pid]) if pid in expected else "", int(new)]
        blobs = []
        for p in packets:
            if p.count <= 0:
                raise ValueError("a packet must hold at least one frame")
            blob = pack_scores(p.anomaly_scores, p.count)
            blobs.append(blob)
            args += [p.count, p.model_id, p.quality, p.payload, blob or b""]
        reply = self._call("appending", self._append, [self.k_log, self.k_meta, self.k_prod], args)
        if int(reply[0]) == -2:
            raise self._fail(EpochState(reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1]),
                                        int(reply[2])))
        if int(reply[0]) < 0:
            pid = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise OffsetConflict(f"producer {pid} is at offset {int(reply[2])} in {self.url}, not "
                                 f"{expected.get(pid)}: another replica committed for it")
        seq = int(reply[0])
        self._known_next = max(self._known_next, int(reply[1]))
        stored = []
        for p, blob in zip(packets, blobs, strict=True):
            stored.append(StoredPacket(seq, p.count, ts, p.model_id, p.quality, p.payload, unpack_scores(blob)))
            seq += p.count
        return stored

    def trim(self, now: float | None = None) -> list[TrimReport]:
        if self._reset is not None:  # what the store holds now is not this replica's channel
            return []
        now = time.time() if now is None else now
        pol = self.policy
        cutoff = now - pol.max_age_s if pol.max_age_s > 0 else -1
        total = [0, 0, 0, 0]
        while True:
            reply = self._call("trimming", self._trim, [self.k_log, self.k_meta],
                               [pol.max_bytes, repr(cutoff), pol.max_frames, TRIM_SCAN])
            packets, frames, freed, keep = (int(v) for v in reply)
            total = [total[0] + packets, total[1] + frames, total[2] + freed, keep]
            if packets < TRIM_SCAN:
                break
        if not total[0]:
            return []
        report = TrimReport(total[0], total[1], total[2], total[3], "retention policy")
        log.info("retention on %s (Redis): trimmed %d packets (%d frames, %d bytes); oldest retained seq is now %d",
                 self.channel, report.packets, report.frames, report.bytes, report.first_seq)
        return [report]

    # ------------------------------------------------------------------ reads
    def read_from(self, seq: int, limit: int = 64) -> list[StoredPacket]:
        def read() -> list[StoredPacket]:
            start: str | bytes = f"{seq}-1"
            # the packet holding seq, if it starts earlier
            before = cast(list[Entry], self._r.xrevrange(self.k_log, start, "-", count=1))
            if before and _seq(before[0][0]) + int(before[0][1][b"c"]) > seq:
                start = before[0][0]
            return [_packet(eid, fields)
                    for eid, fields in cast(list[Entry], self._r.xrange(self.k_log, start, "+", count=limit))]
        return self._call("reading packets", read)

    def close_reader(self) -> None:
        """Nothing per thread: redis-py's pool hands each call a connection."""

    # ------------------------------------------------------------------ tailing
    def follow(self, on_commit: OnCommit) -> None:
        self._followers.append(on_commit)
        if self._tailer is None:
            self._tailer = threading.Thread(target=self._tail, name=f"redis-tail-{self.channel}", daemon=True)
            self._tailer.start()

    def _tail(self) -> None:
        expect = self._tail_next  # the seq the next entry must start at: seqs are dense
        last: str | bytes = f"{expect - 1}-1" if expect else "0-0"
        attempt = 0
        while not self._stop.is_set() and self._reset is None:
            try:
                floor = self._known_next  # read first: an append committed meanwhile only raises the store's
                pipe = self._tail_r.pipeline(transaction=False)
                pipe.xread({self.k_log: last}, count=TAIL_BATCH, block=TAIL_BLOCK_MS)
                pipe.hmget(self.k_meta, *_EPOCH_FIELDS)  # answered as soon as the XREAD returns
                got, meta = cast(tuple[list[tuple[bytes, list[Entry]]], list[bytes | None]], pipe.execute())
                if self._reset_in(_state(meta), floor):  # before a batch reaches the channel
                    return
                if got and self._bound is not None and self._gap(expect, _seq(got[0][1][0][0])):
                    return
            except (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError) as e:
                if self._stop.is_set():
                    return
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("channel %s: Redis store %s unreachable (%s); retrying", self.channel, self.url, e)
                self._count_error("tailing")
                attempt += 1
                self._stop.wait(min(2.0, 0.05 * 2 ** attempt))
                continue
            if self._down_since is not None:
                log.info("channel %s: Redis store reachable again after %.1f s", self.channel,
                         time.monotonic() - self._down_since)
                self._down_since, attempt = None, 0
            if not got:
                continue
            packets = [_packet(eid, fields) for eid, fields in got[0][1]]
            last, expect = got[0][1][-1][0], packets[-1].end_seq
            self._known_next = max(self._known_next, expect)
            for follower in self._followers:
                follower(packets)

    def _gap(self, expect: int, first: int) -> bool:
        """Whether the stream going on at `first` where `expect` was next is a reset (reported). Seqs are
        dense, so a gap is either retention (the entries from `expect` on were trimmed before this
        tailer read them: the head is past it) or a log this replica never read."""
        if first == expect:
            return False
        if self._reset_found():
            return True
        head = cast(list[Entry], self._tail_r.xrange(self.k_log, "-", "+", count=1))
        if head and _seq(head[0][0]) > expect:
            return False
        self._fail(self._epoch_state(self._tail_r), f"a log that goes on at seq {first} where seq {expect} was next")
        return True

    def _reset_found(self) -> bool:
        floor = self._known_next
        return self._reset_in(self._epoch_state(self._tail_r), floor)

    def _reset_in(self, found: EpochState, floor: int) -> bool:
        """Whether what the store holds is a reset against the bound epoch and the seqs this replica
        had seen (floor, read before the store was asked); reported when it is."""
        if self._bound is None:
            return False
        if found.epoch != self._bound.epoch or found.next_seq < floor:
            self._fail(found)
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        if self._tailer is not None:
            self._tailer.join(timeout=TAIL_BLOCK_MS / 1000 + 2)
        self._r.close()
        self._tail_r.close()


_EPOCH_FIELDS = ("epoch", "next_seq", "epoch_start", "epoch_prev")


def _state(values: list[Any]) -> EpochState:
    """An EpochState from HMGET meta _EPOCH_FIELDS."""
    epoch, nxt, start, prev = values
    return EpochState(epoch.decode() if epoch else "", int(nxt or 0), int(start or 0), prev.decode() if prev else "")


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _packet(entry_id: bytes, f: dict[bytes, bytes]) -> StoredPacket:
    return StoredPacket(_seq(entry_id), int(f[b"c"]), float(f[b"t"]), f[b"m"].decode(), int(f[b"q"]), bytes(f[b"p"]),
                        unpack_scores(f.get(b"s")))
