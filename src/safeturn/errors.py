"""One small hierarchy of errors, so callers can catch safeturn's failures apart from bugs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeturn.schema import GuardInfo


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


class ConfigError(SafeturnError, ValueError):
    """A setting or option is out of range, conflicts with another, or names nothing known."""


class RunBusyError(StoreError):
    """Another live process holds the run (it is being run or resumed there)."""


class UpstreamError(BackendError):
    """The wrapped model failed or timed out; `guard` holds what the moderator decided."""

    def __init__(self, message: str, guard: GuardInfo, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.guard = guard
        self.timed_out = timed_out


class BatcherClosedError(SafeturnError, RuntimeError):
    """Raised by `submit` after `aclose`, or to callers whose items never ran."""


class RegistryError(SafeturnError, ValueError):
    """A name registered twice, or a plugin that fails to load."""


class DataSpecError(SafeturnError):
    """A data spec string names no known source, or points at nothing usable."""


class UnknownLabelError(SafeturnError, ValueError):
    """A source label (or a source) that the taxonomy has no mapping for."""


class AttackConfigError(SafeturnError, ValueError):
    """An unknown strategy name, a turn count out of range, or a bad builder option."""


class PolicyError(SafeturnError, ValueError):
    """A policy file is unreadable, names an unknown category or holds a non-text policy."""


class UnscorableFileError(SafeturnError):
    """No line of a labelled file can be scored, or the scored lines hold a single class."""


class WireError(SafeturnError):
    """A request the guard proxy rejects; becomes an OpenAI-shaped error body with `status`."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error", code: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code or kind

    def body(self) -> dict[str, Any]:
        """The `{"error": {...}}` object OpenAI clients parse."""
        return error_body(self.message, kind=self.kind, code=self.code)


def error_body(message: str, *, kind: str, code: str) -> dict[str, Any]:
    """An OpenAI-shaped error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# ---------------------------------------------------------------- training (safeturn.train)


class TrainConfigError(SafeturnError, ValueError):
    """A trainer's config file or override is unreadable or inconsistent."""


class SFTDataError(SafeturnError, ValueError):
    """A training file is empty, unreadable, or holds a sample that cannot be masked."""


class MaskError(SafeturnError, ValueError):
    """A dialogue cannot be turned into a correctly masked training example."""


class RolloutError(SafeturnError, ValueError):
    """A dialogue cannot be rolled out (no user turn, no reference, first turn too long)."""


class RewardInputError(SafeturnError, ValueError):
    """Scores or a mask given to a reward have the wrong shape, a NaN, or a value outside [0, 1]."""


class RlaifError(SafeturnError, ValueError):
    """An RLAIF or DREAM config, data file or round cannot be used; the message names it."""


class LoopError(SafeturnError, ValueError):
    """A loop config, out dir or step cannot go on; the message says what to change."""
