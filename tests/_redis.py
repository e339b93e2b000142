"""A real redis-server for the tests (the class the benchmarks use too): started on a free
loopback port, stopped afterwards. `.ci/run` (the README's test command) installs Debian's
redis-server when it is missing; tests that need it skip only where it truly cannot be found."""

from benchmarks.common import RedisServer

__all__ = ["RedisServer"]
