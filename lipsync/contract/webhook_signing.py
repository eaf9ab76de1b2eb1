"""Webhook signatures in fal's scheme, with this deployment's own Ed25519 key.

The worker signs ``request_id \\n user_id \\n timestamp \\n sha256_hex(body)`` and sends the hex signature in
``X-Fal-Webhook-Signature`` beside ``X-Fal-Webhook-Request-Id``, ``-User-Id`` and ``-Timestamp``; receivers
verify it with the public key the API publishes at ``/.well-known/jwks.json`` (OKP/Ed25519, as fal's), and
reject timestamps more than 5 minutes off. The key: ``LIPSYNC_WEBHOOK_SIGNING_KEY`` (base64 of the 32-byte
private key; set the same on every host), else a key file created once in the storage folder.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_FILE = ".webhook-ed25519"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


class WebhookSigner:
    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key

    @classmethod
    def from_settings(cls, configured: str | None, storage_dir: Path) -> "WebhookSigner":
        if configured:
            return cls(Ed25519PrivateKey.from_private_bytes(base64.b64decode(configured)))
        path = Path(storage_dir) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{secrets.token_hex(4)}")
            tmp.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            tmp.chmod(0o600)
            tmp.replace(path) if not path.exists() else tmp.unlink()
        return cls(Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text())))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def key_id(self) -> str:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    def headers(self, request_id: str, user_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if now is None else now))
        signature = self._key.sign(signed_message(request_id, user_id, timestamp, body)).hex()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": signature,
        }

    def jwks(self) -> dict:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": self.key_id, "use": "sig"}]}
