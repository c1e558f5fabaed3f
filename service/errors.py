"""Errors only the service raises, in the one family of ``gradstore.errors``."""

from __future__ import annotations

from gradstore.errors import ConflictError, GradstoreError


class DatastoreIntegrityError(ConflictError):
    """A ready store's files no longer match what was verified: it is failed, not served."""

    title = "Datastore integrity check failed"


class DatasetIntegrityError(ConflictError):
    """A dataset's file no longer matches the checksum recorded at upload."""

    title = "Dataset integrity check failed"


class ServiceUnavailableError(GradstoreError):
    """A dependency (database, artifact root, model directory) cannot be used right now."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 5):
        super().__init__(detail)
        self.retry_after = retry_after
