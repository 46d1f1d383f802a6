"""Server request ids: 128 random bits from the OS CSPRNG, as 32 hex characters.

An id is what a client shows `/feedback` to claim a prediction, so it must not be guessable
from the ids a client has seen (a counter was: an attacker could answer for its neighbours).
`os.urandom` is read 4 KiB at a time: one syscall per 256 ids instead of one per request.
"""
from __future__ import annotations

import os
import threading

ID_BYTES = 16  # 128 bits


class RandomIds:
    """Callable: a new id (ASCII bytes) per call. Thread-safe; a forked child refills its pool,
    so parent and child never hand out the same ids."""

    def __init__(self, pool_bytes: int = 4096) -> None:
        self._pool_bytes = pool_bytes - pool_bytes % ID_BYTES or ID_BYTES
        self._pool = b""
        self._pos = 0
        self._lock = threading.Lock()
        self._fork_hook = False

    def __call__(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos >= len(self._pool):
                if not self._fork_hook:  # registered on first use, not at import
                    os.register_at_fork(after_in_child=self._reset)
                    self._fork_hook = True
                self._pool, pos = os.urandom(self._pool_bytes), 0
            self._pos = pos + ID_BYTES
            return self._pool[pos : pos + ID_BYTES].hex().encode()

    def _reset(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork stays held in the child
        self._pool, self._pos = b"", 0


new_request_id = RandomIds()
