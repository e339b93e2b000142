"""latentwire.server: `latentwire serve`, the gRPC streaming server.

Holds: main.py (assembly, data-dir lock, CLI), service.py (the servicer: auth and RPCs),
admission.py (what a Publish message may commit, plain functions), wire.py (proto conversion),
batcher.py (the single writer per channel), channels.py (fan-out tail, waiters), store.py (the
channel store interface) with sqlite_store.py and redis_store.py (redis_settings.py: Redis's
persistence settings), epoch.py (channel epochs: a reset store is noticed, no seq handed out
twice), auth.py, config.py, metrics.py.

May import latentwire.codec (the runtime, never codec.training) and the latentwire.v1 stubs;
never latentwire.client.
"""
