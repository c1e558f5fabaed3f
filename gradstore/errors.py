"""The exceptions of gradstore, one family, each mapped to an HTTP status by the service.

Every error carries a human-readable detail; the service turns it into problem+json
(RFC 9457) with ``status`` and ``title`` taken from the class.
"""

from __future__ import annotations


class GradstoreError(Exception):
    """Base class: ``status`` and ``title`` say how the service reports it."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidInputError(GradstoreError):
    """A request, file or example that cannot be used as given."""

    status = 422
    title = "Invalid input"


class InvalidExampleError(InvalidInputError):
    """One example is malformed; the detail names where (``file:line``, lines counted from
    1, or the example's place in a list) and the problem."""

    title = "Invalid example"

    def __init__(self, detail: str, where: str | None = None, line: int | None = None):
        super().__init__(f"{where}: {detail}" if where else detail)
        self.problem = detail
        self.where = where
        self.line = line  # 1-based, when the example is a line of a file


class NotFoundError(GradstoreError):
    status = 404
    title = "Not found"


class ConflictError(GradstoreError):
    """The resource exists but is in a state that forbids the request (e.g. not ready)."""

    status = 409
    title = "Conflict"


class NotReadyError(ConflictError):
    title = "Datastore not ready"


class MissingArtifactError(ConflictError):
    """The datastore lacks an artifact the method needs (e.g. RDS+ embeddings); the detail
    says how to add it. Raised before anything heavy is loaded."""

    title = "Datastore artifact missing"

    def __init__(self, artifact: str, detail: str | None = None, method: str | None = None):
        super().__init__(detail or f"this datastore has no {artifact!r} artifact")
        self.artifact = artifact
        self.method = method


class UnknownMethodError(InvalidInputError):
    title = "Unknown selection method"


class ManifestMismatchError(GradstoreError):
    """Files on disk do not match the manifest: the datastore must not be served."""

    status = 500
    title = "Datastore integrity check failed"


class PayloadTooLargeError(GradstoreError):
    status = 413
    title = "Payload too large"


class MissingExtraError(GradstoreError):
    """An optional dependency group (pip extra) this feature needs is not installed: a
    fault of the installation (the service's own extra brings every one it uses)."""

    title = "Optional dependency missing"
