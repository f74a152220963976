"""`hsrl serve`: load a model and serve hidden states over HTTP (its config, routes and payloads:
`hsrl.serve.server`)."""

import ipaddress
import logging
import os
import sys

from hsrl.serve.server import ServeConfig
from hsrl.serve.wire import TOKEN_ENV


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(config: ServeConfig) -> int:
    """Serve until interrupted; exits 1 if the model fails to load."""
    import uvicorn

    from hsrl.serve.server import create_app, uvicorn_config

    token = config.token if config.token is not None else os.environ.get(TOKEN_ENV) or None
    settings = config.settings(token)
    if not _is_loopback(config.host) and token is None:
        print(f"hsrl serve: warning: binding {config.host} without a bearer token: anyone who can reach the port "
              f"can use the model (set ${TOKEN_ENV})", file=sys.stderr)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.ray is not None:
        from hsrl.serve.ray_serve import serve_forever

        return serve_forever(config.spec(), settings, address=config.ray, replicas=config.replicas,
                             gpus_per_replica=config.gpus_per_replica, host=config.host, port=config.port,
                             device=config.device)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(err: BaseException) -> None:
        failed.append(err)
        if server is not None:
            server.should_exit = True

    app = create_app(config.spec(), settings, device=config.device, on_load_error=on_load_error)
    server = uvicorn.Server(uvicorn_config(app, settings, host=config.host, port=config.port,
                                           log_level=config.log_level, access_log=config.access_log))
    print(f"hsrl serve: {config.model} for {config.env} on http://{config.host}:{config.port} "
          f"(token {'required' if token else 'off'}); the model loads in the background, see /health", flush=True)
    server.run()
    if failed:
        print(f"hsrl serve: error: the model failed to load: {failed[0]}", file=sys.stderr)
        return 1
    return 0
