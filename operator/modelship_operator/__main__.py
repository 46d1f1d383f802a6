"""`python -m modelship_operator`: run the operator (what the image and the chart start)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import logs
from .runtime import LeadershipLost, operator
from .kube import Connection
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship_operator",
                                     description="Run the modelship operator (settings: MODELSHIP_* env).")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                        help="liveness endpoint URL, also answered while waiting for the Lease "
                             "('' to disable); default %(default)s")
    parser.add_argument("--kubeconfig", default=None,
                        help="use this kubeconfig instead of in-cluster config / KUBECONFIG")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        print(f"modelship-operator: invalid settings: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    connection = (Connection.from_kubeconfig(args.kubeconfig) if args.kubeconfig
                  else Connection.discover(os.environ))
    try:
        asyncio.run(operator(settings, connection, liveness_endpoint=args.liveness or None))
    except KeyboardInterrupt:
        pass
    except LeadershipLost as exc:  # exit: the restarted container waits for the Lease again
        logging.getLogger("modelship_operator").error("%s; exiting", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
