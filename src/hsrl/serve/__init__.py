"""HTTP hidden-state server (`hsrl serve`) and its client.

    from hsrl.serve import HiddenStateClient, ServerError
    hidden = HiddenStateClient("http://127.0.0.1:8000").hidden_states(observations=obs)   # (B, H) float32

Importing this package imports neither the web framework nor torch; `hsrl.serve.server` needs fastapi and uvicorn.
"""

from hsrl.serve.client import HiddenStateClient, ServerError, ServerResult

__all__ = ["HiddenStateClient", "ServerError", "ServerResult"]
