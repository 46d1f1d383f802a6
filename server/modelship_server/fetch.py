"""Fetching model files: file://, plain paths, http(s)://, s3:// (boto3, the `s3` extra).

No torch here: the operator's init container runs `python -m modelship_server.fetch URI DIR`
to download a model (plus an optional signature.json and reference_profile.json next to it)
into a shared volume, and the server then loads a plain local file.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .drift import PROFILE_FILENAME

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"


class ModelLoadError(RuntimeError):
    """The model cannot be fetched, recognised or run."""


def fetch(uri: str, model_dir: Path) -> Path:
    """Local path of the model named by `uri`, downloading remote ones into model_dir."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
        if not path.exists():
            raise ModelLoadError(f"model not found: {path}")
        return path
    if parsed.scheme in ("http", "https"):
        return _fetch_remote(uri, model_dir, _http_get)
    if parsed.scheme == "s3":
        return _fetch_remote(uri, model_dir, _s3_get)
    raise ModelLoadError(f"unsupported model URI scheme {parsed.scheme!r} (file, http, https, s3)")


def _fetch_remote(uri: str, model_dir: Path, get: Any) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(uri).path).name or "model.pt"
    target = model_dir / name
    get(uri, target, required=True)
    # A signature next to the remote model is optional (export programs carry their own),
    # and so is the drift reference profile (no profile: no drift monitoring).
    base = uri.rsplit("/", 1)[0] + "/"
    get(base + SIGNATURE_FILE, model_dir / SIGNATURE_FILE, required=False)
    get(base + PROFILE_FILENAME, model_dir / PROFILE_FILENAME, required=False)
    return target


def fetch_file(uri: str, target: Path) -> None:
    """Download one http(s):// or s3:// file to `target` (ModelLoadError when it fails)."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("http", "https", "s3"):
        raise ModelLoadError(f"unsupported URI scheme {scheme!r} (http, https, s3)")
    target.parent.mkdir(parents=True, exist_ok=True)
    (_s3_get if scheme == "s3" else _http_get)(uri, target, required=True)


def _http_get(url: str, target: Path, required: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            _write_atomically(resp, target)
    except urllib.error.HTTPError as e:
        if required or e.code != 404:
            if required:
                raise ModelLoadError(f"cannot download {url}: HTTP {e.code}") from e
            log.warning("cannot download %s: HTTP %s", url, e.code)
    except (urllib.error.URLError, OSError) as e:
        if required:
            raise ModelLoadError(f"cannot download {url}: {e}") from e


def _s3_get(uri: str, target: Path, required: bool) -> None:
    try:
        import boto3  # optional extra: pip install 'modelship[s3]'
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as e:
        raise ModelLoadError("s3:// model URIs need boto3: install the 's3' extra (pip install 'modelship[s3]')") from e
    parsed = urllib.parse.urlparse(uri)
    try:
        body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        _write_atomically(body, target)
    except (BotoCoreError, ClientError) as e:
        if required:
            raise ModelLoadError(f"cannot download {uri}: {e}") from e


def _write_atomically(stream: Any, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def main(argv: list[str] | None = None) -> int:
    """`python -m modelship_server.fetch URI DIR`: download and print the local model path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m modelship_server.fetch URI DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(fetch(args[0], Path(args[1])))
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
