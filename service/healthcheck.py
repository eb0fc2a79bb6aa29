"""`python -m edge_embed.service.healthcheck [--ready]`: exit 0 when the server answers GET /health
(with --ready: /ready) with 200, else 1 with the reason on stderr. The container image's
HEALTHCHECK: it needs no curl, and it finds the server where the server itself listens, from
EDGE_EMBED_HOST and EDGE_EMBED_PORT (the image configures the server through these, never
through flags).

Standard library only (see service/address.py): it runs every few seconds beside the server.
It is also the exec probe of a server that listens on the pod's loopback (a sidecar), which an
httpGet probe, sent from the node, cannot reach.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from .address import DEFAULT_HOST, DEFAULT_PORT, env_name

# A wildcard listen address is reached through the loopback of the same family.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
# Below the image's HEALTHCHECK --timeout, so a hung server yields this process's own message.
TIMEOUT_S = 4.0


def health_url(environ: Mapping[str, str], path: str = "/health") -> str:
    host = environ.get(env_name("--host"), DEFAULT_HOST)
    host = LOOPBACK.get(host, host)
    port = environ.get(env_name("--port"), str(DEFAULT_PORT))
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def check(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when `url` answers 200; else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args not in ([], ["--ready"]):
        sys.stderr.write("usage: python -m edge_embed.service.healthcheck [--ready]\n")
        return 2
    problem = check(health_url(os.environ, "/ready" if args else "/health"))
    if problem is not None:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
