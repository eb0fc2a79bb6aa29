"""API keys: Bearer tokens, constant-time comparison over every key, per-key model allow-lists.

Keys are kept only as SHA-256 digests, and every presented token is compared against every
digest with `hmac.compare_digest` (no early exit), so neither the position of a match nor a
key's length shows in the response time. Keys never reach a log: the only thing ever logged
about a key is its index in the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .docs import ASSETS, DOCS_ASSET_PATH, DOCS_PATH
from .errors import ApiKeyError, KeysFileError, Unauthorized

log = logging.getLogger("edge_embed.auth")

# Paths anyone may call: probes and scrapers do not carry keys. /health answers them with its
# status alone; its detail needs a key (service/app.py). The API page and its files hold nothing
# of the server's: the page asks for a key before it fetches the document (service/docs.py).
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", DOCS_PATH,
                        *(DOCS_ASSET_PATH.format(asset=name) for name in ASSETS)})
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# A key shorter than this is guessable by brute force over HTTP; 16 characters is the floor
# of a random token (`openssl rand -hex 8`), and every generator in the README makes longer.
MIN_KEY_CHARS = 16
# Permission bits of a keys file that let a user other than its owner read or change the keys.
_SHARED_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO


@dataclass(frozen=True)
class ApiKey:
    digest: bytes
    models: frozenset[str] | None  # None: every model


def _digest(key: str) -> bytes:
    # aiohttp decodes header bytes with surrogateescape: a non-UTF-8 key must still hash (and
    # fail to match, 401), never raise.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key (never quoting it), or None."""
    if not key:
        return "the key is empty"
    if any(c.isspace() for c in key):
        return "the key contains whitespace"
    if len(key) < MIN_KEY_CHARS:
        return f"the key has {len(key)} characters; at least {MIN_KEY_CHARS} are required"
    return None


def check_flag_keys(keys: Iterable[str]) -> None:
    """Refuse an unusable key from --api-key / EDGE_EMBED_API_KEY, naming which one."""
    for n, key in enumerate(keys, 1):
        problem = key_problem(key)
        if problem is not None:
            raise ApiKeyError(f"--api-key (or EDGE_EMBED_API_KEY) #{n}: {problem}")


def _uncomment(line: str) -> str:
    """`line` without its comment: `#` starts one at the line's start or after whitespace only,
    so a key may contain `#`."""
    for i, char in enumerate(line):
        if char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def warn_if_shared(path: Path) -> None:
    """A WARNING when users other than the owner may read or change the keys file."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it reports the problem
    if mode & _SHARED_MODE_BITS:
        log.warning("the API keys file %s has mode %s: users other than its owner may read or "
                    "change the keys; chmod 600 it", path, oct(stat.S_IMODE(mode)))


def load_keys_file(path: Path) -> list[tuple[str, frozenset[str] | None]]:
    """`KEY [model,model,...]` per line; `#` at a line's start or after whitespace starts a
    comment."""
    warn_if_shared(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot read the API keys file ({exc})") from None
    out: list[tuple[str, frozenset[str] | None]] = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = _uncomment(line).split()
        if not parts:
            continue
        if len(parts) > 2:
            raise KeysFileError(f"{path}:{n}: expected 'KEY' or 'KEY model1,model2'")
        problem = key_problem(parts[0])
        if problem is not None:
            raise KeysFileError(f"{path}:{n}: {problem}")
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
    def may_use(key: ApiKey | None, model_names: Iterable[str]) -> bool:
        """Whether `key` may use the model known by `model_names`; a model it may not use is,
        to that key, a model that does not exist (404, never a 403 that confirms it)."""
        return key is None or key.models is None or not key.models.isdisjoint(model_names)
