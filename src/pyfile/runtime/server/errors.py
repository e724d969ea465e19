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
                    "exceed_context_size_error": "invalid_request_error",
                    "unavailable_error": "overloaded_error",
                    "permission_error": "permission_error"}
#: Statuses Anthropic's API names by themselves, whatever the OpenAI type.
_ANTHROPIC_STATUS_TYPES = {413: "request_too_large", 401: "authentication_error",
                           403: "permission_error", 404: "not_found_error"}


def error_body(status: int, message: str, type_: str = "invalid_request_error",
               code: Optional[str] = None, param: Optional[str] = None,
               flavor: str = "openai", extra: Optional[Dict[str, Any]] = None
               ) -> Dict[str, Any]:
    """The JSON body of an error; ``flavor`` is ``openai`` or ``anthropic``; ``extra``:
    more fields of the OpenAI-shaped error object (llama-server's ``n_prompt_tokens``...)."""
    if flavor == "anthropic":
        kind = _ANTHROPIC_STATUS_TYPES.get(status) or _ANTHROPIC_TYPES.get(type_, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code,
                      **(extra or {})}}


class APIError(Exception):
    """An HTTP error with the fields OpenAI's error object has."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None,
                 extra: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)
        self.extra = extra

    def body(self, flavor: str = "openai") -> Dict[str, Any]:
        return error_body(self.status, self.message, self.type, self.code, self.param, flavor,
                          self.extra)

