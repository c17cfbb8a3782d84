"""Container health check, the same for every role (no curl in slim images).

Healthy when /healthz answers 200 on the HTTP port (receiver, `run`) or on the metrics port
(assigner, syncer, relay).
"""

import os
import sys
import urllib.request

PORTS = (
    os.environ.get("OWNERSYNC_PORT", "8000"),
    os.environ.get("OWNERSYNC_METRICS_PORT", "9100"),
)

for port in PORTS:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            if reply.status == 200:
                sys.exit(0)
    except OSError:
        continue
sys.exit(1)
