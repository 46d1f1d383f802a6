"""Client load from inside the pod netns (cluster_services.NetnsLoad runs it there), stdlib only.

    ip netns exec podnet python service_load.py URL BODIES.json RPS

POSTs `{"features": row}` to URL (…/predict), one new connection per request (so a Service's
round-robin spreads them, as many clients would), cycling through the rows of BODIES.json, at
most RPS a second, until stdin closes. Every 0.25 s (and at the end) it prints one JSON line of
cumulative counts: {"sent": n, "codes": {"200": n, "0": n (no answer)}, "versions": {"1.0.0": n}}
(versions: the X-Model-Version of 2xx answers).
"""
from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
import urllib.parse


def main() -> None:
    url, bodies, rps = urllib.parse.urlsplit(sys.argv[1]), json.load(open(sys.argv[2])), float(sys.argv[3])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    counts: dict = {"sent": 0, "codes": {}, "versions": {}}
    last_print = 0.0
    for row in itertools.cycle(bodies):
        if stop.is_set():
            break
        started = time.monotonic()
        code, version = 0, None
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
        try:
            conn.request("POST", url.path or "/", json.dumps({"features": row}),
                         {"Content-Type": "application/json", "Connection": "close"})
            rsp = conn.getresponse()
            rsp.read()
            code, version = rsp.status, rsp.getheader("x-model-version")
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        counts["sent"] += 1
        counts["codes"][str(code)] = counts["codes"].get(str(code), 0) + 1
        if 200 <= code < 300 and version:
            counts["versions"][version] = counts["versions"].get(version, 0) + 1
        now = time.monotonic()
        if now - last_print >= 0.25:
            print(json.dumps(counts), flush=True)
            last_print = now
        time.sleep(max(0.0, 1 / rps - (now - started)))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
