"""One small hierarchy of errors, so callers can catch safeturn's failures apart from bugs."""

from __future__ import annotations


class SafeturnError(Exception):
    """Base class of every error safeturn raises on purpose."""


class ImageError(SafeturnError):
    """An image is missing, corrupt, too large, of a refused format, or outside the data root."""


class SchemaError(SafeturnError):
    """A record does not fit safeturn's schema (bad JSONL line, unknown OpenAI content part)."""


class ModelSpecError(SafeturnError):
    """A model spec string names no known backend or is malformed."""


class PrerequisiteError(SafeturnError):
    """Something the user must install or provide is missing (a package, a model file, a key)."""


class BackendError(SafeturnError):
    """A model backend failed to produce a reply after its retries.

    Args:
        message: What failed; it may quote the backend's error body, so log it with care.
        status: The backend's last HTTP status, when it answered with one: a caller can report
            it without the message.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StoreError(SafeturnError):
    """The run database is missing a run or holds inconsistent records."""


class ImageTooLargeError(ImageError):
    """An image (or a request's images together) declares more pixels or bytes than allowed."""
