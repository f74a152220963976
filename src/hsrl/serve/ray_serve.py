"""`hsrl serve --ray [ADDRESS]`: the same server (routes, auth, error answers, /health) deployed with Ray Serve.

Each replica (`--replicas`, each with `--gpus-per-replica` GPUs, placed by Ray on any node of the cluster) loads the
model once, in its constructor, and runs the app that `hsrl serve` runs (`hsrl.serve.server.build_app`: the same
validation, health fields and replies), except that requests are batched by Ray Serve's `@serve.batch` instead of
our `Batcher`: a request is cut into slices of at most `max_batch` observations and a replica's batch holds at most
`max_batch` observations, waiting at most `max_wait_ms` for more. Ray Serve's HTTP proxy (on --host:--port) spreads
requests over the replicas and restarts a replica that dies; a request that was on a dead replica is answered with
a 5xx, which `HiddenStateClient` retries. `/v1/stats` reports the replica that answered.

Ray Serve's own routes `/-/healthz` and `/-/routes` are answered by its proxy and not guarded by the token.
"""

import asyncio
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from hsrl.serve.server import (BatchStats, Endpoint, Inputs, ModelState, ServerSettings,
                               as_request_error, build_app, busy_error)

APP_NAME = "hsrl"
log = logging.getLogger("hsrl.serve")


def _rows(items: list[Inputs]) -> int:
    return sum(len(x) for x in items)


@serve.ingress()  # the app is built per replica, after the model has loaded (`__serve_build_asgi_app__`)
class HiddenStateReplica:
    """One replica: the model, loaded once, behind the shared app; batches formed by `@serve.batch`."""

    def __init__(self, spec_json: str, settings: ServerSettings, device: str | None = None):
        from hsrl.llm import ExtractionSpec, make_extractor

        spec = ExtractionSpec.from_json(spec_json)
        self.endpoint = Endpoint(spec, settings)
        self.model = ModelState(make_extractor(spec, cache=settings.state_cache(), device=device,
                                                   batch_size=settings.max_batch))
        self.endpoint.check_extractor(self.model.extractor)
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hsrl-model")  # the extractor is not thread-safe
        self.queued = 0  # rows waiting or running on this replica
        self._extract.set_max_batch_size(settings.max_batch)
        self._extract.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)
        log.info("replica ready: %s (spec %s), pid %d", spec.model, self.model.extractor.spec.hash, os.getpid())

    def __serve_build_asgi_app__(self):
        return build_app(self.endpoint, self.model, self.submit, self.stats)

    def pid(self) -> int:
        return os.getpid()

    async def submit(self, inputs: Inputs):
        """(hidden, generated texts) for one request: its slices of at most max_batch rows go to `@serve.batch`."""
        settings = self.endpoint.settings
        n = len(inputs)
        if self.queued + n > settings.max_queued:
            raise busy_error(self.queued, settings.max_queued)
        self.stats.requests += 1
        self.queued += n
        try:
            step = settings.max_batch
            parts = [inputs.slice(i, i + step) for i in range(0, n, step)]
            answers = await asyncio.gather(*(self._extract(part) for part in parts))
        finally:
            self.queued -= n
        for answer in answers:
            if isinstance(answer, Exception):
                raise as_request_error(answer)
        return np.concatenate([h for h, _ in answers]), [t for _, g in answers for t in g]

    @serve.batch(max_batch_size=64, batch_size_fn=_rows)  # sizes set from the settings in __init__
    async def _extract(self, items: list[Inputs]) -> list:
        """One batch of slices -> one (hidden, generated) or exception per slice; if a batch of several fails, each
        slice is rerun alone, so one bad request fails only itself."""
        try:
            return await self._run(items)
        except Exception as err:
            if len(items) == 1:
                return [err]
            log.info("a batch of %d requests failed (%s); rerunning them one by one", len(items), err)
        out = []
        for item in items:
            try:
                out.extend(await self._run([item]))
            except Exception as err:
                out.append(err)
        return out

    async def _run(self, items: list[Inputs]) -> list:
        joined = Inputs.join(items)
        start = time.perf_counter()
        hidden, generated = await asyncio.get_running_loop().run_in_executor(self.executor, self.model.run, joined)
        self.stats.record(len(joined), len(items), time.perf_counter() - start)
        if hidden.shape[0] != len(joined):  # a backend bug; never hand out misaligned rows
            raise RuntimeError(f"the extractor returned {hidden.shape[0]} rows for {len(joined)} inputs")
        out, offset = [], 0
        for item in items:
            out.append((hidden[offset:offset + len(item)], generated[offset:offset + len(item)]))
            offset += len(item)
        return out


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ('local' or None: start a local instance)."""
    import ray

    if address in (None, "", "local"):
        address = None
    # a relative PYTHONPATH (as in `PYTHONPATH=src`) made absolute, so replicas import this same hsrl
    path = os.environ.get("PYTHONPATH")
    runtime_env = None
    if path and address is None:
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in path.split(os.pathsep))}}
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env)


def deploy(spec, settings: ServerSettings, *, address: str | None, replicas: int, gpus_per_replica: float = 0.0,
           cpus_per_replica: float = 1.0, host: str = "127.0.0.1", port: int = 8000, device: str | None = None):
    """Start Ray Serve on host:port and deploy `replicas` replicas serving `spec`; returns when all are ready
    (a model that fails to load raises RuntimeError). Stop with `shutdown()`."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    if gpus_per_replica < 0:
        raise ValueError(f"--gpus-per-replica must be >= 0, got {gpus_per_replica}")
    Endpoint(spec, settings)  # a spec that does not fit the env is refused here, before Ray starts
    connect(address)
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(HiddenStateReplica, name="HiddenStateReplica").options(
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        max_ongoing_requests=max(2 * settings.max_batch, 8),  # room for a full batch waiting behind a running one
        max_queued_requests=-1,  # rows per replica are bounded by settings.max_queued instead (503 past it)
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    return serve.run(deployment.bind(spec.to_json(), settings, device), name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    serve.shutdown()


def serve_forever(spec, settings: ServerSettings, **deploy_args) -> int:
    """`hsrl serve --ray`: deploy, then serve until interrupted; exits 1 if the model fails to load."""
    where = f"http://{deploy_args.get('host', '127.0.0.1')}:{deploy_args.get('port', 8000)}"
    print(f"hsrl serve --ray: deploying {deploy_args.get('replicas')} replica(s) of {spec.model} for {settings.env} "
          f"on {where} (token {'required' if settings.token else 'off'})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so a terminate() shuts Serve and a local Ray down
    try:
        deploy(spec, settings, **deploy_args)
    except RuntimeError as err:
        print(f"hsrl serve --ray: error: the deployment failed: {err}", file=sys.stderr)
        shutdown()
        return 1
    print(f"hsrl serve --ray: ready on {where}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    return 0
