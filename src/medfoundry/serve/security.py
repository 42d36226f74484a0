"""Safe defaults of ``medfoundry serve``: loopback unless told otherwise, a bearer token required on every
route when listening elsewhere, CORS off unless origins are given, and a request log without PHI (method,
route template, status and time; never query strings, file names or bodies)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from medfoundry.errors import InputContractError

TOKEN_ENV = "MEDFOUNDRY_TOKEN"
COOKIE = "medfoundry_token"
log = logging.getLogger("medfoundry.serve")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The bearer token to require: ``token``, else ``$MEDFOUNDRY_TOKEN``; InputContractError when ``host`` is
    not a loopback address and there is none (the viewer never listens openly without one)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise InputContractError("the token must have at least 16 characters")
    if token is None and not is_loopback(host):
        raise InputContractError(f"listening on {host} needs a bearer token: --token or {TOKEN_ENV}")
    return token


def install(app: Any, token: str | None, cors_origins: Sequence[str] = ()) -> None:
    """Add the token check, CORS (only for ``cors_origins``) and the PHI-free request log to a FastAPI app.

    With a token, every route needs ``Authorization: Bearer <token>`` or the ``medfoundry_token`` cookie; the
    page ``/?token=<token>`` sets that cookie (HttpOnly, SameSite=Strict) and redirects to ``/``, so a browser
    can open the viewer. Refusals are ``401 {"error": "Unauthorized", ...}``.
    """
    from fastapi.responses import JSONResponse, RedirectResponse

    expected = token.encode() if token else None

    def _ok(given: str | None) -> bool:
        return expected is not None and given is not None and hmac.compare_digest(given.encode(), expected)

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        start = time.perf_counter()
        if expected is not None:
            header = request.headers.get("authorization", "")
            bearer = header[7:] if header.lower().startswith("bearer ") else None
            if request.url.path == "/" and _ok(request.query_params.get("token")):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, token or "", httponly=True, samesite="strict")
                return response
            if not (_ok(bearer) or _ok(request.cookies.get(COOKIE))):
                log.info("%s %s 401", request.method, _route(request))
                return JSONResponse({"error": "Unauthorized", "detail": "missing or wrong bearer token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        log.info("%s %s %d %.1fms", request.method, _route(request), response.status_code,
                 (time.perf_counter() - start) * 1000)
        return response

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])


def _route(request: Any) -> str:
    """The matched route's template (``/v1/images/{image_id}/segment``), never the raw path or its query."""
    route = getattr(request.scope.get("route"), "path", None)
    if route is None:
        return "<unmatched>"
    top = "/" + request.url.path.split("/")[1]
    return route if route.startswith(top) or top not in ("/v1", "/api") else top + route
