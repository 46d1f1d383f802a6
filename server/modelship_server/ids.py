"""Server request ids: 128 random bits from the OS CSPRNG, as 32 hex characters.

An id is what a client shows `/feedback` to claim a prediction, so it must not be guessable
from the ids a client has seen (a counter was: an attacker could answer for its neighbours).
`os.urandom` is read 4 KiB at a time: one syscall per 256 ids instead of one per request.
"""
from __future__ import annotations

import os

ID_BYTES = 16  # 128 bits


class RandomIds:
    """Callable: a new id (ASCII bytes) per call. Thread-safe without a lock (list.pop is
    atomic; a refill race only draws more random bytes); a forked child drops the ids its
    parent drew, so the two never hand out the same ones."""

    def __init__(self, pool_bytes: int = 4096) -> None:
        self._count = max(1, pool_bytes // ID_BYTES)
        self._ids: list[bytes] = []
        self._fork_hook = False

    def __call__(self) -> bytes:
        while True:
            try:
                return self._ids.pop()
            except IndexError:
                self._refill()

    def _refill(self) -> None:
        if not self._fork_hook:  # registered on first use, not at import
            os.register_at_fork(after_in_child=self._ids.clear)
            self._fork_hook = True
        text = os.urandom(self._count * ID_BYTES).hex().encode()
        step = 2 * ID_BYTES
        self._ids.extend(text[i : i + step] for i in range(0, len(text), step))


new_request_id = RandomIds()
