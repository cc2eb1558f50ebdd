"""The dashboard's static files; its router (named in rtml.serving.app.ROUTER_MODULES) is in dashboard_api."""

from rtml.serving.dashboard_api import build_router

__all__ = ["build_router"]
