"""Key files, algorithms and fingerprints of doras_oras.trust.keys (no registry needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from doras_oras.errors import TrustConfigError
from doras_oras.trust import load_public_key, load_public_keys, parse_public_key
from doras_oras.trust.keys import MAX_KEY_FILE_BYTES

MESSAGE = b'{"critical":{}}'


def pem(key: object, fmt: serialization.PublicFormat = serialization.PublicFormat.SubjectPublicKeyInfo) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, fmt)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_ecdsa_p256_der_signature(p256: ec.EllipticCurvePrivateKey) -> None:
    key = parse_public_key(pem(p256), "cosign.pub")
    assert key.identity.algorithm == "ecdsa-p256"
    signature = p256.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert key.verify(signature, MESSAGE)
    assert not key.verify(signature, MESSAGE + b" ")
    assert not key.verify(signature[:-1], MESSAGE)
    assert not key.verify(b"", MESSAGE)


def test_ecdsa_p1363_signature_as_sigstore_accepts(p256: ec.EllipticCurvePrivateKey) -> None:
    key = parse_public_key(pem(p256), "k")
    r, s = decode_dss_signature(p256.sign(MESSAGE, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert key.verify(raw, MESSAGE)
    assert not key.verify(raw, b"other")
    assert not key.verify(raw[:-1], MESSAGE)  # odd length
    assert not key.verify(b"\0" * 64, MESSAGE)


def test_ecdsa_over_sha384_refused_like_cosign_verify() -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    key = parse_public_key(pem(private), "p384.pub")
    assert key.identity.algorithm == "ecdsa-p384"
    assert not key.verify(private.sign(MESSAGE, ec.ECDSA(hashes.SHA384())), MESSAGE)
    assert key.verify(private.sign(MESSAGE, ec.ECDSA(hashes.SHA256())), MESSAGE)


def test_rsa_pkcs1v15_only(rsa2048: rsa.RSAPrivateKey) -> None:
    key = parse_public_key(pem(rsa2048), "rsa.pub")
    assert key.identity.algorithm == "rsa-2048"
    assert key.verify(rsa2048.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256()), MESSAGE)
    pss = rsa2048.sign(MESSAGE, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    assert not key.verify(pss, MESSAGE)  # cosign verify --key never checks PSS
    assert not key.verify(rsa2048.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA512()), MESSAGE)


def test_rsa_pkcs1_pem_form_has_the_same_fingerprint(rsa2048: rsa.RSAPrivateKey) -> None:
    spki = parse_public_key(pem(rsa2048), "a.pub")
    pkcs1 = parse_public_key(pem(rsa2048, serialization.PublicFormat.PKCS1), "b.pub")
    assert pkcs1.identity.fingerprint == spki.identity.fingerprint
    der = rsa2048.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki.identity.fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()


def test_rsa_under_2048_bits_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(TrustConfigError, match="1024 bits, under 2048"):
        parse_public_key(pem(small), "small.pub")


def test_ed25519_pure() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    key = parse_public_key(pem(private), "ed.pub")
    assert key.identity.algorithm == "ed25519"
    assert key.verify(private.sign(MESSAGE), MESSAGE)
    # Ed25519ph (what cosign sign writes) signs SHA-512(message): not a pure signature of the message.
    assert not key.verify(private.sign(hashlib.sha512(MESSAGE).digest()), MESSAGE)


@pytest.mark.parametrize("text, match", [
    (b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "a private key"),
    (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE user@host\n", "not a PEM"),
    (b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n", "cannot parse"),
    (b"", "not a PEM"),
])
def test_unusable_key_text(text: bytes, match: str) -> None:
    with pytest.raises(TrustConfigError, match=match):
        parse_public_key(text, "bad.pub")


def test_unsupported_curve_refused() -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(TrustConfigError, match="secp256k1 is not supported"):
        parse_public_key(pem(private), "k1.pub")


def test_key_files(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "cosign.pub").write_bytes(pem(p256))
    (tmp_path / "copy.pub").write_bytes(pem(p256))
    key = load_public_key(tmp_path / "cosign.pub")
    assert key.identity.name == "cosign.pub"
    assert str(key.identity).startswith("cosign.pub (sha256:")
    # the same key twice (same fingerprint) is kept once, under its first name
    assert [k.identity.name for k in load_public_keys([tmp_path / "cosign.pub", tmp_path / "copy.pub"])] == ["cosign.pub"]
    with pytest.raises(TrustConfigError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
    (tmp_path / "huge.pub").write_bytes(b"x" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(TrustConfigError, match="not a public key file"):
        load_public_key(tmp_path / "huge.pub")
