"""Fetching model files: file://, plain paths, http(s)://, s3:// (boto3, the `s3` extra).

No torch here: the operator's init container runs `python -m modelship_server.fetch URI DIR`
to download a model (plus an optional signature.json and reference_profile.json next to it)
into a shared volume, and the server then loads a plain local file.

Integrity (FetchOptions, from flags or the MODELSHIP_* variables the server reads too): an
expected sha256 of the model file, a byte limit over all files of one fetch, an overall
deadline, and plain http:// refused (redirects to it included) unless explicitly allowed.
A download that fails any of them leaves no file behind.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .drift import PROFILE_FILENAME
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
CHUNK = 1 << 20
SOCKET_TIMEOUT_S = 60.0  # per connect / read; the deadline bounds the whole download


class ModelLoadError(RuntimeError):
    """The model cannot be fetched, recognised or run."""


class FetchLimitError(ModelLoadError):
    """A download broke a limit (size, deadline, checksum, scheme): fatal even for optional files."""


@dataclass(frozen=True)
class FetchOptions:
    sha256: str = ""  # expected hex digest of the model file; "" = not checked
    max_bytes: int = 0  # all files of one fetch together; 0 = no limit
    deadline_s: float = 3600.0  # the whole fetch; 0 = none
    allow_insecure_http: bool = False  # plain http:// (and redirects to it)

    @classmethod
    def from_settings(cls, settings: Any) -> FetchOptions:
        return cls(settings.model_sha256.lower(), settings.model_max_bytes, settings.fetch_deadline_s,
                   settings.allow_insecure_http)  # fmt: skip


# What fetch() does for library callers that pass no options (e.g. a drift profile): no checks.
UNCHECKED = FetchOptions(deadline_s=0.0, allow_insecure_http=True)


class _Budget:
    """The limits of one fetch call, shared by its files."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.bytes_left = options.max_bytes or None
        self.deadline = time.monotonic() + options.deadline_s if options.deadline_s else None

    def timeout(self) -> float:
        if self.deadline is None:
            return SOCKET_TIMEOUT_S
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._late()
        return min(SOCKET_TIMEOUT_S, remaining)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self._late()

    def _late(self) -> None:
        raise FetchLimitError(f"download deadline of {self.options.deadline_s:g}s passed (MODELSHIP_FETCH_DEADLINE_S)")

    def take(self, n: int, what: str) -> None:
        if self.bytes_left is None:
            return
        if n > self.bytes_left:
            raise FetchLimitError(f"{what}: larger than the download limit of {self.options.max_bytes} bytes "
                                  "(MODELSHIP_MODEL_MAX_BYTES)")  # fmt: skip
        self.bytes_left -= n

    def check_scheme(self, url: str) -> None:
        if urllib.parse.urlparse(url).scheme.lower() == "http" and not self.options.allow_insecure_http:
            raise FetchLimitError(f"refusing plain http:// ({url}): use https://, or allow it explicitly with "
                                  "MODELSHIP_ALLOW_INSECURE_HTTP=true (--allow-insecure-http)")  # fmt: skip


def fetch(uri: str, model_dir: Path, options: FetchOptions | None = None) -> Path:
    """Local path of the model named by `uri`, downloading remote ones into model_dir."""
    budget = _Budget(options or UNCHECKED)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
        if not path.exists():
            raise ModelLoadError(f"model not found: {path}")
        if budget.options.sha256:
            _verify_local(path, budget.options.sha256)
        return path
    if parsed.scheme in ("http", "https"):
        budget.check_scheme(uri)
        return _fetch_remote(uri, model_dir, _http_get, budget)
    if parsed.scheme == "s3":
        return _fetch_remote(uri, model_dir, _s3_get, budget)
    raise ModelLoadError(f"unsupported model URI scheme {parsed.scheme!r} (file, http, https, s3)")


def _fetch_remote(uri: str, model_dir: Path, get: Any, budget: _Budget) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(uri).path).name or "model.pt"
    target = model_dir / name
    get(uri, target, True, budget, budget.options.sha256)
    # A signature next to the remote model is optional (export programs carry their own),
    # and so is the drift reference profile (no profile: no drift monitoring).
    base = uri.rsplit("/", 1)[0] + "/"
    get(base + SIGNATURE_FILE, model_dir / SIGNATURE_FILE, False, budget, "")
    get(base + PROFILE_FILENAME, model_dir / PROFILE_FILENAME, False, budget, "")
    return target


def fetch_file(uri: str, target: Path, options: FetchOptions | None = None) -> None:
    """Download one http(s):// or s3:// file to `target` (ModelLoadError when it fails)."""
    budget = _Budget(options or UNCHECKED)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("http", "https", "s3"):
        raise ModelLoadError(f"unsupported URI scheme {scheme!r} (http, https, s3)")
    if scheme != "s3":
        budget.check_scheme(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    (_s3_get if scheme == "s3" else _http_get)(uri, target, True, budget, "")


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but not from https:// to plain http:// unless that is allowed."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.budget.check_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_get(url: str, target: Path, required: bool, budget: _Budget, sha256: str) -> None:
    opener = urllib.request.build_opener(_NoDowngrade(budget))
    try:
        with opener.open(url, timeout=budget.timeout()) as resp:
            _write_atomically(resp, target, budget, sha256, url, resp.headers.get("content-length"))
    except FetchLimitError:
        raise
    except urllib.error.HTTPError as e:
        if required or e.code != 404:
            if required:
                raise ModelLoadError(f"cannot download {url}: HTTP {e.code}") from e
            log.warning("cannot download %s: HTTP %s", url, e.code)
    except (urllib.error.URLError, OSError) as e:
        if isinstance(getattr(e, "reason", None), FetchLimitError):  # raised in a redirect
            raise e.reason from None  # type: ignore[misc]
        if required:
            raise ModelLoadError(f"cannot download {url}: {e}") from e


def _s3_get(uri: str, target: Path, required: bool, budget: _Budget, sha256: str) -> None:
    try:
        import boto3  # optional extra: pip install 'modelship[s3]'
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as e:
        raise ModelLoadError("s3:// model URIs need boto3: install the 's3' extra (pip install 'modelship[s3]')") from e
    parsed = urllib.parse.urlparse(uri)
    try:
        obj = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        _write_atomically(obj["Body"], target, budget, sha256, uri, obj.get("ContentLength"))
    except (BotoCoreError, ClientError) as e:
        if required:
            raise ModelLoadError(f"cannot download {uri}: {e}") from e


def _write_atomically(stream: Any, target: Path, budget: _Budget, sha256: str, what: str, length: Any = None) -> None:
    """Copy `stream` to `target` within the budget, checking the digest; nothing is left behind
    when any check fails (the file appears only when complete and verified)."""
    if length is not None and str(length).isdigit():
        if budget.bytes_left is not None and int(length) > budget.bytes_left:
            raise FetchLimitError(f"{what}: {length} bytes, more than the download limit of "
                                  f"{budget.options.max_bytes} bytes (MODELSHIP_MODEL_MAX_BYTES)")  # fmt: skip
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                budget.check_time()
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                budget.take(len(chunk), what)
                digest.update(chunk)
                out.write(chunk)
        budget.check_time()
        if sha256 and digest.hexdigest() != sha256.lower():
            raise FetchLimitError(f"{what}: sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()} "
                                  "(download removed)")  # fmt: skip
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _verify_local(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise ModelLoadError(f"a model sha256 is set but {path} is a directory: name the model file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        raise FetchLimitError(f"{path}: sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()}")


def options_from(args: argparse.Namespace, env: Mapping[str, str]) -> FetchOptions:
    """Flags win over the MODELSHIP_* variables (the names the server's settings use)."""
    names = ("model_sha256", "model_max_bytes", "fetch_deadline_s", "allow_insecure_http")
    values: dict[str, Any] = {n: env["MODELSHIP_" + n.upper()] for n in names if env.get("MODELSHIP_" + n.upper())}
    flags = {"model_sha256": args.sha256, "model_max_bytes": args.max_bytes, "fetch_deadline_s": args.deadline_s,
             "allow_insecure_http": True if args.allow_insecure_http else None}  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return FetchOptions.from_settings(Settings().override(values))
    except SettingsError as e:
        raise ModelLoadError(str(e)) from None


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`python -m modelship_server.fetch URI DIR`: download and print the local model path."""
    p = argparse.ArgumentParser(
        prog="python -m modelship_server.fetch",
        description="Download a model (and its signature.json / reference_profile.json) into DIR.",
    )
    p.add_argument("uri")
    p.add_argument("dir")
    p.add_argument("--sha256", help="expected sha256 of the model file (env MODELSHIP_MODEL_SHA256)")
    p.add_argument("--max-bytes", help="most bytes of all files together (env MODELSHIP_MODEL_MAX_BYTES; 0 = no limit)")
    p.add_argument("--deadline-s", help="the whole download within this (env MODELSHIP_FETCH_DEADLINE_S; default 3600, 0 = none)")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow plain http:// (env MODELSHIP_ALLOW_INSECURE_HTTP=true)")  # fmt: skip
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = options_from(args, os.environ if env is None else env)
        print(fetch(args.uri, Path(args.dir), options))
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
