"""Ed25519 detached signatures over a feed's exact bytes, and the keys that make them.

The signature travels in the `SafeGate-Signature` HTTP header (and in a `.sig` file next to a
stored copy) as `keyid=<16 hex>,ed25519=<base64>`. The key id lets a gateway trust several
public keys during a rotation and say which one a document was signed with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.feedformat.document import FeedError

SIGNATURE_HEADER = "SafeGate-Signature"


def key_id(public: Ed25519PublicKey) -> str:
    """First 8 bytes of SHA-256 over the raw public key, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, data: bytes) -> str:
        """The header value for `data`."""
        sig = base64.b64encode(self.private.sign(data)).decode("ascii")
        return f"keyid={self.key_id},ed25519={sig}"


@dataclass(frozen=True)
class Verifier:
    """Trusts one or more public keys (several while a key is being rotated)."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def from_files(cls, paths: list[Path]) -> Verifier:
        keys = {}
        for p in paths:
            pub = load_public_key(p)
            keys[key_id(pub)] = pub
        return cls(keys)

    def verify(self, data: bytes, header: str | None) -> str:
        """The key id that signed `data`; FeedError(reason=unsigned|bad_signature) otherwise."""
        if not header:
            raise FeedError("the document is not signed", "unsigned")
        fields = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
        kid, sig_b64 = fields.get("keyid", ""), fields.get("ed25519", "")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            raise FeedError("the signature is not valid base64", "bad_signature") from None
        candidates = [self.keys[kid]] if kid in self.keys else list(self.keys.values())
        for pub in candidates:
            try:
                pub.verify(sig, data)
            except InvalidSignature:
                continue
            return key_id(pub)
        raise FeedError(f"bad signature (key id {kid or 'none'})", "bad_signature")


def generate_keys(directory: Path, name: str = "feed") -> tuple[Path, Path]:
    """Write DIR/NAME.key (PKCS#8 PEM, mode 0600) and DIR/NAME.pub; refuses to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; move it away first (see key rotation in "
                                  "docs/feed-format.md)")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path


def load_signer(path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise FeedError(f"{path}: not an Ed25519 private key", "config")
    return Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise FeedError(f"{path}: not an Ed25519 public key", "config")
    return key
