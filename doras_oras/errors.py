"""The exceptions of doras-oras, all in one tree.

Every error the library raises derives from :class:`DorasOrasError`; lower
level exceptions (``requests``, ``OSError``, ``zstandard``, ``bz2``) are
translated at the module boundary that meets them, with the original kept as
``__cause__``. An HTTP status is an attribute (``.status``), not a class: a
subclass exists only for a meaning that code branches on (credentials
refused, not found, not diffable)::

    DorasOrasError
    ├── InvalidArgumentError           (also ValueError) a bad argument: a value out of range,
    │   │                              contradicting options, a file named by the caller missing
    │   ├── InvalidReferenceError      bad "registry/repo[:tag][@digest]" (or a bad server URL)
    │   └── InvalidDigestError         not "sha256:<64 lowercase hex>"
    ├── VerificationError              content differs from its descriptor
    │   ├── DigestMismatchError
    │   └── SizeMismatchError
    ├── DocumentError                  a JSON document is unusable
    │   ├── SchemaValidationError      fails the JSON schema (names the field)
    │   ├── MediaTypeMismatchError     manifest mediaType != Content-Type
    │   └── DeltaManifestError         a delta manifest that is a dummy, for other images, ...
    ├── LimitExceededError             a cap was hit
    │   ├── BodyTooLargeError          a body over its cap (JSON 4 MiB, errors 64 KiB)
    │   ├── ArtifactTooLargeError      the artifact declares more than max_size
    │   ├── BudgetExceededError        the download budget of the period is spent
    │   └── DiskSpaceError             a file system has less free space than the pull needs
    ├── CodecError                     a delta or compressed stream cannot be decoded
    │   ├── CorruptDeltaError          malformed or hostile patch / stream
    │   └── UnsupportedAlgorithmError  a delta kind this client cannot apply
    ├── LayoutError                    the local OCI image layout (a full disk is one too)
    │   ├── LayoutLockedError          another process holds the layout lock
    │   ├── CorruptLayoutError         index.json / oci-layout unreadable or invalid
    │   ├── NotALayoutError            the path is a file, or a directory holding something else
    │   └── ImageNotFoundError         no such image in the layout
    ├── ExtractError                   an artifact's files cannot be written out safely
    ├── TransportError                 HTTP transfer failed
    │   ├── ConnectError               cannot connect / connection reset
    │   ├── TransferTimeoutError       connect/read timeout, stall, overall deadline
    │   ├── InsecureTransportError     would send credentials in clear, bad redirect, ...
    │   └── RegistryError              the registry answered an HTTP error: .status (404, 429, 5xx, ...)
    │       └── RegistryAuthError      401/403: it refused the credentials
    ├── DorasServerError               the Doras server answered an error: .status (400, 5xx, a 3xx
    │   │                              without Location, ...), .message, .context
    │   ├── UnauthorizedError          401: it wants (other) credentials
    │   ├── NotFoundError              404: an image could not be resolved
    │   └── IncompatibleArtifactsError "artifacts are not compatible" (any status; 406 too): pull in full
    ├── ImagesIdenticalError           204: from and to are the same image
    ├── BackoffExhausted               a polling loop ran out of attempts or time
    ├── FallbackRefusedError           a delta was possible but not usable, and the settings refuse
    │                                  the full download instead (.reason_code, .reason)
    ├── PublishError                   a delta cannot be published for these images (publish-delta)
    │   └── DeltaExistsError           a different delta is already stored under the tag
    └── TrustError                     signature verification refused the artifact (CLI exit 5)
        ├── SignatureNotFoundError     no signature manifest for the digest (tag, referrers)
        ├── MalformedSignatureError    a signature manifest, layer, payload or index is unusable
        ├── SignatureLimitError        a cap was hit (referrer entries, blob over 1 MiB, ...)
        ├── SignatureInvalidError      signatures found, none verifies with the trusted keys
        ├── AnnotationMismatchError    a verified payload lacks a required optional annotation
        ├── PayloadMismatchError       a verified payload names another digest, repository or type
        ├── UntrustedRepositoryError   the trust policy has no rule for the repository
        ├── TrustChainError            offline: the stored image cannot be tied to the signed digest
        └── TrustConfigError           a key file or trust policy file is unusable

A :class:`TrustError` is never a reason to fall back: no code path may catch
it and continue without verification (docs/trust.md).

**Fixes.** An error that the caller can make go away by changing a setting
carries a :class:`Fix` (``error.fix``): a stable code of the situation. The
library words it in Python API terms (``str(error)`` is ``error.detail``, then
``"; "`` and :attr:`Fix.hint`); the command renders the same code as its flags
(``doras_oras.cli.output``), so neither names the other's vocabulary.
"""

from __future__ import annotations

import enum


class Fix(enum.Enum):
    """What would make an error go away, as a stable code; :attr:`hint` says it for library users."""

    INSECURE_AUTH = "insecure-auth"
    """Credentials were refused over plain HTTP."""
    PLAIN_HTTP = "plain-http"
    """The registry speaks plain HTTP, the client asked for HTTPS."""
    TLS_REGISTRY = "tls-registry"
    """The registry's TLS certificate does not verify."""
    SERVER_PLAIN_HTTP = "server-plain-http"
    """An ``http://`` Doras server URL that the client does not allow."""
    SERVER_SPEAKS_HTTP = "server-speaks-http"
    """The Doras server speaks plain HTTP, its URL says https."""
    TLS_SERVER = "tls-server"
    """The Doras server's TLS certificate does not verify."""
    REGISTRY_CREDENTIALS = "registry-credentials"
    """The registry wants (other) credentials: 401/403."""
    REALM_HOST = "realm-host"
    """The registry's token realm is on another host or port than the registry."""
    CREDENTIALS_REFUSED = "credentials-refused"
    """The registry refused the credentials that were given (401/403)."""
    NOT_FOUND = "not-found"
    """The registry has no such repository, tag or digest (404)."""
    SERVER_CREDENTIALS = "server-credentials"
    """The Doras server wants (other) credentials: 401."""
    REBUILD_INDEX = "rebuild-index"
    """``index.json`` is missing or corrupt; it can be rebuilt from the blobs."""
    LOCK_TIMEOUT = "lock-timeout"
    """Another process holds the layout's lock longer than the caller waits."""
    MAX_SIZE = "max-size"
    """The artifact is larger than the size limit."""
    BUDGET = "budget"
    """The download budget of the period is spent."""
    DEADLINE = "deadline"
    """The overall deadline of the transfers passed."""
    DISK_SPACE = "disk-space"
    """A file system (the layout's, the output directory's) has too little free space for the pull."""
    READ_ONLY_LAYOUT = "read-only-layout"
    """The layout cannot be written (a read-only file system, no write permission)."""
    OVERWRITE_DELTA = "overwrite-delta"
    """A different delta is stored under the tag a publish would write."""

    @property
    def hint(self) -> str:
        """The fix in Python API terms."""
        return _LIBRARY_HINTS[self]


_LIBRARY_HINTS: dict[Fix, str] = {
    Fix.INSECURE_AUTH: "allow it with allow_insecure_auth=True (DeltaRegistry, RegistryClient)",
    Fix.PLAIN_HTTP: "it speaks plain HTTP: make the client with plain_http=True (DeltaRegistry: insecure=True)",
    Fix.TLS_REGISTRY: "pass the CA bundle that signed the registry's certificate as tls_verify=PATH, "
                      "or turn verification off with tls_verify=False",
    Fix.SERVER_PLAIN_HTTP: "allow it with EdgeClient(allow_http=True)",
    Fix.SERVER_SPEAKS_HTTP: "it speaks plain HTTP: give the server URL as http://HOST:PORT",
    Fix.TLS_SERVER: "pass the CA bundle that signed the Doras server's certificate (tls_verify=PATH "
                    "of EdgeClient or of the registry client), or tls_verify=False",
    Fix.REGISTRY_CREDENTIALS: "give credentials: DeltaRegistry.auth.set_basic_auth(user, password), "
                              "RegistryClient(credentials=...), or a docker config file (registry_configs=[...])",
    Fix.REALM_HOST: "if you trust that token server, list it in allowed_realm_hosts=['HOST:PORT'] "
                    "(RegistryClient, DeltaRegistry)",
    Fix.CREDENTIALS_REFUSED: "check the password (or token), and that the user may read the repository; "
                             "or give other credentials (credentials=..., registry_configs=[...])",
    Fix.NOT_FOUND: "check the repository name and the tag or digest of the reference",
    Fix.SERVER_CREDENTIALS: "give the Doras server credentials: EdgeClient(auth=BasicAuth(...) or BearerAuth(...)), "
                            "or basic credentials on the registry client (they are passed on)",
    Fix.REBUILD_INDEX: "doras_oras.layout's rebuild_index() recreates it from blobs/ (pass it the OCILayout; the tags are lost)",
    Fix.LOCK_TIMEOUT: "wait longer (lock_timeout_s=..., OCILayout.lock(timeout=...))",
    Fix.MAX_SIZE: "raise max_size",
    Fix.BUDGET: "raise the budget, or wait for the period to pass",
    Fix.DEADLINE: "raise TransferPolicy.deadline_s",
    Fix.DISK_SPACE: ("free space on that file system (doras_oras.layout.gc(layout, keep) drops old images), "
                     "or use another one"),
    Fix.READ_ONLY_LAYOUT: "make the layout's directory writable (remount its file system read-write), "
                          "or use a layout that is",
    Fix.OVERWRITE_DELTA: "pass force=True to replace it",
}


class DorasOrasError(Exception):
    """Base class of every error raised by doras-oras.

    ``fix`` (keyword-only): the :class:`Fix` of the situation, if the caller can
    change something to make it go away. :attr:`detail` is the message without it.
    """

    fix: Fix | None = None

    def __init__(self, *args: object, fix: Fix | None = None) -> None:
        super().__init__(*args)
        if fix is not None:
            self.fix = fix

    @property
    def detail(self) -> str:
        """What went wrong, without the fix."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.detail}; {self.fix.hint}" if self.fix is not None else self.detail


class InvalidArgumentError(DorasOrasError, ValueError):
    """An argument cannot be used: out of range, contradicting another, a missing file named by the caller.

    The command reports these as usage errors (exit 2).
    """


class InvalidReferenceError(InvalidArgumentError):
    """An image reference (or a server URL) does not parse."""


class InvalidDigestError(InvalidArgumentError):
    """A digest is not ``algorithm:hex`` with a supported algorithm and exact lowercase hex."""


class VerificationError(DorasOrasError):
    """Content does not match the descriptor that announced it."""


class DigestMismatchError(VerificationError):
    """The content hashes to another digest than expected."""


class SizeMismatchError(VerificationError):
    """The content is shorter or longer than expected."""


class DocumentError(DorasOrasError):
    """A JSON document (manifest, index, API body) is unusable."""


class SchemaValidationError(DocumentError):
    """A document fails its JSON schema; the message names the field."""


class MediaTypeMismatchError(DocumentError):
    """A manifest's ``mediaType`` differs from the Content-Type it was served with."""


class DeltaManifestError(DocumentError):
    """A delta manifest cannot be used (placeholder, other images, wrong shape)."""


class LimitExceededError(DorasOrasError):
    """A configured or built-in cap was exceeded."""


class BodyTooLargeError(LimitExceededError):
    """A response body is larger than its cap."""


class ArtifactTooLargeError(LimitExceededError):
    """An artifact declares more bytes than the caller's ``max_size``."""


class BudgetExceededError(LimitExceededError):
    """A pull would exceed the download budget of the current period."""


class DiskSpaceError(LimitExceededError):
    """A file system has less free space than a pull needs; found before the first byte is written."""


class CodecError(DorasOrasError):
    """A delta or a compressed stream cannot be decoded."""


class CorruptDeltaError(CodecError):
    """A patch or compressed stream is malformed, truncated or hostile."""


class UnsupportedAlgorithmError(CodecError):
    """A delta algorithm or compression this client cannot apply."""


class LayoutError(DorasOrasError):
    """A problem with the local OCI image layout."""


class LayoutLockedError(LayoutError):
    """Another process holds the layout's lock."""


class CorruptLayoutError(LayoutError):
    """``index.json`` or ``oci-layout`` is unreadable or invalid."""


class NotALayoutError(LayoutError):
    """The path given as a layout is not a directory, or holds something other than an OCI layout.

    The command reports it as a usage error (exit 2): the flag names the wrong path.
    """


class ImageNotFoundError(LayoutError):
    """The layout holds no image for the given reference."""


class BaseNotFoundError(ImageNotFoundError):
    """The base a pull was told to patch (``from_ref``) is not in the layout; ``base`` names it."""

    def __init__(self, message: str, *, base: str) -> None:
        super().__init__(message)
        self.base = base


class ExtractError(DorasOrasError):
    """A layer cannot be written to the output directory safely (unsafe name, broken tar, I/O)."""


class TransportError(DorasOrasError):
    """An HTTP transfer failed."""


class ConnectError(TransportError):
    """The peer cannot be reached or reset the connection."""


class TransferTimeoutError(TransportError):
    """A connect/read timeout, a stalled transfer, or an overall deadline."""


class InsecureTransportError(TransportError):
    """A request would leak credentials or follow an unsafe redirect."""


class RegistryError(TransportError):
    """The registry answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int | None = None, fix: Fix | None = None) -> None:
        super().__init__(message, fix=fix)
        self.status = status


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (401/403)."""


class DorasServerError(DorasOrasError):
    """The Doras server answered with an error.

    ``status`` is the HTTP status, ``message`` and ``context`` come from the
    body (``{"error": {"code", "message", "context"}}`` or RFC 9457 problem
    details) when it could be parsed.
    """

    def __init__(self, status: int, message: str, context: str | None = None, *, fix: Fix | None = None) -> None:
        self.status = status
        self.message = message
        self.context = context
        text = f"Doras server answered {status}: {message}"
        if context:
            text += f" ({context})"
        super().__init__(text, fix=fix)


class UnauthorizedError(DorasServerError):
    """401: the server requires client credentials."""


class NotFoundError(DorasServerError):
    """404: an image could not be resolved."""


class IncompatibleArtifactsError(DorasServerError):
    """The artifacts cannot be diffed; do a full pull instead."""


class ImagesIdenticalError(DorasOrasError):
    """204: ``from`` and ``to`` are the same image; nothing to do."""


class BackoffExhausted(DorasOrasError):
    """A polling loop ran out of attempts or time."""


class FallbackRefusedError(DorasOrasError):
    """A delta was possible but could not be used, and the pull was told not to download in full instead
    (``fallback="never"``, or ``wait=False``): nothing but manifests was downloaded, the layout is unchanged.

    ``reason_code`` is the fallback's :class:`~doras_oras.plan.ReasonCode` value (``server-unreachable``,
    ``delta-failed``, ...), ``reason`` its words; ``fix`` that of the cause, if any.
    """

    def __init__(self, message: str, *, reason_code: str, reason: str, fix: Fix | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason_code = reason_code
        self.reason = reason


class PublishError(DorasOrasError):
    """No delta can be published for these images: an index, not one layer each, incompatible layers."""


class DeltaExistsError(PublishError):
    """A different delta for the same pair and kind is already stored under its tag."""


class TrustError(DorasOrasError):
    """Signature verification refused the artifact; nothing may be downloaded or applied.

    ``reason`` is a short machine-readable word (``not-found``, ``malformed``,
    ``limit``, ``bad-signature``, ``annotation``, ``payload``, ``untrusted``,
    ``chain``, ``config``, ``rollback``, ``stale``, ``unordered``); the message names what was wrong. The CLI exits with code 5.
    """

    reason = "trust"

    def __init__(self, message: str, *, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures
        """One line per signature candidate that was tried and why it failed."""


class SignatureNotFoundError(TrustError):
    """No signature manifest exists for the digest (legacy tag, referrers API or tag)."""

    reason = "not-found"


class MalformedSignatureError(TrustError):
    """A signature manifest, simple-signing layer, payload or referrers index is unusable."""

    reason = "malformed"


class SignatureLimitError(TrustError):
    """A trust cap was hit: too many referrers or signatures, a blob or manifest over its cap."""

    reason = "limit"


class SignatureInvalidError(TrustError):
    """Signatures were found but none verifies with any of the trusted keys."""

    reason = "bad-signature"


class AnnotationMismatchError(TrustError):
    """A signature verified, but its payload lacks a required ``optional`` annotation."""

    reason = "annotation"


class PayloadMismatchError(TrustError):
    """A signature verified, but its payload names another digest, repository or type."""

    reason = "payload"


class RollbackError(TrustError):
    """A verified target is older than the installed image of its repository (a rollback)."""

    reason = "rollback"


class StaleTargetError(TrustError):
    """A verified target's signed creation time is older than the freshness bound allows (a freeze)."""

    reason = "stale"


class MissingOrderError(TrustError):
    """A verified target lacks the value (creation time, signed version) the order or freshness rule needs."""

    reason = "unordered"


class UntrustedRepositoryError(TrustError):
    """The trust policy names no rule for the repository (deny unless listed)."""

    reason = "untrusted"


class TrustChainError(TrustError):
    """Offline re-verification: a signature verifies, but the stored image cannot be tied to its digest.

    The signed document (an image index, or the registry manifest of a
    rewritten tar-diff result) is missing from the layout or does not name
    the stored manifest.
    """

    reason = "chain"


class TrustConfigError(TrustError):
    """A public key file or trust policy file cannot be used."""

    reason = "config"
