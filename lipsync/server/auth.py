"""API keys: ``Authorization: Key <secret>`` or ``Key <id>:<secret>`` (``Bearer`` is read the same way).

Keys come from ``LIPSYNC_API_KEYS`` (comma-separated) and ``LIPSYNC_API_KEYS_FILE`` (one a line, ``#`` comments).
An entry is ``id:secret`` or a bare ``secret`` (its id is then a hash prefix of the secret). Requests belong to
the key id that submitted them. With no keys configured the API is open and every caller is ``anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from lipsync.server.errors import Unauthorized

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


def _key_id(secret: str) -> str:
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class KeyRing:
    secrets: dict[str, str]  # secret -> key id

    @classmethod
    def load(cls, entries: str, file: Path | None) -> "KeyRing":
        lines = [e for e in entries.split(",")]
        if file is not None:
            lines += Path(file).read_text().splitlines()
        secrets: dict[str, str] = {}
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key_id, sep, secret = line.partition(":")
            if sep and key_id and secret:
                secrets[secret] = key_id
            else:
                secrets[line] = _key_id(line)
        return cls(secrets)

    @property
    def open(self) -> bool:
        return not self.secrets

    def owner(self, authorization: str | None) -> str:
        """The key id behind an Authorization header; raises Unauthorized."""
        if self.open:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized()
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() not in {"key", "bearer"} or not credential:
            raise Unauthorized()
        credential = credential.strip()
        claimed_id, sep, secret = credential.partition(":")
        candidates = [(secret, claimed_id)] if sep else []
        candidates.append((credential, None))
        for candidate, wanted_id in candidates:
            for known, key_id in self.secrets.items():
                # compare_digest on every entry: no early exit that leaks which prefix matched
                if hmac.compare_digest(known.encode(), candidate.encode("utf-8", "replace")) and wanted_id in (None, key_id):
                    return key_id
        raise Unauthorized()


def require_owner(request: Request) -> str:
    """FastAPI dependency: the caller's key id."""
    keys: KeyRing = request.app.state.keys
    return keys.owner(request.headers.get("authorization"))
