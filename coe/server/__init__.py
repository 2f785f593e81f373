"""``coe serve``: an OpenAI-compatible HTTP front for a CoE.

Importing this package pulls in FastAPI and prometheus-client, so nothing in ``coe`` imports it at
module level; ``coe.cli.serve`` imports it inside the command.
"""

from coe.server.app import create_app
from coe.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
