"""Security headers on every answer, and the Content-Security-Policy that the pages pass.

The page, /docs and the report keep their CSS and JavaScript inline (they must work offline,
from the package alone), so the policy allows exactly those inline blocks by their SHA-256
hash and nothing else: no outside origin, no other inline script, no plugin, no framing.
Pictures are the API's PNGs (fetched, shown as blob: URLs) and the report's data: URLs.
"""
from __future__ import annotations

import base64
import hashlib
import logging
from functools import lru_cache

from . import docs, page, scan_report

_log = logging.getLogger(__name__)


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@lru_cache(maxsize=1)
def content_security_policy() -> str:
    scripts = " ".join(_hash(js) for js in (page.JS,))
    styles = " ".join(_hash(css) for css in (page.CSS, docs.CSS, scan_report.CSS))
    return ("default-src 'none'; "
            f"script-src {scripts}; style-src {styles}; "
            "img-src 'self' blob: data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def security_headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", content_security_policy().encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """ASGI middleware: add the security headers to every HTTP answer (errors included).

    An unhandled exception is answered here with a bare 500 that carries the headers: left to
    Starlette, the 500 comes from its outermost error middleware, outside this one, without
    them. The traceback goes to the server's log (as uvicorn would log it), never to the client.
    """

    def __init__(self, app):
        self.app = app
        self.headers = security_headers()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in self.headers if h[0] not in names)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:  # the answer is half sent: nothing sensible to add, let the server close it
                raise
            _log.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            await send_with_headers({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
