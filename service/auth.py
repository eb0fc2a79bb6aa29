"""API keys: Bearer tokens, constant-time comparison over every key, per-key model allow-lists.

Keys are kept only as SHA-256 digests, and every presented token is compared against every
digest with `hmac.compare_digest` (no early exit), so neither the position of a match nor a
key's length shows in the response time. Keys never reach a log: the only thing ever logged
about a key is its index in the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import Forbidden, KeysFileError, Unauthorized

# Paths anyone may call: probes and scrapers do not carry keys.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class ApiKey:
    digest: bytes
    models: frozenset[str] | None  # None: every model


def _digest(key: str) -> bytes:
    # aiohttp decodes header bytes with surrogateescape: a non-UTF-8 key must still hash (and
    # fail to match, 401), never raise.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def load_keys_file(path: Path) -> list[tuple[str, frozenset[str] | None]]:
    """`KEY [model,model,...]` per line; `#` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot read the API keys file ({exc})") from None
    out: list[tuple[str, frozenset[str] | None]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise KeysFileError(f"{path}:{n}: expected 'KEY' or 'KEY model1,model2'")
        models = frozenset(m for m in parts[1].split(",") if m) if len(parts) == 2 else None
        out.append((parts[0], models))
    return out


class Authenticator:
    def __init__(self, keys: Iterable[tuple[str, frozenset[str] | None]]) -> None:
        self._keys = tuple(ApiKey(_digest(k), m) for k, m in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, authorization: str | None) -> ApiKey | None:
        """The matching key, or raise 401. None when no keys are configured (auth off)."""
        if not self._keys:
            return None
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Bearer YOUR_KEY'.", code="missing_api_key", headers=dict(_CHALLENGE))
        scheme, _, token = authorization.strip().partition(" ")
        presented = _digest(token.strip() if scheme.lower() == "bearer" else "")
        found: ApiKey | None = None
        for key in self._keys:  # every key, every time: no early exit
            if hmac.compare_digest(key.digest, presented) and found is None:
                found = key
        if found is None or scheme.lower() != "bearer":
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key",
                               headers=dict(_CHALLENGE))
        return found

    @staticmethod
    def allow(key: ApiKey | None, model_names: Iterable[str]) -> None:
        """403 unless `key` may use the model (known by any of `model_names`)."""
        if key is None or key.models is None:
            return
        if key.models.isdisjoint(model_names):
            raise Forbidden("This API key is not allowed to use this model.", param="model")

    @staticmethod
    def may_use(key: ApiKey | None, model_names: Iterable[str]) -> bool:
        return key is None or key.models is None or not key.models.isdisjoint(model_names)
