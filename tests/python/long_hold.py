"""A job holding a lock longer than the native default TTL, through the
original distlockd 1.0.3 Python client, which never renews its holds.

Run by tests/python_compat.rs with the venv's interpreter, against a server
whose native default TTL is far below HOLD_SECONDS:
    python long_hold.py HOST PORT NAME HOLD_SECONDS
Exits non-zero if the hold is lost while the job runs or at its release.
"""
import sys
import time

from distlockd.client import Client
from distlockd.exceptions import LockAcquisitionTimeout

host, port, name, hold_seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])

job = Client(host=host, port=port)
other = Client(host=host, port=port)

# A hold never released, for the Rust side to find after we exit.
assert job.acquire(name + "-left", timeout=1.0) is True

# The with-block releases on exit and raises LockReleaseError if the hold
# was lost meanwhile.
with job.lock(name, timeout=1.0):
    time.sleep(hold_seconds)  # the job's work
    try:
        other.acquire(name, timeout=0.3)
        raise AssertionError(
            f"another client id acquired {name!r} {hold_seconds}s into the job's hold"
        )
    except LockAcquisitionTimeout:
        pass
assert other.acquire(name, timeout=1.0) is True, "released at the end of the job"
assert other.release(name) is True
print("LONG HOLD OK")
