"""The console's security headers on every response under ``/console``: pages, and also what
no console route answers (the bare ``/console`` redirect, a method no route takes, a static
file, and the refusals the middleware gives before any route runs: 413, 422, 429)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.console.session import is_console_path
from broker.console.web import SECURITY_HEADERS


class ConsoleHeaders:
    """Adds the console's security headers a console response does not already carry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
