"""Model monitoring wired into the server: drift, feedback and audit (docs/monitoring.md).

No torch, no FastAPI. `build_monitoring` runs once the model is loaded (on the loader
thread: it may read or download the reference profile). On the request path: `record` (a dict
insert per request, on the event loop) and `observe_batch` (a ring-buffer copy per forward
pass, on the forward thread); drift is scored by `run` on an interval in a worker thread; the
audit logger formats and writes from its own thread.
"""
from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .audit import AuditLogger
from .drift import PROFILE_FILENAME, DriftMonitor, DriftReport, PeriodicStats, ProfileError, load_profile, run_periodically
from .fetch import FetchOptions, fetch_file
from .feedback import FeedbackStore
from .settings import Settings
from .signature import Signature

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http", "https", "s3")


@dataclass
class Monitoring:
    """The monitors of one served model; any of them may be off (None)."""

    drift: DriftMonitor | None = None
    drift_input: str = ""  # the input tensor the drift monitor watches
    drift_state: str = "off"  # on | off | no profile | error: ...
    drift_interval_s: float = 30.0
    drift_max_bytes: int = 0  # the drift window's byte budget (the window is cut to fit it)
    feedback: FeedbackStore | None = None
    audit: AuditLogger | None = None
    classifier: bool = True
    first_output: str = ""
    report: DriftReport | None = None  # the last periodic computation
    periodic: PeriodicStats = field(default_factory=PeriodicStats)
    observe_errors: int = 0  # inputs the drift monitor could not take (shape mismatch)

    # -- request path ----------------------------------------------------------------------
    def observe_batch(self, inputs: Mapping[str, np.ndarray]) -> None:
        """The inputs of a forward pass that succeeded into the drift window. On the forward
        thread, once per batch: no per-request cost on the event loop."""
        drift = self.drift
        if drift is None:
            return
        x = inputs.get(self.drift_input)
        if x is not None:
            try:
                drift.observe(x)
            except ProfileError as e:
                self.observe_errors += 1
                if self.observe_errors == 1:
                    log.warning("drift: input %r does not fit the reference profile: %s", self.drift_input, e)

    def record(self, request_id: str, result: Any, unique: bool = False) -> None:
        """A successful request's predictions, kept under its request id for feedback (event loop).
        `unique`: the server drew the id (never seen before: the store skips its duplicate check)."""
        store = self.feedback
        if store is not None:
            try:
                classes = result.classes if self.classifier else None
                if classes is not None:
                    # one row: a plain int, no array (the store copies anything else)
                    store.record(request_id, classes.item(0) if len(classes) == 1 else classes, unique)
                else:
                    out = result.outputs[self.first_output]
                    store.record(request_id, out.reshape(out.shape[0], -1) if out.ndim > 2 else out, unique)
            except (ValueError, KeyError, IndexError) as e:  # monitoring never fails a request
                self.observe_errors += 1
                if self.observe_errors == 1:
                    log.warning("feedback: cannot record the predictions of %s: %s", request_id, e)

    # -- off the request path --------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Score drift every interval in a worker thread until `stop` is set."""
        if self.drift is None:
            return
        await run_periodically(self.drift_interval_s, self.drift.compute, on_result=self._set_report,
                               stop=stop, stats=self.periodic)  # fmt: skip

    def _set_report(self, report: DriftReport) -> None:
        self.report = report
        if report.drift:
            log.warning("drift detected in %d feature(s): %s (psi max %.3f)",
                        len(report.drifted), ", ".join(report.drifted[:10]), report.psi_max)  # fmt: skip

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


def build_monitoring(settings: Settings, signature: Signature, model_path: str | None) -> Monitoring:
    """The monitors `settings` ask for. A missing or broken profile turns drift off (logged);
    it never stops the model from serving."""
    s = settings
    mon = Monitoring(
        drift_interval_s=s.drift_interval_s,
        drift_max_bytes=s.drift_max_bytes,
        classifier=signature.is_classifier,
        first_output=signature.outputs[0].name,
    )
    try:
        located = locate_profile(s, model_path)
    except Exception as e:  # noqa: BLE001 - missing or not downloadable: drift off, said loudly
        located, mon.drift_state = None, f"error: {e}"
        log.error("drift monitoring off: %s", e)
    if located is None:
        if mon.drift_state == "off" and s.drift_reference != "off":
            mon.drift_state = "no profile"
            log.info("drift monitoring off: no %s next to the model", PROFILE_FILENAME)
    else:
        try:
            mon.drift, mon.drift_input = _drift_monitor(s, signature, located)
            mon.drift_state = "on"
            log.info("drift monitoring on: input %r, %d features, profile %s", mon.drift_input, mon.drift.width, located)
        except (ProfileError, OSError, ValueError) as e:
            mon.drift_state = f"error: {e}"
            log.error("drift monitoring off: %s", e)
    if s.feedback_max_entries > 0:
        mon.feedback = FeedbackStore(
            s.feedback_ttl_s, s.feedback_max_entries,
            task="classification" if signature.is_classifier else "regression",
            window=s.feedback_window, max_rows=s.feedback_max_rows, labels=signature.labels or None,
            max_bytes=s.feedback_max_bytes, num_classes=_class_count(signature),
        )  # fmt: skip
    if s.audit_enabled:
        mon.audit = AuditLogger(
            path=s.audit_file or None, to_stream=s.audit_log == "stdout", sample_rate=s.audit_sample_rate,
            include_inputs=s.audit_inputs, mask_fields=s.audit_mask_fields, max_bytes=s.audit_max_bytes,
        )  # fmt: skip
    return mon


def _class_count(signature: Signature) -> int | None:
    """Classes a classifier's argmax can return (its first output's last dimension), if fixed."""
    if not signature.is_classifier:
        return None
    width = signature.outputs[0].shape[-1] if len(signature.outputs[0].shape) > 1 else -1
    return width if width > 0 else None


def locate_profile(settings: Settings, model_path: str | None) -> Path | None:
    """The local file of the reference profile, downloading a remote one; None when there is none."""
    ref = settings.drift_reference
    if ref == "off":
        return None
    model_dir = Path(model_path).parent if model_path else None
    if ref == "":
        if model_dir is None or not (model_dir / PROFILE_FILENAME).is_file():
            return None
        return model_dir / PROFILE_FILENAME
    parsed = urllib.parse.urlparse(ref)
    if parsed.scheme in REMOTE_SCHEMES:
        target = Path(settings.model_dir) / "drift" / PROFILE_FILENAME
        # The model download's rules (http:// only when allowed, size limit, deadline); its
        # sha256 is the model file's, so it is not checked here.
        fetch_file(ref, target, FetchOptions.from_settings(settings))
        return target
    path = Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else Path(ref)
    if not path.is_absolute():
        if model_dir is None:
            raise ProfileError(f"relative drift reference {ref!r} but no local model directory")
        local = model_dir / path
        model_uri = urllib.parse.urlparse(settings.model_uri)
        if not local.exists() and model_uri.scheme in REMOTE_SCHEMES:
            url = settings.model_uri.rsplit("/", 1)[0] + "/" + path.as_posix()
            fetch_file(url, local, FetchOptions.from_settings(settings))
        path = local
    if not path.exists():
        raise ProfileError(f"reference profile {path} not found")
    return path


def _drift_monitor(s: Settings, signature: Signature, path: Path) -> tuple[DriftMonitor, str]:
    profile = load_profile(path)
    names = [spec.name for spec in signature.inputs]
    watched = str(profile.get("input") or names[0])
    if watched not in names:
        if len(names) != 1:
            raise ProfileError(f"the profile describes input {watched!r}; the model's inputs are {names}")
        watched = names[0]  # one input: the profile's name for it does not matter
    spec = signature.inputs[names.index(watched)]
    width = math.prod(spec.row_shape) if all(d >= 0 for d in spec.row_shape) else None
    if width is not None and width != len(profile["features"]):
        raise ProfileError(f"input {watched!r} has {width} values per row, the profile {len(profile['features'])} features")
    features = len(profile["features"])
    window = max(1, min(s.drift_window, s.drift_max_bytes // (features * 4)))
    if window < s.drift_window:
        log.warning("drift window cut to %d rows (MODELSHIP_DRIFT_WINDOW=%d): %d features x 4 bytes x rows must fit "
                    "MODELSHIP_DRIFT_MAX_BYTES=%d", window, s.drift_window, features, s.drift_max_bytes)  # fmt: skip
    monitor = DriftMonitor(
        profile, window=window, threshold=s.drift_threshold,
        ks_threshold=s.drift_ks_threshold or None, min_rows=s.drift_min_rows,
    )  # fmt: skip
    return monitor, watched
