"""Signed manifests (ed25519): who may put a checkpoint (and its ONNX graphs) on a robot.

A manifest's sha256 list says the files are the ones the manifest names; it cannot say who wrote the
manifest (anyone who edits config.json can re-hash it). A signature can: `mot pack --sign KEY` writes

    manifest.sig         64 raw bytes, the ed25519 signature of manifest.json's exact bytes

beside the manifest (inside the atomically written checkpoint directory). The ONNX graphs are tied to a
checkpoint by their export manifest (policy/export.py: the checkpoint id = sha256 of the signed manifest, and
the sha256 of every graph file); that manifest itself is not signed yet. A loader given a trusted public
key (`load_checkpoint(dir, trusted_key=...)`, `PolicyRunner.from_checkpoint(..., trusted_key=...)`, the
ROS node's `trusted_key` parameter, or the `MOT_TRUSTED_KEY` environment variable) refuses an unsigned or
mis-signed manifest. Without a key configured nothing is checked (and a signature present is ignored).

The signature is the plain ed25519 one, so OpenSSL (3.x) checks it too:

    openssl pkeyutl -verify -pubin -inkey signing_key.pub.pem -rawin -in manifest.json -sigfile manifest.sig

Keys: `generate_key_pair(DIR)` (`mot pack --new-key DIR`) writes DIR/signing_key.pem (PKCS#8 private key,
mode 0600: keep it on the build machine) and DIR/signing_key.pub.pem (SubjectPublicKeyInfo: the file the
robots get). An encrypted private key is read with the passphrase in `MOT_SIGNING_KEY_PASSPHRASE`.
A key id is the first 16 hex digits of sha256(raw 32-byte public key).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policy.artifacts import atomic_write_bytes
from policy.errors import CheckpointError, InputError

SIGNATURE_SUFFIX = ".sig"  # manifest.json -> manifest.sig, export_manifest.json -> export_manifest.sig
PRIVATE_KEY_FILE = "signing_key.pem"
PUBLIC_KEY_FILE = "signing_key.pub.pem"
TRUSTED_KEY_ENV = "MOT_TRUSTED_KEY"  # path to a public key PEM (or the PEM text): the robot-wide default
PASSPHRASE_ENV = "MOT_SIGNING_KEY_PASSPHRASE"

TrustedKey = Union[str, Path, Ed25519PublicKey, None]
SigningKey = Union[str, Path, Ed25519PrivateKey]


def signature_path(manifest: str | Path) -> Path:
    """manifest.json -> manifest.sig beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + SIGNATURE_SUFFIX)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- keys ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """umask 077 while the private key is written: artifacts gives a file 0666 & ~umask, so 0600, never readable
    by others even for an instant."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def generate_key_pair(directory: str | Path) -> dict[str, str]:
    """Writes a new ed25519 key pair into `directory` (refusing to replace an existing one); returns
    {"private_key": path, "public_key": path, "key_id": id}."""
    directory = Path(directory)
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        raise InputError(f"new_key: expected a directory without a key pair, {existing} already exist (a key is "
                         "never overwritten: choose another directory or delete them yourself)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with _private_umask():
        atomic_write_bytes(private, pem)
    atomic_write_bytes(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private_key": str(private), "public_key": str(public), "key_id": key_id(key)}


def _pem(value: str | Path | bytes, field: str) -> bytes:
    """PEM bytes from PEM text or a file path."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"{field}: expected a PEM key file, {path} does not exist")
    return path.read_bytes()


def load_private_key(key: SigningKey, field: str = "sign") -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM file (or PEM text, or the key itself)."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    data = _pem(key, field)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        loaded = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase for an unencrypted key
        raise InputError(f"{field}: {key} is {'not ' if passphrase else ''}encrypted; "
                         f"{'unset' if passphrase else 'set'} {PASSPHRASE_ENV} ({e})") from None
    except ValueError as e:
        hint = " (that is a public key: sign with the private one)" if b"PUBLIC KEY" in data else ""
        raise InputError(f"{field}: expected a PEM private key, cannot read {key}{hint} ({e})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InputError(f"{field}: expected an ed25519 private key, received a {type(loaded).__name__} from {key}")
    return loaded


def load_public_key(key: str | Path | bytes | Ed25519PublicKey, field: str = "trusted_key") -> Ed25519PublicKey:
    """An ed25519 public key from a PEM file (or PEM text, or the key itself). A private key is refused: a
    robot must only ever hold the public half."""
    if isinstance(key, Ed25519PublicKey):
        return key
    data = _pem(key, field)
    if b"PRIVATE KEY" in data:
        raise InputError(f"{field}: expected a public key, {key} is a private key (give robots only "
                         f"{PUBLIC_KEY_FILE}, keep the private key on the build machine)")
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise InputError(f"{field}: expected a PEM public key, cannot read {key} ({e})") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise InputError(f"{field}: expected an ed25519 public key, received a {type(loaded).__name__} from {key}")
    return loaded


def resolve_trusted_key(trusted_key: TrustedKey = None) -> Ed25519PublicKey | None:
    """The key loaders check against: `trusted_key` if given (None or "" -> `$MOT_TRUSTED_KEY`, unset or empty ->
    None: nothing is checked, as without signing)."""
    if trusted_key is None or trusted_key == "":
        trusted_key = os.environ.get(TRUSTED_KEY_ENV) or None
        if trusted_key is None:
            return None
        return load_public_key(trusted_key, TRUSTED_KEY_ENV)
    return load_public_key(trusted_key)


# -- signatures ----------------------------------------------------------------------------------------
def sign_bytes(data: bytes, key: SigningKey) -> bytes:
    """The 64-byte ed25519 signature of `data`."""
    return load_private_key(key).sign(data)


def sign_manifest(manifest: str | Path, key: SigningKey) -> Path:
    """Signs an existing manifest file in place: writes <stem>.sig beside it (atomically). Returns its path."""
    manifest = Path(manifest)
    return atomic_write_bytes(signature_path(manifest), sign_bytes(manifest.read_bytes(), key))


def verify_signature(manifest: Path, data: bytes, trusted: Ed25519PublicKey, what: str = "checkpoint",
                     how: str = "mot pack --sign KEY", error: type[InputError] = CheckpointError) -> str:
    """Checks `data` (manifest's bytes, read once by the caller) against <stem>.sig with `trusted`; returns the key
    id. `error` (CheckpointError, or ArtifactMismatchError for graphs) on a missing or mis-signed manifest."""
    sig_path = signature_path(manifest)
    kid = key_id(trusted)
    if not sig_path.is_file():
        raise error(f"{what}: expected a signed manifest ({sig_path.name} beside {manifest}) because a trusted "
                              f"key ({kid}) is configured, received none; sign it with `{how}`")
    signature = sig_path.read_bytes()
    try:
        if len(signature) != 64:
            raise InvalidSignature
        trusted.verify(signature, data)
    except InvalidSignature:
        raise error(f"{what}: {sig_path} does not verify with the trusted key {kid}: expected a signature "
                              f"by that key over {manifest.name}, received one by another key or over other bytes "
                              f"({manifest.name} changed after signing)") from None
    return kid


__all__ = ["generate_key_pair", "load_private_key", "load_public_key", "resolve_trusted_key", "sign_bytes",
           "sign_manifest", "verify_signature", "signature_path", "key_id", "SIGNATURE_SUFFIX", "PRIVATE_KEY_FILE",
           "PUBLIC_KEY_FILE", "TRUSTED_KEY_ENV"]
