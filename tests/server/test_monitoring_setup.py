"""Where the reference profile comes from, and what happens when it is missing or wrong."""
from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from modelship_server.drift import PROFILE_FILENAME
from modelship_server.model import fetch
from modelship_server.monitoring import build_monitoring
from modelship_server.settings import Settings, SettingsError
from modelship_server.signature import Signature


@pytest.fixture(scope="module")
def signature(model_dir: Path) -> Signature:
    return Signature.from_file(model_dir / "signature.json")


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(model_dir=str(tmp_path / "downloads"), **kw)  # type: ignore[arg-type]


def test_profile_next_to_the_model_is_found(model_dir: Path, signature: Signature, tmp_path: Path) -> None:
    mon = build_monitoring(_settings(tmp_path), signature, str(model_dir / "model.pt"))
    assert mon.drift_state == "on" and mon.drift is not None and mon.drift.width == 64 and mon.drift_input == "input"
    assert mon.feedback is not None and mon.audit is None  # the defaults: feedback on, audit off
    off = build_monitoring(_settings(tmp_path, drift_reference="off"), signature, str(model_dir / "model.pt"))
    assert off.drift is None and off.drift_state == "off"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "model.pt", bare / "model.pt")
    none = build_monitoring(_settings(tmp_path), signature, str(bare / "model.pt"))
    assert none.drift is None and none.drift_state == "no profile"


def test_remote_model_download_brings_the_profile(http_base: str, tmp_path: Path) -> None:
    """What the operator's init container runs: the profile lands next to the model."""
    target = tmp_path / "mnt"
    path = fetch(http_base + "/model.pt", target)
    assert path == target / "model.pt" and (target / PROFILE_FILENAME).is_file()


def test_profile_by_http_uri_and_relative_path(model_dir: Path, signature: Signature, http_base: str, tmp_path: Path) -> None:
    mon = build_monitoring(_settings(tmp_path, drift_reference=f"{http_base}/{PROFILE_FILENAME}", allow_insecure_http=True),
                           signature, None)  # fmt: skip
    assert mon.drift_state == "on" and (tmp_path / "downloads" / "drift" / PROFILE_FILENAME).is_file()
    elsewhere = tmp_path / "profiles"
    elsewhere.mkdir()
    (tmp_path / "bare").mkdir()
    shutil.copy(model_dir / PROFILE_FILENAME, elsewhere / "digits.json")
    rel = build_monitoring(_settings(tmp_path, drift_reference="../profiles/digits.json"), signature,
                           str(tmp_path / "bare" / "model.pt"))  # fmt: skip
    assert rel.drift_state == "on"
    absolute = build_monitoring(_settings(tmp_path, drift_reference=str(elsewhere / "digits.json")), signature, None)
    assert absolute.drift_state == "on"


def test_a_bad_or_missing_profile_turns_drift_off_not_the_server(model_dir: Path, signature: Signature,
                                                                http_base: str, tmp_path: Path) -> None:  # fmt: skip
    missing = build_monitoring(_settings(tmp_path, drift_reference=str(tmp_path / "nope.json")), signature, None)
    assert missing.drift is None and missing.drift_state.startswith("error:") and "not found" in missing.drift_state
    gone = build_monitoring(_settings(tmp_path, drift_reference=f"{http_base}/nope.json", allow_insecure_http=True),
                            signature, None)  # fmt: skip
    assert gone.drift is None and "HTTP 404" in gone.drift_state
    profile = json.loads((model_dir / PROFILE_FILENAME).read_text())
    profile["features"] = profile["features"][:10]  # a profile of another model
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps(profile))
    wrong = build_monitoring(_settings(tmp_path, drift_reference=str(narrow)), signature, None)
    assert wrong.drift is None and "64 values per row" in wrong.drift_state
    narrow.write_text("{not json")
    broken = build_monitoring(_settings(tmp_path, drift_reference=str(narrow)), signature, None)
    assert broken.drift is None and "invalid JSON" in broken.drift_state


class _SlowProfile(http.server.BaseHTTPRequestHandler):
    """64 MiB without a Content-Length, 64 KiB every 50 ms (50 s in all)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("connection", "close")
        self.end_headers()
        try:
            for _ in range(1024):
                self.wfile.write(b" " * 65536)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the downloader gave up
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_the_profile_download_follows_the_model_download_rules(signature: Signature, http_base: str,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """Plain http:// only when allowed, the byte limit and the deadline: drift off, said why,
    nothing left behind; the server still builds its monitors."""
    url = f"{http_base}/{PROFILE_FILENAME}"
    target = tmp_path / "downloads" / "drift" / PROFILE_FILENAME
    refused = build_monitoring(_settings(tmp_path, drift_reference=url), signature, None)
    assert refused.drift is None and "refusing plain http://" in refused.drift_state
    assert refused.feedback is not None and not target.exists()
    too_big = build_monitoring(_settings(tmp_path, drift_reference=url, allow_insecure_http=True, model_max_bytes=1000),
                               signature, None)  # fmt: skip
    assert too_big.drift is None and "download limit of 1000 bytes" in too_big.drift_state
    assert not target.exists() and list(target.parent.iterdir()) == []
    # The model's sha256 is the model file's: it does not apply to the profile.
    checked = build_monitoring(_settings(tmp_path, drift_reference=url, allow_insecure_http=True, model_sha256="0" * 64),
                               signature, None)  # fmt: skip
    assert checked.drift_state == "on" and target.is_file()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowProfile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        slow = f"http://127.0.0.1:{httpd.server_address[1]}/{PROFILE_FILENAME}"
        start = time.monotonic()
        late = build_monitoring(_settings(tmp_path / "late", drift_reference=slow, allow_insecure_http=True,
                                          fetch_deadline_s=1), signature, None)  # fmt: skip
        assert time.monotonic() - start < 10
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert late.drift is None and "deadline of 1s passed" in late.drift_state
    assert list((tmp_path / "late" / "downloads" / "drift").iterdir()) == []


def test_monitoring_settings_from_env_and_their_checks() -> None:
    s = Settings.from_env({
        "MODELSHIP_DRIFT_WINDOW": "500", "MODELSHIP_DRIFT_INTERVAL_S": "2.5", "MODELSHIP_FEEDBACK_PEERS": "a:8080, b:8080",
        "MODELSHIP_AUDIT_LOG": "stdout", "MODELSHIP_AUDIT_MASK": "client,input", "MODELSHIP_AUDIT_SAMPLE_RATE": "0.1",
    })  # fmt: skip
    assert s.drift_window == 500 and s.drift_interval_s == 2.5 and s.audit_enabled
    assert s.feedback_peer_list == ["a:8080", "b:8080"] and s.audit_mask_fields == ["client", "input"]
    assert not Settings().audit_enabled and Settings(audit_file="/tmp/x").audit_enabled
    for bad in ({"audit_log": "stderr"}, {"audit_inputs": "all"}, {"audit_sample_rate": 2.0},
                {"drift_interval_s": 0.0}, {"drift_ks_threshold": 1.5}, {"feedback_max_entries": -1},
                {"feedback_peers": "a:8080,b"}, {"feedback_peers": "a:http"}):  # fmt: skip
        with pytest.raises(SettingsError):
            Settings(**bad)  # type: ignore[arg-type]


def test_drift_window_fits_its_byte_budget(model_dir: Path, signature: Signature, tmp_path: Path) -> None:
    mon = build_monitoring(_settings(tmp_path, drift_window=1000, drift_max_bytes=64 * 4 * 300), signature,
                           str(model_dir / "model.pt"))  # fmt: skip
    assert mon.drift is not None and mon.drift.window == 300 and mon.drift.nbytes == 300 * 64 * 4
    roomy = build_monitoring(_settings(tmp_path, drift_window=1000), signature, str(model_dir / "model.pt"))
    assert roomy.drift is not None and roomy.drift.window == 1000  # the default budget (16 MiB) does not cut it
