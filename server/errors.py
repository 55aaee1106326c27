"""The exception a handler raises to answer with an error frame."""

from __future__ import annotations

from hubbub.protocol.errors import ErrorCode


class ApiError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"{what} not found")
