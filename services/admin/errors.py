"""What the admin operations refuse, named so that the API and the CLI say the same thing."""

from __future__ import annotations

from typing import Any


class AdminError(Exception):
    """A refusal with a stable machine-readable `code` and the facts that explain it."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code


class NotFound(AdminError):
    code = "not_found"


class Conflict(AdminError):
    """The request contradicts what is stored (a mapping that holds, a duplicate id, …)."""

    code = "conflict"


class Invalid(AdminError):
    """The request is well formed but names something that cannot be used (an unknown user, …)."""

    code = "invalid"


class Unavailable(AdminError):
    """A dependency (the broker) could not do its part now; retrying later may work."""

    code = "unavailable"
