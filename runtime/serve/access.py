"""Who may call the server: an optional bearer token, and CORS for listed browser origins.

:class:`AccessPolicy` is a check the app makes before routing a request. Without a
token and without origins it is not built at all, so an open server pays nothing.

- Token: every route but ``/v2/health/*`` needs ``Authorization: Bearer <token>``;
  anything else is a 401 with ``WWW-Authenticate: Bearer``. Tokens are compared in
  constant time.
- CORS: off unless origins are listed. A request from a listed origin (or any origin
  when ``*`` is listed) gets ``Access-Control-Allow-Origin``; a preflight ``OPTIONS``
  is answered 204 without a token, as browsers send none with it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Sequence

from pomona.runtime.serve.codec import RequestError

__all__ = ["ENV_AUTH_TOKEN", "AccessPolicy", "read_token"]

#: Environment variable holding the bearer token (``--auth-token-file`` takes precedence).
ENV_AUTH_TOKEN = "POMONA_AUTH_TOKEN"

Headers = list[tuple[bytes, bytes]]

#: Paths any client may call without a token: liveness and readiness probes.
_OPEN_PREFIX = "/v2/health/"
_ALLOW_METHODS = b"GET, POST, OPTIONS"
_ALLOW_HEADERS = b"authorization, content-type, content-encoding, inference-header-content-length"
_EXPOSE_HEADERS = b"inference-header-content-length"
_MAX_AGE = b"600"


def read_token(path: str | os.PathLike[str] | None) -> str | None:
    """The bearer token: the first line of ``path``, else ``$POMONA_AUTH_TOKEN``, else None."""
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
        if not token:
            raise ValueError(f"the token file {os.fspath(path)} is empty")
        return token
    return os.environ.get(ENV_AUTH_TOKEN) or None


class AccessPolicy:
    """The token check and the CORS headers of one server."""

    def __init__(self, token: str | None = None, cors_origins: Iterable[str] = ()) -> None:
        self._expected = b"Bearer " + token.encode() if token else None
        origins = [origin.strip().rstrip("/") for origin in cors_origins if origin.strip()]
        self._any_origin = "*" in origins
        self._origins = {origin.encode() for origin in origins if origin != "*"}

    @property
    def needs_token(self) -> bool:
        return self._expected is not None

    def preflight(self, method: str, headers: Sequence[tuple[bytes, bytes]]) -> Headers | None:
        """The headers of a 204 answer when this is a CORS preflight from a listed origin."""
        if method != "OPTIONS":
            return None
        origin = self._allowed_origin(headers)
        if origin is None:
            return None
        return [
            *self._origin_headers(origin),
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", _ALLOW_HEADERS),
            (b"access-control-max-age", _MAX_AGE),
        ]

    def guard(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> Headers | None:
        """A CORS preflight's answer headers (the request then gets 204), else None once
        :meth:`check` let the request through (it raises 401 when a token is missing)."""
        preflight = self.preflight(method, headers)
        if preflight is None:
            self.check(path, headers)
        return preflight

    def check(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Raise a 401 :class:`RequestError` unless the request may call ``path``."""
        if self._expected is None or path.startswith(_OPEN_PREFIX):
            return
        for key, value in headers:
            if key == b"authorization":
                if hmac.compare_digest(value.strip(), self._expected):
                    return
                raise RequestError("invalid bearer token", 401)
        raise RequestError("missing 'Authorization: Bearer <token>' header", 401)

    def response_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        """CORS headers for the response to a request from a listed origin; else none."""
        origin = self._allowed_origin(headers)
        return [] if origin is None else self._origin_headers(origin)

    def _allowed_origin(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
        if not self._any_origin and not self._origins:
            return None
        for key, value in headers:
            if key == b"origin":
                if self._any_origin or value in self._origins:
                    return value
                return None
        return None

    def _origin_headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", b"*" if self._any_origin else origin),
            (b"access-control-expose-headers", _EXPOSE_HEADERS),
            (b"vary", b"origin"),
        ]


UNAUTHORIZED_HEADERS: Headers = [(b"www-authenticate", b'Bearer realm="pomona"')]
