"""Interactive MCMC playground served by the library (``ebmlab serve``).

The page draws; sampling runs in Python with :mod:`ebmlab.samplers` and is
streamed over a WebSocket. See :mod:`ebmlab.playground.app` (the server and
its protocol), which imports settings, models, session and gif.
"""

from .app import DEFAULTS, LIMITS, Model, PlaygroundError, Session, create_app, load_models, serve

__all__ = ["DEFAULTS", "LIMITS", "Model", "PlaygroundError", "Session", "create_app", "load_models", "serve"]
