"""The HTTP service: the command contract, queries, audit, views and the dashboard over HTTP.

``create_app(service, tokens)`` builds the Litestar application; ``create_app_from_env()`` is the
factory ``cart-course serve`` hands to uvicorn (one per worker process).
"""

from .app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
