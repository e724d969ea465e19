"""HTTP errors of the server: one exception, one body builder for every API shape.

OpenAI (and llama-server) clients read ``{"error": {"message", "type", "param", "code"}}``;
Anthropic's clients read ``{"type": "error", "error": {"type", "message"}}``. Every error
body the server sends is built by :func:`error_body`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

#: OpenAI error types -> Anthropic's names for the same thing.
_ANTHROPIC_TYPES = {"invalid_request_error": "invalid_request_error",
                    "authentication_error": "authentication_error",
                    "not_found_error": "not_found_error", "server_error": "api_error",
                    "not_supported_error": "invalid_request_error",
                    "unavailable_error": "overloaded_error"}


def error_body(status: int, message: str, type_: str = "invalid_request_error",
               code: Optional[str] = None, param: Optional[str] = None,
               flavor: str = "openai") -> Dict[str, Any]:
    """The JSON body of an error; ``flavor`` is ``openai`` or ``anthropic``."""
    if flavor == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(type_, "api_error"),
                                           "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class APIError(Exception):
    """An HTTP error with the fields OpenAI's error object has."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)

    def body(self, flavor: str = "openai") -> Dict[str, Any]:
        return error_body(self.status, self.message, self.type, self.code, self.param, flavor)

