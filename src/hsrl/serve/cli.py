"""`hsrl serve`: load a model and serve hidden states over HTTP (routes and payloads: `hsrl.serve.server`)."""

import ipaddress
import logging
import os
import sys
from dataclasses import dataclass, field

from hsrl.llm.flags import SpecFlags
from hsrl.serve.wire import TOKEN_ENV


@dataclass(frozen=True)
class ServeConfig(SpecFlags):
    """Serve LLM hidden states of Craftax observations over HTTP.

    GET /health (open): ready flag, model, hidden size, spec JSON and hash, env, limits.
    POST /v1/hidden-states: {"observations": {"dtype": "float32", "shape": [B, D], "data": base64} or lists}
    or {"texts": [...]} -> {"hidden": {"dtype": "float32", "shape": [B, H], "data": base64}, "spec_hash": ...}
    (+ "generated_text" when --tokens > 1). With --input image (a vision-language model on a Pixels --env) the
    request carries {"images": {"dtype": "uint8", "shape": [B, H, W, 3], "data": base64}} instead (image+text:
    images plus observations or texts). GET /v1/stats: batching statistics.
    Observations are rendered with hsrl.text and extracted exactly as `hsrl label` does. Requests from concurrent
    clients run together in batches of up to --max-batch observations. Binds to loopback unless --host says
    otherwise; a bearer token (--token or $HSRL_SERVE_TOKEN) then guards every route but /health.
    """

    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={"help": "environment whose observations are served (sets the renderer, the observation length and frame size, and the spec's variant); a Pixels env for --input image"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (loopback by default)"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    max_batch: int = field(default=64, metadata={"help": "observations per model call; concurrent requests are batched up to this"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "longest wait for more requests before a batch runs"})
    max_request: int = field(default=1024, metadata={"help": "observations (or texts) per request"})
    max_body_mb: float = field(default=32.0, metadata={"help": "largest request body in MiB"})
    max_text_chars: int = field(default=20_000, metadata={"help": "longest text of a `texts` request, in characters"})
    token: str | None = field(default=None, metadata={"help": f"bearer token guarding every route but /health (default: ${TOKEN_ENV}; prefer the variable, flags show in process lists)"})
    log_level: str = field(default="info", metadata={"help": "log level: critical, error, warning, info, debug"})
    access_log: bool = field(default=False, metadata={"help": "log every request"})
    ray: str | None = field(default=None, metadata={"help": "deploy with Ray Serve instead of one process: --ray ADDRESS of a cluster, or --ray alone to start a local Ray instance", "nargs": "?", "const": "local", "metavar": "ADDRESS"})
    replicas: int = field(default=1, metadata={"help": "Ray: model replicas (each loads the model once; Ray places them on any node)"})
    gpus_per_replica: float = field(default=0.0, metadata={"help": "Ray: GPUs per replica (0 = CPU replicas)"})

    def spec(self):
        from hsrl.env.catalog import env_info

        return self.extraction_spec(env_info(self.env).variant)

    def settings(self, token: str | None):
        from hsrl.serve.server import ServerSettings

        if not self.max_body_mb > 0:
            raise ValueError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        return ServerSettings(env=self.env, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms,
                              max_request=self.max_request, max_body_bytes=int(self.max_body_mb * 2**20),
                              max_text_chars=self.max_text_chars, token=token)


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

    from hsrl.env.catalog import check_env_name
    from hsrl.serve.server import create_app

    check_env_name(config.env)
    if not 0 <= config.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {config.port}")
    token = config.token if config.token is not None else os.environ.get(TOKEN_ENV) or None
    settings = config.settings(token)
    if not _is_loopback(config.host) and token is None:
        print(f"hsrl serve: warning: binding {config.host} without a bearer token: anyone who can reach the port "
              f"can use the model (set ${TOKEN_ENV})", file=sys.stderr)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.ray is None and (config.replicas != 1 or config.gpus_per_replica != 0):
        raise ValueError("--replicas and --gpus-per-replica need --ray")
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
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                           access_log=config.access_log, lifespan="on"))
    print(f"hsrl serve: {config.model} for {config.env} on http://{config.host}:{config.port} "
          f"(token {'required' if token else 'off'}); the model loads in the background, see /health", flush=True)
    server.run()
    if failed:
        print(f"hsrl serve: error: the model failed to load: {failed[0]}", file=sys.stderr)
        return 1
    return 0
