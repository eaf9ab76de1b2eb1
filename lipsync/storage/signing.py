"""HMAC signatures for expiring file URLs and short-lived upload tokens.

A signed URL carries ``expires`` (unix seconds) and ``signature``: in its path for file URLs
(``/files/<expires>/<signature>/<key>``: fal's Python client appends paths to the URLs it gets), in its
query for upload URLs. The signature covers the
action (``get`` or ``put``), the object key and the expiry, so a URL cannot be stretched in time, pointed at
another object, or turned from a download into an upload. The host is not signed: the same URL stays valid
behind a proxy that changes it, and the API can recognise its own upload URLs in a request body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path


def url_expiry(ttl_s: int, now: float | None = None) -> int:
    """Unix second a URL valid for ``ttl_s`` expires: ``now + ttl_s`` rounded up to a step of ``ttl_s / 1000``
    (at most 60 s, 1 s below 1000 s), so the same object signed again a moment later gets the same URL — a
    result read twice is the same JSON, as the hosted API's stored URLs are — and a URL is never shorter-lived
    than asked (at most 0.1 % longer)."""
    now = time.time() if now is None else now
    step = max(1, min(60, int(ttl_s) // 1000))
    return -(-(int(now) + int(ttl_s)) // step) * step


class Signer:
    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("signing secret must be at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_settings(cls, secret: str | None, storage_dir: Path) -> "Signer":
        """Use the configured secret, else a key file in the storage folder (created once, mode 0600).

        Many hosts must share one secret: set ``LIPSYNC_SIGNING_SECRET`` for them, or share the folder.
        """
        if secret:
            return cls(secret.encode())
        path = Path(storage_dir) / ".signing-key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{secrets.token_hex(4)}")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path) if not path.exists() else tmp.unlink()
        return cls(path.read_text().strip().encode())

    def _mac(self, message: str) -> str:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, action: str, key: str, expires: int) -> str:
        return self._mac(f"{action}\n{key}\n{expires}")

    def query(self, action: str, key: str, ttl_s: int) -> str:
        """``expires=…&signature=…`` for a URL's query."""
        expires = url_expiry(ttl_s)
        return f"expires={expires}&signature={self.sign(action, key, expires)}"

    def path(self, action: str, key: str, ttl_s: int) -> str:
        """``<expires>/<signature>`` for a URL's path: other paths can then be appended to the URL."""
        expires = url_expiry(ttl_s)
        return f"{expires}/{self.sign(action, key, expires)}"

    def verify(self, action: str, key: str, expires: str | int | None, signature: str | None) -> bool:
        """True when the signature is ours and unexpired."""
        if expires is None or not signature or not signature.isascii():
            return False
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            return False
        if expires_at < time.time():
            return False
        return hmac.compare_digest(self.sign(action, key, expires_at), signature)

    # --- upload tokens (fal's storage/auth/token flow) ------------------------------------------------

    def token(self, owner: str, ttl_s: int) -> tuple[str, int]:
        expires = int(time.time()) + int(ttl_s)
        body = base64.urlsafe_b64encode(json.dumps({"owner": owner, "exp": expires}).encode()).decode()
        return body + "." + self._mac("token\n" + body), expires

    def token_owner(self, token: str) -> str | None:
        """The owner a valid, unexpired token was issued to; None otherwise."""
        body, _, mac = token.partition(".")
        if not mac or not token.isascii() or not hmac.compare_digest(self._mac("token\n" + body), mac):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
        if claims.get("exp", 0) < time.time():
            return None
        return str(claims.get("owner"))
