"""Public keys that signatures are verified with. Pure apart from reading a key file.

A key file is PEM: ``PUBLIC KEY`` (SubjectPublicKeyInfo; what ``cosign
generate-key-pair`` and ``cosign import-key-pair`` write as ``cosign.pub``) or
``RSA PUBLIC KEY`` (PKCS#1), the two forms cosign reads. Algorithms, matching
what ``cosign verify --key`` (v2.6.5) checks by default:

- ECDSA on P-256, P-384 or P-521, over the SHA-256 of the payload (cosign's
  default ``--signature-digest-algorithm``), signature ASN.1 DER or, as
  sigstore also takes it, IEEE P1363 ``r || s``;
- RSA (2048 bits or more), PKCS#1 v1.5 over SHA-256 (cosign never checks PSS
  for a key given with ``--key``);
- Ed25519, pure (the message itself is signed). ``cosign sign`` v2.6.5 signs
  with Ed25519ph, which ``cosign verify --key`` refuses; so do we.

A key's identity for reports is its name (the file name) and its fingerprint,
``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo (the same value for
a key whatever file or PEM form it came from).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..errors import TrustConfigError

MAX_KEY_FILE_BYTES = 64 * 1024
"""A public key file is a few hundred bytes; anything over this is not one."""

MIN_RSA_BITS = 2048
"""RSA keys below this size are refused when loaded (cosign takes 1024 and up)."""

_CURVES = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}
_MAX_P1363_BYTES = 132  # r || s of P-521, sigstore's bound


@dataclass(frozen=True)
class KeyIdentity:
    """Who verified: the key's name, fingerprint and algorithm, for results and ``--json``."""

    name: str
    """The file name the key was loaded from (or the name given to :func:`parse_public_key`)."""
    fingerprint: str
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo."""
    algorithm: str
    """``ecdsa-p256``, ``ecdsa-p384``, ``ecdsa-p521``, ``rsa-<bits>`` or ``ed25519``."""

    def to_json(self) -> dict[str, str]:
        """``{"name", "fingerprint", "algorithm"}``."""
        return {"name": self.name, "fingerprint": self.fingerprint, "algorithm": self.algorithm}

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint[:19]}…, {self.algorithm})"


@dataclass(frozen=True, eq=False)
class TrustedKey:
    """A loaded public key and its identity; :meth:`verify` checks one signature."""

    identity: KeyIdentity
    public_key: Any
    """The ``cryptography`` public key object."""

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``message`` by this key (see the module doc)."""
        key = self.public_key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                return _verify_ecdsa(key, signature, message)
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
                return True
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
                return True
        except (InvalidSignature, ValueError):
            return False
        return False  # pragma: no cover - parse_public_key admits no other key type

    def __repr__(self) -> str:
        return f"TrustedKey({self.identity})"


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    algorithm = ec.ECDSA(hashes.SHA256())
    try:
        decode_dss_signature(signature)
    except ValueError:
        # Not DER: sigstore then reads the bytes as IEEE P1363 r || s, when they could be one.
        if not signature or len(signature) > _MAX_P1363_BYTES or len(signature) % 2:
            return False
        half = len(signature) // 2
        r = int.from_bytes(signature[:half], "big")
        s = int.from_bytes(signature[half:], "big")
        if r == 0 or s == 0:
            return False
        signature = encode_dss_signature(r, s)
    try:
        key.verify(signature, message, algorithm)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint_of(public_key: Any) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo of ``public_key``."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_public_key(pem: bytes, name: str) -> TrustedKey:
    """Load a PEM public key (``PUBLIC KEY`` or ``RSA PUBLIC KEY``); :class:`TrustConfigError` if unusable."""
    text = pem.strip()
    try:
        if text.startswith(b"-----BEGIN RSA PUBLIC KEY-----"):
            key: Any = serialization.load_pem_public_key(text)
        elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
            key = serialization.load_pem_public_key(text)
        elif b"PRIVATE KEY" in text[:64]:
            raise TrustConfigError(f"key {name}: a private key; give the public key (cosign.pub)")
        else:
            raise TrustConfigError(f"key {name}: not a PEM 'PUBLIC KEY' or 'RSA PUBLIC KEY'")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustConfigError(f"key {name}: cannot parse the public key ({exc})") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise TrustConfigError(f"key {name}: ECDSA curve {key.curve.name} is not supported (P-256, P-384, P-521)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise TrustConfigError(f"key {name}: RSA key of {key.key_size} bits, under {MIN_RSA_BITS}")
        algorithm = f"rsa-{key.key_size}"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
    else:
        raise TrustConfigError(f"key {name}: unsupported key type {type(key).__name__} (ECDSA, RSA or Ed25519)")
    identity = KeyIdentity(name=name, fingerprint=fingerprint_of(key), algorithm=algorithm)
    return TrustedKey(identity=identity, public_key=key)


def load_public_key(path: str | Path) -> TrustedKey:
    """Read and parse a public key file; its name is the file name."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise TrustConfigError(f"key {path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise TrustConfigError(f"key {path}: over {MAX_KEY_FILE_BYTES} bytes, not a public key file")
    return parse_public_key(data, path.name)


def load_public_keys(paths: list[str | Path] | tuple[str | Path, ...]) -> tuple[TrustedKey, ...]:
    """Load several key files (``--verify-key`` repeated); duplicates (same fingerprint) are kept once."""
    keys: list[TrustedKey] = []
    seen: set[str] = set()
    for path in paths:
        key = load_public_key(path)
        if key.identity.fingerprint not in seen:
            seen.add(key.identity.fingerprint)
            keys.append(key)
    return tuple(keys)
