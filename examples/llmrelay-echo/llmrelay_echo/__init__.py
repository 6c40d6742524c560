"""Two llmrelay providers: Echo (a JSON API over HTTP) and Parrot (offline)."""

from ._echo import Echo
from ._parrot import Parrot

__all__ = ["Echo", "Parrot"]
