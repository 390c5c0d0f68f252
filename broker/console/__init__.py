"""The web console (DESIGN.md section 8, "Console"): server-rendered pages under ``/console/``.

It is another room of the API's kind: its routes call the same use cases with the same
principal, verified from the session cookie by the same middleware, so it is never a second
path around authorisation. Each part of the console (one per role) is a router of its own under
``broker.console.routes``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from broker.console.routes import audit, department, home, oidc, operator, provider
from broker.console.session import ConsoleAuth, session_token
from broker.console.web import STATIC, ConsoleRoute, get_user
from broker.domain.errors import NotFound

__all__ = ["ConsoleAuth", "install", "session_token"]

#: The console's routers, in the order their paths are tried.
ROUTERS = (home.router, audit.router, operator.router, oidc.router, department.router,
           provider.router)


def install(app: FastAPI) -> None:
    """Serve the console on ``app`` under ``/console``."""

    async def to_console() -> Response:
        return RedirectResponse("/console/", status_code=308)

    app.add_api_route("/console", to_console, include_in_schema=False)
    for router in ROUTERS:
        app.include_router(router, prefix="/console")
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(fallback, prefix="/console")


fallback = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@fallback.api_route("/{rest:path}", methods=["GET", "POST"], dependencies=[Depends(get_user)])
def nowhere() -> Response:
    """Any other console path: the login page for strangers, a 404 page for the logged in."""
    raise NotFound("There is no such page.")
