"""`python -m benchmarks.rd`."""

from .cli import main

raise SystemExit(main())
