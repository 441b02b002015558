"""Control API and supervisor console server (issues 6 and 7).

``create_app(ApiDeps(...))`` builds the FastAPI app; ``LiveHub`` carries live events from the runtime
to the console; ``line_agent.metrics`` holds the Prometheus metrics the runtime updates.
"""

from line_agent.api.deps import ApiDeps, LineControl
from line_agent.live import LiveHub

__all__ = ["ApiDeps", "LineControl", "LiveHub", "create_app"]


def __getattr__(name: str) -> object:
    # create_app pulls in FastAPI and the routes; keep ``import line_agent.api`` cheap for the CLI.
    if name == "create_app":
        from line_agent.api.app import create_app

        return create_app
    raise AttributeError(name)
