"""Where the server listens by default and how its environment variables are named.

Standard library only: the container's health check imports this, and it must start in well
under a second (the serving stack's imports take about a second on x86 and many seconds under
arm64 emulation).
"""

from __future__ import annotations

import ipaddress

ENV_PREFIX = "EDGE_EMBED_"

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing the server is an explicit choice
DEFAULT_PORT = 8000


def env_name(flag: str) -> str:
    """`--max-inputs` -> `EDGE_EMBED_MAX_INPUTS`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def is_loopback(host: str) -> bool:
    """Whether a server listening on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or "" and wildcards): reachable from elsewhere
        return False
