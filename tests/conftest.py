"""Shared test settings: fixed keys, small sizes; `slow` marks the statistical checks."""

import os

# Keep XLA from grabbing both cores' worth of threads per test process beyond what it needs.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
