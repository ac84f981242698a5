"""The original distlockd 1.0.3 Python client against our server.

Run by tests/python_compat.rs with the venv's interpreter:
    python compat.py HOST PORT NAME_HELD_BY_RUST
Exits non-zero (AssertionError) on any difference from the original server.
"""
import sys
import time

from distlockd.client import Client
from distlockd.exceptions import LockAcquisitionTimeout, LockReleaseError

host, port, held_by_rust = sys.argv[1], int(sys.argv[2]), sys.argv[3]

client = Client(host=host, port=port)
assert client.check_server_health(), "health check failed"

# Manual acquire and release.
assert client.acquire("py-basic", timeout=1.0) is True
assert client.release("py-basic") is True

# The context manager, with a second client contending.
other = Client(host=host, port=port)
with client.lock("py-ctx", timeout=1.0):
    start = time.time()
    try:
        with other.lock("py-ctx", timeout=0.5):
            raise AssertionError("a second client entered a held lock")
    except LockAcquisitionTimeout:
        waited = time.time() - start
        assert waited >= 0.5, f"timed out after {waited:.3f}s, before its 0.5s timeout"
    # A client that does not hold the lock cannot release it.
    try:
        other.release("py-ctx")
        raise AssertionError("a non-owner released the lock")
    except LockReleaseError:
        pass
# Released on exit from the with-block: the other client gets it now.
assert other.acquire("py-ctx", timeout=1.0) is True
assert other.release("py-ctx") is True

# Re-acquiring a lock this client holds is OK, as on the original server.
assert client.acquire("py-again", timeout=1.0) is True
assert client.acquire("py-again", timeout=1.0) is True
assert client.release("py-again") is True

# A hold taken through the native protocol excludes the legacy client.
try:
    client.acquire(held_by_rust, timeout=0.3)
    raise AssertionError("the legacy client acquired a lock held by a native client")
except LockAcquisitionTimeout:
    pass

# Leave one hold for the Rust side to observe after we exit.
assert client.acquire("held-by-python", timeout=1.0) is True
print("COMPAT OK")
