"""The dashboard's static files; its router is in rtml.monitoring.dashboard_api."""
