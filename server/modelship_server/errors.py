"""Errors the server turns into HTTP responses: `{"error": "..."}` with a status code."""
from __future__ import annotations


class ServerError(Exception):
    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServerError):
    """Bad shape, dtype, non-finite values, too many rows, malformed JSON, missing fields."""

    status = 400


class NotFound(ServerError):
    status = 404


class Unavailable(ServerError):
    """Not ready, shutting down or overloaded: the client should retry."""

    status = 503
    headers = {"retry-after": "1"}


class QueueFull(Unavailable):
    def __init__(self, message: str = "server overloaded: queue full, retry later") -> None:
        super().__init__(message)


class ShuttingDown(Unavailable):
    def __init__(self, message: str = "server is shutting down") -> None:
        super().__init__(message)


class Timeout(ServerError):
    status = 504

    def __init__(self, message: str = "request timed out") -> None:
        super().__init__(message)


class InferenceFailed(ServerError):
    """The model raised on this request alone (its batch-mates were retried without it).

    A 500: the input passed validation against the signature, so a model that raises is
    broken, and a canary's error rate must show it.
    """

    status = 500
