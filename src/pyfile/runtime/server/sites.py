"""Which hosts and which web pages may drive the server: the Host allow-list (against DNS
rebinding) and the Origin allow-list (against cross-site requests), as pure functions over
header values. :class:`~.http.SiteGuard` applies them to every request before routing.

Why these defaults (SECURITY.md has the whole threat model):

- **Host.** A page on ``evil.example`` can make its own name resolve to 127.0.0.1 (DNS
  rebinding); the browser then sends ``Host: evil.example`` to this server and treats the
  answers as same-origin. So only names that cannot be rebound by a stranger are served: IP
  literals, ``localhost`` and ``*.localhost`` (RFC 6761: always loopback), the ``--host``
  name, and what ``--allowed-hosts`` / :data:`ALLOWED_HOSTS_ENV` add.
- **Origin.** Any page can POST a form or a ``fetch()`` with a CORS-safelisted content type
  (``text/plain``, form-urlencoded, multipart) without a preflight; the server would run it
  even though the page cannot read the answer. Browsers name the page in ``Origin``; curl and
  the SDKs send none. Allowed: no Origin, pages on a loopback host (any port: the user's own
  tools), the server's own origin (its web chat), and ``--cors-origins`` /
  :data:`CORS_ORIGINS_ENV`. Everything else, ``null`` included, is refused.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Iterable, List, Optional, Tuple

#: Extra Host names to serve (comma-separated), added to ``--allowed-hosts``.
ALLOWED_HOSTS_ENV = "PYFILE_ALLOWED_HOSTS"
#: Extra origins whose pages may call the server (comma-separated), added to ``--cors-origins``.
CORS_ORIGINS_ENV = "PYFILE_CORS_ORIGINS"

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def split_list(values: Iterable[Optional[str]]) -> List[str]:
    """Comma- or space-separated entries of several flag values, lower-cased, empty ones out."""
    out: List[str] = []
    for value in values:
        for part in (value or "").replace(",", " ").split():
            if part.lower() not in out:
                out.append(part.lower())
    return out


def _split_authority(text: str) -> Optional[Tuple[str, str]]:
    """``host[:port]`` or ``[v6][:port]`` -> (host without brackets or trailing dot, port);
    None when malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        return host, rest[1:]
    host, sep, port = text.partition(":")
    if ":" in port or (sep and not port.isdigit()):
        return None
    if any(c in host for c in "/\\@?#% \t"):
        return None
    return host.rstrip("."), port


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``*.localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def origin_parts(origin: str) -> Optional[Tuple[str, str, str]]:
    """A serialized origin ``scheme://host[:port]`` -> (scheme, host, port with the scheme's
    default filled in); None for ``null`` and anything malformed."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or not scheme or not rest or "/" in rest:
        return None
    parts = _split_authority(rest)
    if parts is None or not parts[0]:
        return None
    host, port = parts
    return scheme, host, port or _DEFAULT_PORTS.get(scheme, "")


def check_origin_flag(entry: str) -> Optional[str]:
    """Why a ``--cors-origins`` entry cannot match any browser's Origin, or None if it can."""
    if entry in ("*", "null") or "*" in entry:
        return None
    if origin_parts(entry) is None:
        return (f"--cors-origins {entry!r} is not an origin: write scheme://host[:port] "
                f"(e.g. http://localhost:3000), 'null' or '*'")
    return None


class SitePolicy:
    """The Host and Origin allow-lists of one server."""

    def __init__(self, bind_host: str, allowed_hosts: Iterable[str] = (),
                 cors_origins: Iterable[str] = ()) -> None:
        hosts = split_list(allowed_hosts)
        self.any_host = "*" in hosts
        bound = (bind_host or "").strip("[]").rstrip(".").lower()
        self.host_patterns = [h.rstrip(".") for h in hosts if h != "*"]
        if bound and not is_ip(bound):
            self.host_patterns.append(bound)
        origins = split_list(cors_origins)
        self.any_origin = "*" in origins
        self.origin_patterns = [o.rstrip("/") for o in origins if o != "*"]

    @classmethod
    def from_options(cls, opts: object, environ: Optional[dict] = None) -> "SitePolicy":
        """From ``--host``, ``--allowed-hosts``, ``--cors-origins``, ``--cors`` and the
        environment variables."""
        import os
        env = os.environ if environ is None else environ
        hosts = list(getattr(opts, "allowed_hosts", None) or []) + [env.get(ALLOWED_HOSTS_ENV)]
        origins = list(getattr(opts, "cors_origins", None) or []) + [env.get(CORS_ORIGINS_ENV)]
        if getattr(opts, "cors", False):
            origins.append("*")
        return cls(getattr(opts, "host", "") or "", [h for h in hosts if h],
                   [o for o in origins if o])

    # -- Host ----------------------------------------------------------------------------------

    def host_ok(self, header: Optional[str]) -> bool:
        """Whether a request with this ``Host`` header (None: absent) is served."""
        if self.any_host or header is None:
            return True
        text = header.strip().lower()
        if not text:
            return True  # HTTP/1.1 allows an empty Host; no browser sends one
        parts = _split_authority(text)
        if parts is None:
            return False
        name = parts[0]
        if not name:
            return False
        if is_ip(name) or name == "localhost" or name.endswith(".localhost"):
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.host_patterns)

    # -- Origin --------------------------------------------------------------------------------

    def origin_ok(self, origin: str, host_header: Optional[str]) -> bool:
        """Whether a browser page of this ``Origin`` may call the server (the Host has passed
        :meth:`host_ok`)."""
        value = origin.strip().lower()
        if self.any_origin:
            return True
        if value in self.origin_patterns:
            return True
        parts = origin_parts(value)
        if parts is None:  # "null" (sandboxed, file:, some redirects) and garbage
            return False
        scheme, host, port = parts
        if scheme in ("http", "https"):
            if is_loopback_name(host):
                return True
            if host_header and self._same_as_host(host, port, scheme, host_header):
                return True
        return any(fnmatch.fnmatchcase(value, p) for p in self.origin_patterns if "*" in p)

    @staticmethod
    def _same_as_host(host: str, port: str, scheme: str, host_header: str) -> bool:
        """The server's own origin: the page was served by this server under this Host."""
        parts = _split_authority(host_header.strip().lower())
        if parts is None:
            return False
        h_host, h_port = parts
        return h_host == host and (h_port or _DEFAULT_PORTS.get(scheme, "")) == port
