"""The hidden-state server: a FastAPI app that turns observations into pooled hidden states, batching requests.

Routes (wire format in `hsrl.serve.wire`):

- ``GET /health`` (never guarded): ``ready``, ``status`` ('loading', 'ready', 'failed'), ``error``, ``model``,
  ``hidden_size``, ``spec`` / ``spec_json`` / ``spec_hash`` (the extractor's resolved spec; null until ready), ``env``,
  ``variant``, ``observation_length``, ``input`` (what the spec reads), ``image_shape`` (Pixels envs), ``generates``
  and the limits (``max_batch``, ``max_wait_ms``, ``max_request``,
  ``max_body_bytes``, ``max_text_chars``), ``auth`` (whether a token is required).
- ``POST /v1/hidden-states``: a JSON object with exactly one of ``observations`` (symbolic vectors of the server's
  env, ``{"dtype": "float32" | "float64", "shape": [B, D], "data": base64}`` or a list of B lists of D numbers) or
  ``texts`` (B ready text observations). A spec that reads images (input 'image' or 'image+text', a Pixels env)
  takes ``images`` (``{"dtype": "uint8", "shape": [B, H, W, 3], "data": base64}``, the env's frame size): alone
  for 'image', with ``observations`` or ``texts`` of the same B for 'image+text'. A spec with history K > 0
  (`--history K`) takes ``history``: ``{"actions": [[a, ...] per observation], "observations": [B, M, D] array or
  lists, or "texts": [[...] per observation]}``, each observation's previous observations in its episode, oldest
  first, with the action taken after each (``actions[b]`` says how many, at most K, none at an episode's first
  step; ``observations`` with ``observations``, ``texts`` with ``texts``; array rows past ``len(actions[b])``
  are ignored). The prompt is built exactly as labelling builds it from the chunk files. Answers ``{"hidden": {"dtype": "float32", "shape": [B, H], "data": ...},
  "spec_hash": ...}`` plus ``"generated_text": [B strings]`` when the spec generates (tokens > 1).
- ``GET /v1/stats``: batches run, requests, observations, largest batch seen and histograms of batch sizes (in
  observations and in requests), answers by status.

With ``legacy_routes`` (``hsrl serve --legacy-routes``) the server also speaks the protocol of the servers the
Craftax_Baselines family of scripts ran, so their evaluation clients work unchanged:

- ``POST /get_hidden_state`` with ``{"obs": [[[r, g, b], ...], ...]}``: one pixel frame of the env as nested lists of
  floats in [0, 1] (as Craftax renders it; `hsrl.pixels.pixels_to_uint8` converts it, as for every frame), answered
  ``{"hidden_state": [H floats], "shape": [H], "generated_text": "..."}`` ('' for prompt-only specs). Those servers
  read the frame with a vision-language model, so the route serves image specs (input 'image'); for any other spec
  it answers 422 saying so. It runs through the same batcher, extractor and checks as ``/v1/hidden-states``, so the
  vector equals `HiddenStateClient`'s for the same frame.
- ``GET /health`` answers 503 (same body, ``ready`` false) until the model is loaded (or when it failed), 200 once
  it is: those clients poll it for a 200. `HiddenStateClient` reads a 503 health as "not ready yet".

Observations go through exactly the labelling path: `hsrl.text.render_text(obs, variant)` then the extractor's
`extract(texts, images=...)`. The extractor is not thread-safe, so one model thread runs it; requests wait in a queue and a
batcher task hands the model thread requests together, up to ``max_batch`` observations, waiting at most
``max_wait_ms`` after the oldest waiting request arrived. A request larger than what is left of a batch is cut into
slices, and each batch serves first the requests that have had the fewest rows so far, so a request that arrives
behind large ones waits for at most the batch that is running. While a batch runs,
new requests queue up and form the next one. If a batch of several requests fails, each request is rerun alone, so
one bad request (say, a text too long for the model) fails only itself.

Errors answer ``{"detail": message}``: 400 malformed JSON, 401 missing or wrong bearer token, 413 body larger than
``max_body_bytes``, 415 not ``application/json``, 422 a well-formed body with a bad value (unknown or missing field,
wrong type, dtype, shape or length for the env, NaN/inf, bad base64, too many observations, an observation the
renderer or the model rejects), 408 a body that did not arrive within ``body_timeout_s``, 503 model still loading
(or failed to load) or more than ``max_queued`` observations waiting, 500 an extraction that failed for
another reason. Nothing is ever answered with zeros in place of hidden states.

`Endpoint` (spec checks, request validation, /health fields, reply) and `build_app` (routes, auth, error answers)
are shared with `hsrl serve --ray` (`hsrl.serve.ray_serve`), which batches with Ray Serve instead of `Batcher`.
"""

import asyncio
import collections
import hmac
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Callable, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hsrl.errors import InputError
from hsrl.llm.flags import SpecFlags
from hsrl.serve.wire import (
    HEALTH_PATH, HIDDEN_STATES_PATH, IMAGE_DTYPES, LEGACY_HIDDEN_STATE_PATH, STATS_PATH, TOKEN_ENV, decode_array,
    encode_array,
)
from hsrl.llm.spec import spec_differences

log = logging.getLogger("hsrl.serve")

OPEN_PATHS = frozenset({HEALTH_PATH})  # routes the bearer token does not guard


@dataclass(frozen=True)
class ServerSettings:
    """How the server batches and what it accepts."""

    env: str = "Craftax-Classic-Symbolic-v1"  # which renderer and observation length apply
    max_batch: int = 64  # observations per model call (a larger request runs in slices, taking turns)
    max_wait_ms: float = 5.0  # longest wait for more requests after the oldest waiting one arrived
    max_request: int = 1024  # observations (or texts) per request
    max_body_bytes: int = 32 * 2**20
    max_text_chars: int = 20_000  # per text of a `texts` request
    max_queued: int = 4096  # observations waiting at once; more are refused with 503 (retry later)
    body_timeout_s: float = 30.0  # a request body must arrive whole within this; else 408
    head_timeout_s: float = 10.0  # a request head (request line and headers) must arrive within this; else closed
    token: str | None = None  # bearer token guarding every route but /health; None: open
    cache: str | None = None  # folder of the on-disk state cache (`--cache DIR`); None: in memory only
    no_cache: bool = False  # compute every state (`--no-cache`)
    legacy_routes: bool = False  # also POST /get_hidden_state, and /health 503 until ready (module docstring)

    def state_cache(self):
        """The state cache each model (replica) uses (`hsrl.llm.flags.CacheFlags.state_cache`)."""
        from hsrl.llm.flags import CacheFlags

        return CacheFlags(cache=self.cache, no_cache=self.no_cache).state_cache()

    def __post_init__(self):
        for name in ("max_batch", "max_request", "max_body_bytes", "max_text_chars", "max_queued"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            raise InputError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        for name in ("body_timeout_s", "head_timeout_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise InputError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.max_queued < self.max_request:
            raise InputError(f"max_queued ({self.max_queued}) must be at least max_request ({self.max_request})")
        if self.token is not None and not self.token.strip():
            raise InputError("the bearer token is empty; give a non-empty token or none")


@dataclass(frozen=True)
class ServeConfig(SpecFlags):
    """Serve LLM hidden states of Craftax observations over HTTP.

    GET /health (open): ready flag, model, hidden size, spec JSON and hash, env, limits.
    POST /v1/hidden-states: {"observations": {"dtype": "float32", "shape": [B, D], "data": base64} or lists}
    or {"texts": [...]} -> {"hidden": {"dtype": "float32", "shape": [B, H], "data": base64}, "spec_hash": ...}
    (+ "generated_text" when --tokens > 1). With --input image (a vision-language model on a Pixels --env) the
    request carries {"images": {"dtype": "uint8", "shape": [B, H, W, 3], "data": base64}} instead (image+text:
    images plus observations or texts). With --history K each request also carries "history": each observation's
    previous observations in its episode and the actions taken after them. GET /v1/stats: batching statistics.
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
    max_queued: int = field(default=4096, metadata={"help": "observations waiting at once; more are answered 503 (retry later)"})
    body_timeout_s: float = field(default=30.0, metadata={"help": "seconds a request body may take to arrive (else 408)"})
    head_timeout_s: float = field(default=10.0, metadata={"help": "seconds a request head (request line and headers) may take to arrive, from the connection or the previous answer (else 408 and the connection is closed)"})
    token: str | None = field(default=None, metadata={"help": f"bearer token guarding every route but /health (default: ${TOKEN_ENV}; prefer the variable, flags show in process lists)"})
    log_level: str = field(default="info", metadata={"help": "log level: critical, error, warning, info, debug"})
    access_log: bool = field(default=False, metadata={"help": "log every request"})
    ray: str | None = field(default=None, metadata={"help": "deploy with Ray Serve instead of one process: --ray ADDRESS of a cluster, or --ray alone to start a local Ray instance", "nargs": "?", "const": "local", "metavar": "ADDRESS"})
    replicas: int = field(default=1, metadata={"help": "Ray: model replicas (each loads the model once; Ray places them on any node)"})
    gpus_per_replica: float = field(default=0.0, metadata={"help": "Ray: GPUs per replica (0 = CPU replicas)"})
    legacy_routes: bool = field(default=False, metadata={"help": "also answer the routes of the servers other tools ran, so their evaluation clients work unchanged: POST /get_hidden_state with {\"obs\": one pixel frame as nested lists} -> {\"hidden_state\", \"shape\", \"generated_text\"} (image specs: --input image), and GET /health answers 503 until the model is loaded"})

    def check(self) -> None:
        """Every flag, before the model loads or the port is bound."""
        from hsrl.env.catalog import check_env_name, env_info

        check_env_name(self.env)
        if not 0 <= self.port < 65536:
            raise InputError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_batch", "max_request", "max_text_chars", "replicas"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.gpus_per_replica < 0:
            raise InputError("--max-wait-ms and --gpus-per-replica must not be negative")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise InputError(f"--log-level {self.log_level!r}: one of critical, error, warning, info, debug")
        if self.ray is None and (self.replicas != 1 or self.gpus_per_replica != 0):
            raise InputError("--replicas and --gpus-per-replica need --ray")
        self.settings(None)
        self.check_llm(env_info(self.env).variant)
        if self.ray in (None, "local"):  # a remote cluster binds the port on its own head node
            check_port_free(self.host, self.port)

    def spec(self):
        from hsrl.env.catalog import env_info

        return self.extraction_spec(env_info(self.env).variant)

    def settings(self, token: str | None) -> ServerSettings:
        if not (self.max_body_mb > 0 and math.isfinite(self.max_body_mb)):
            raise InputError(f"--max-body-mb must be a positive finite number of MiB, got {self.max_body_mb}")
        for name in ("body_timeout_s", "head_timeout_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise InputError(f"--{name.replace('_', '-')} must be a positive finite number of seconds, "
                                 f"got {getattr(self, name)}")
        return ServerSettings(env=self.env, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms,
                              max_request=self.max_request, max_body_bytes=int(self.max_body_mb * 2**20),
                              max_text_chars=self.max_text_chars, max_queued=self.max_queued,
                              body_timeout_s=self.body_timeout_s, head_timeout_s=self.head_timeout_s, token=token,
                              cache=self.cache, no_cache=self.no_cache, legacy_routes=self.legacy_routes)


def check_port_free(host: str, port: int) -> None:
    """Refuse (InputError) a host that does not resolve or a port another process listens on, before the model
    loads: binding it later would fail only after the load. Port 0 (any free port) always passes."""
    import socket

    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise InputError(f"--host {host!r} does not resolve: {err.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no user
        try:
            probe.bind(address)
        except OSError as err:
            raise InputError(f"cannot bind {host}:{port} ({err.strerror}): another process uses the port, or the "
                             f"address is not this machine's; choose another --port or --host") from None


class RequestError(Exception):
    """A request the server answers with an error status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- request body --------------------------------------------------------------------------------------------------


class ArrayPayload(BaseModel):
    """An array as base64 little-endian bytes in C order, with its dtype and shape."""

    model_config = ConfigDict(extra="forbid", strict=True)
    dtype: str
    shape: list[int]
    data: str


def _observations_kind(value) -> str:
    return "array" if isinstance(value, dict) else "lists"


Observations = Annotated[
    Union[Annotated[ArrayPayload, Tag("array")], Annotated[list[list[float]], Tag("lists")]],
    Discriminator(_observations_kind),
]


HistoryObservations = Annotated[
    Union[Annotated[ArrayPayload, Tag("array")], Annotated[list[list[list[float]]], Tag("lists")]],
    Discriminator(_observations_kind),
]


class HistoryPayload(BaseModel):
    """Each observation's previous observations in its episode (oldest first) and the actions taken after them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    actions: list[list[int]]
    observations: HistoryObservations | None = None
    texts: list[list[str]] | None = None


class HiddenStatesRequest(BaseModel):
    """Body of POST /v1/hidden-states: exactly one of `observations` and `texts`, and/or `images` (by the spec),
    plus `history` for a spec with history."""

    model_config = ConfigDict(extra="forbid", strict=True)
    observations: Observations | None = None
    texts: list[str] | None = None
    images: ArrayPayload | None = None
    history: HistoryPayload | None = None


@dataclass
class Inputs:
    """Observations as the extractor takes them: text observations and/or (B, H, W, 3) uint8 images, and for a
    spec with history each one's previous (text, action) pairs."""

    texts: list[str] | None
    images: np.ndarray | None = None
    history: list[list[tuple[str, int]]] | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.images)

    def slice(self, start: int, stop: int) -> "Inputs":
        return Inputs(None if self.texts is None else self.texts[start:stop],
                      None if self.images is None else self.images[start:stop],
                      None if self.history is None else self.history[start:stop])

    @staticmethod
    def join(parts: list["Inputs"]) -> "Inputs":
        texts = None if parts[0].texts is None else [t for p in parts for t in p.texts]
        images = None if parts[0].images is None else np.concatenate([p.images for p in parts])
        history = None if parts[0].history is None else [h for p in parts for h in p.history]
        return Inputs(texts, images, history)


_UNION_TAGS = {"array", "lists"}


def _location(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _UNION_TAGS:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: ValidationError, limit: int = 3) -> str:
    errors = err.errors(include_url=False, include_input=False)
    parts = [f"{_location(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


class Preparer:
    """Body bytes -> validated `Inputs` (symbolic observations rendered with `render_text`; images as uint8).

    input: what the spec reads ('text', 'image', 'image+text'); image_shape: the env's (H, W, 3) frame (Pixels envs);
    history: the spec's K (previous observations per prompt); num_actions: the env's action count.
    """

    def __init__(self, settings: ServerSettings, variant: str, observation_length: int, input: str = "text",
                 image_shape: tuple[int, ...] | None = None, history: int = 0, num_actions: int | None = None):
        self.settings = settings
        self.variant = variant
        self.length = observation_length
        self.input = input
        self.image_shape = image_shape
        self.history = history
        self.num_actions = num_actions

    def __call__(self, body: bytes) -> Inputs:
        try:
            request = HiddenStatesRequest.model_validate_json(body)
        except ValidationError as err:
            if any(e["type"] == "json_invalid" for e in err.errors()):
                raise RequestError(400, f"malformed JSON: {_describe(err)}") from None
            raise RequestError(422, _describe(err)) from None
        has_text = request.observations is not None or request.texts is not None
        if self.input == "text":
            if request.images is not None:
                raise RequestError(422, "images: this server's spec has input='text' and reads no images")
        elif request.images is None:
            raise RequestError(422, f"images: missing; this server's spec has input={self.input!r} and reads images")
        if self.input == "image":
            if has_text:
                raise RequestError(422, "this server's spec has input='image' and reads no text: send only 'images'")
            return Inputs(None, self._images(request.images))
        if (request.observations is None) == (request.texts is None):
            with_images = " (with 'images')" if self.input == "image+text" else ""
            raise RequestError(422, f"give exactly one of 'observations' (symbolic vectors) and 'texts'{with_images}")
        if request.texts is not None:
            texts = self._texts(request.texts)
        else:
            texts = self._render(self._observations(request.observations))
        if self.input == "text":
            return Inputs(texts, history=self._history(request, len(texts)))
        images = self._images(request.images)
        if len(images) != len(texts):
            raise RequestError(422, f"images: {len(images)} images for {len(texts)} text observations")
        return Inputs(texts, images)

    def _history(self, request: HiddenStatesRequest, n: int) -> list[list[tuple[str, int]]] | None:
        """Each observation's previous (text, action) pairs from the request's `history` (None for a spec without
        history that got none)."""
        given = request.history
        k = self.history
        if given is None:
            if k:
                raise RequestError(422, f"history: missing; this server's prompts show the {k} previous observations "
                                        f"of the episode: give {{\"actions\": [[...] per observation], "
                                        f"\"{'texts' if request.texts is not None else 'observations'}\": ...}} "
                                        f"([] at an episode's first step)")
            return None
        actions = given.actions
        if len(actions) != n:
            raise RequestError(422, f"history.actions: {len(actions)} lists for {n} observations; give one each")
        for b, row in enumerate(actions):
            if len(row) > k:
                raise RequestError(422, f"history.actions[{b}]: {len(row)} previous steps, more than the {k} this "
                                        f"server's spec shows (history {k})")
            bad = [a for a in row if not 0 <= a < self.num_actions]
            if bad:
                raise RequestError(422, f"history.actions[{b}]: action {bad[0]} is not one of the env's "
                                        f"{self.num_actions} actions")
        counts = [len(row) for row in actions]
        if not any(counts):
            if given.observations is not None or given.texts is not None:
                self._history_kind(request, given)
            return [[] for _ in range(n)]
        self._history_kind(request, given)
        if given.texts is not None:
            texts = given.texts
            if len(texts) != n or any(len(t) != c for t, c in zip(texts, counts)):
                raise RequestError(422, "history.texts: give each observation as many previous texts as "
                                        "history.actions has actions")
            flat = self._texts([t for row in texts for t in row], what="history.texts", limit=False)
        else:
            flat = self._render(self._history_observations(given.observations, counts), "history.observations")
        out, start = [], 0
        for c, row in zip(counts, actions):
            out.append(list(zip(flat[start : start + c], row)))
            start += c
        return out

    def _history_kind(self, request: HiddenStatesRequest, given: HistoryPayload) -> None:
        want = "texts" if request.texts is not None else "observations"
        if (given.texts is not None) == (given.observations is not None) or getattr(given, want) is None:
            raise RequestError(422, f"history: give the previous observations as '{want}', as the request gives "
                                    f"the current ones")

    def _history_observations(self, obs, counts: list[int]) -> np.ndarray:
        """The (sum(counts), D) previous symbolic observations: rows [:counts[b]] of each observation's."""
        D, n = self.length, len(counts)
        if isinstance(obs, ArrayPayload):
            shape = obs.shape
            if len(shape) != 3 or shape[0] != n or shape[1] < max(counts) or shape[2] != D:
                raise RequestError(422, f"history.observations.shape: expected [{n}, M >= {max(counts)}, {D}] for "
                                        f"{self.settings.env}, got {shape}")
            try:
                x = decode_array(obs.dtype, shape, obs.data, what="history.observations")
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            rows = np.concatenate([x[b, :c] for b, c in enumerate(counts)])
        else:
            if len(obs) != n or any(len(o) != c for o, c in zip(obs, counts)):
                raise RequestError(422, "history.observations: give each observation as many previous observations "
                                        "as history.actions has actions")
            flat = [row for rows in obs for row in rows]
            bad = [i for i, row in enumerate(flat) if len(row) != D]
            if bad:
                raise RequestError(422, f"history.observations: a row of length {len(flat[bad[0]])}, expected {D} "
                                        f"for {self.settings.env}")
            rows = np.array(flat, dtype=np.float64).reshape(-1, D)
        return self._finite(rows, "history.observations")

    def check_legacy(self) -> None:
        """422 when the spec does not read images alone: POST /get_hidden_state carries one frame and nothing else."""
        if self.input != "image":
            raise RequestError(422, f"this server's spec has input={self.input!r}: {LEGACY_HIDDEN_STATE_PATH} carries "
                                    f"one pixel frame and nothing else, which only a spec that reads images alone can "
                                    f"serve (hsrl serve --input image, a vision-language model on a Pixels env); send "
                                    f"observations or texts to POST {HIDDEN_STATES_PATH}")

    def legacy(self, body: bytes) -> Inputs:
        """The body of POST /get_hidden_state, ``{"obs": one (H, W, 3) frame as nested lists of floats in [0, 1]}``,
        as one uint8 image (`check_legacy` first)."""
        import json

        from hsrl.pixels import pixels_to_uint8

        self.check_legacy()
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"malformed JSON: {err}") from None
        if not isinstance(request, dict) or set(request) != {"obs"}:
            got = sorted(request) if isinstance(request, dict) else type(request).__name__
            raise RequestError(422, f"expected a JSON object with exactly the field 'obs' (one frame), got {got}")
        expected = list(self.image_shape)
        try:
            frame = np.asarray(request["obs"], dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestError(422, f"obs: expected one frame as nested lists of numbers, shape {expected}") from None
        if list(frame.shape) != expected:
            raise RequestError(422, f"obs: shape {list(frame.shape)}; expected one {self.settings.env} frame of shape "
                                    f"{expected} (height, width, RGB) as nested lists")
        try:
            image = pixels_to_uint8(frame)
        except ValueError as err:
            raise RequestError(422, f"obs: {err}") from None
        return Inputs(None, image[None])

    def _images(self, payload: ArrayPayload) -> np.ndarray:
        shape, expected = payload.shape, list(self.image_shape)
        if len(shape) != 4 or shape[1:] != expected:
            raise RequestError(422, f"images.shape: expected [batch, {', '.join(map(str, expected))}] for "
                                    f"{self.settings.env}, got {shape}")
        self._count(shape[0], "images")
        try:
            return decode_array(payload.dtype, shape, payload.data, what="images", dtypes=IMAGE_DTYPES)
        except ValueError as err:
            raise RequestError(422, str(err)) from None

    def _count(self, n: int, what: str) -> None:
        if n == 0:
            raise RequestError(422, f"{what}: empty; give at least one")
        if n > self.settings.max_request:
            raise RequestError(422, f"{what}: {n} in one request, more than the maximum of {self.settings.max_request}; "
                                    f"split the batch")

    def _texts(self, texts: list[str], what: str = "texts", limit: bool = True) -> list[str]:
        if limit:
            self._count(len(texts), what)
        for i, text in enumerate(texts):
            if not text.strip():
                raise RequestError(422, f"{what}[{i}]: empty text")
            if len(text) > self.settings.max_text_chars:
                raise RequestError(422, f"{what}[{i}]: {len(text)} characters, more than the maximum of "
                                        f"{self.settings.max_text_chars}")
        return texts

    def _observations(self, obs) -> np.ndarray:
        D = self.length
        if isinstance(obs, ArrayPayload):
            shape = obs.shape
            if len(shape) != 2 or shape[1] != D:
                raise RequestError(422, f"observations.shape: expected [batch, {D}] for {self.settings.env}, got {shape}")
            self._count(shape[0], "observations")
            try:
                x = decode_array(obs.dtype, shape, obs.data, what="observations")
            except ValueError as err:
                raise RequestError(422, str(err)) from None
        else:
            self._count(len(obs), "observations")
            for b, row in enumerate(obs):
                if len(row) != D:
                    raise RequestError(422, f"observations[{b}]: length {len(row)}, expected {D} for {self.settings.env}")
            x = np.array(obs, dtype=np.float64)
        return self._finite(x, "observations")

    @staticmethod
    def _finite(x: np.ndarray, what: str) -> np.ndarray:
        """(N, D) float32, refused (422, naming the first bad value) where a value is not finite in float32."""
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        bad = ~np.isfinite(x32)
        if bad.any():
            b, i = np.argwhere(bad)[0]
            value = float(x[b, i])
            why = "is not finite" if not math.isfinite(value) else "overflows float32"
            raise RequestError(422, f"{what}[{b}][{i}]: value {value:g} {why} "
                                    f"({int(bad.sum())} such values in the request)")
        return x32

    def _render(self, x: np.ndarray, what: str = "observations") -> list[str]:
        from hsrl.text import render_text

        try:
            return render_text(x, self.variant)
        except ValueError as err:
            raise RequestError(422, f"{what}: not a {self.settings.env} observation: {err}") from None


# ---- dynamic batching ----------------------------------------------------------------------------------------------


@dataclass
class BatchStats:
    """What the batcher has run. Touched only on the event loop."""

    batches: int = 0
    requests: int = 0
    observations: int = 0
    max_batch_observations: int = 0
    max_batch_requests: int = 0
    extract_seconds: float = 0.0
    batch_observations: collections.Counter = field(default_factory=collections.Counter)
    batch_requests: collections.Counter = field(default_factory=collections.Counter)
    responses: collections.Counter = field(default_factory=collections.Counter)  # status -> count

    def record(self, observations: int, requests: int, seconds: float) -> None:
        """One batch run: its observations and the requests (or slices of requests) in it."""
        self.batches += 1
        self.observations += observations
        self.max_batch_observations = max(self.max_batch_observations, observations)
        self.max_batch_requests = max(self.max_batch_requests, requests)
        self.extract_seconds += seconds
        self.batch_observations[observations] += 1
        self.batch_requests[requests] += 1

    def to_dict(self) -> dict:
        def hist(c):
            return {str(k): c[k] for k in sorted(c)}

        return {
            "batches": self.batches, "requests": self.requests, "observations": self.observations,
            "max_batch_observations": self.max_batch_observations, "max_batch_requests": self.max_batch_requests,
            "mean_batch_observations": self.observations / self.batches if self.batches else 0.0,
            "extract_seconds": self.extract_seconds,
            "batch_observations_histogram": hist(self.batch_observations),
            "batch_requests_histogram": hist(self.batch_requests),
            "responses": hist(self.responses),
        }


@dataclass
class _Waiting:
    """One request in the queue: its inputs, how many rows were handed out, and the rows answered so far."""

    inputs: Inputs
    future: asyncio.Future
    arrived: float
    taken: int = 0  # rows handed to batches so far
    hidden: list = field(default_factory=list)  # answered slices, in order
    generated: list = field(default_factory=list)

    def answer(self, hidden: np.ndarray, generated: list[str]) -> None:
        """Record one slice's rows; the request is answered once every row is."""
        self.hidden.append(hidden)
        self.generated.extend(generated)
        if sum(len(h) for h in self.hidden) == len(self.inputs) and not self.future.done():
            self.future.set_result((np.concatenate(self.hidden), self.generated))


@dataclass
class _Slice:
    """Rows [start, stop) of one waiting request, run as part of a batch."""

    waiting: _Waiting
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class Batcher:
    """Queues requests and runs them together on one model thread.

    `run(inputs) -> (hidden (B, H) float32, generated texts)` is called on the model thread only.

    Fair by slices: a batch holds at most `max_batch` rows; a request larger than what is left of a batch gives
    only a slice, and the next batch serves first the requests that have had the fewest rows so far. So a request
    that arrives behind large ones waits for at most the batch that is running, not for the large requests. Slices of one request run in order, and rows
    are independent of their batch (the extractors' batch independence), so slicing never changes an answer.
    At most `max_queued` rows wait at once; beyond that a request is refused with 503 (retry later).
    """

    def __init__(self, run: Callable, executor: ThreadPoolExecutor, max_batch: int, max_wait_s: float,
                 max_queued: int | None = None):
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.stats = BatchStats()
        self._pending: list[_Waiting] = []
        self._pending_count = 0  # rows not yet handed to a batch
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="hsrl-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for waiting in self._pending:
            if not waiting.future.done():
                waiting.future.set_exception(RequestError(503, "the server is shutting down"))

    async def submit(self, inputs: Inputs):
        """(hidden (len(inputs), H), generated texts) for these inputs, run together with other waiting requests."""
        if self.max_queued is not None and self._pending_count + len(inputs) > self.max_queued:
            raise busy_error(self._pending_count, self.max_queued)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(inputs, loop.create_future(), loop.time())
        self.stats.requests += 1
        self._pending.append(waiting)
        self._pending_count += len(inputs)
        self._wakeup.set()
        return await waiting.future

    def _drop(self, waiting: _Waiting) -> None:
        self._pending.remove(waiting)
        self._pending_count -= len(waiting.inputs) - waiting.taken

    def _take(self) -> list[_Slice]:
        """The next batch: requests with the fewest rows served so far first (arrival order among equals), so a
        request that has had nothing yet goes before the rest of a large one that has had batches already."""
        batch, size = [], 0
        for head in sorted(self._pending, key=lambda w: w.taken):
            if size == self.max_batch:
                break
            if head.future.done():  # the client went away, or an earlier slice failed
                self._drop(head)
                continue
            n = min(len(head.inputs) - head.taken, self.max_batch - size)
            batch.append(_Slice(head, head.taken, head.taken + n))
            head.taken += n
            self._pending_count -= n
            size += n
            if head.taken == len(head.inputs):
                self._pending.remove(head)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_count < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                try:
                    await self._execute(batch)
                except Exception:  # never let the batcher die; _execute answers every request itself
                    log.exception("batcher error")
                    for part in batch:
                        _fail(part.waiting, RequestError(500, "internal error in the batcher"))

    async def _execute(self, batch: list[_Slice]) -> None:
        loop = asyncio.get_running_loop()
        inputs = Inputs.join([part.waiting.inputs.slice(part.start, part.stop) for part in batch])
        n_inputs = len(inputs)
        start = time.perf_counter()
        try:
            hidden, generated = await loop.run_in_executor(self.executor, self.run, inputs)
        except Exception as err:
            if len(batch) > 1:  # find the request that failed: rerun each alone
                log.info("a batch of %d requests failed (%s); rerunning them one by one", len(batch), err)
                for part in batch:
                    await self._execute([part])
                return
            _fail(batch[0].waiting, err)
            return
        self.stats.record(n_inputs, len(batch), time.perf_counter() - start)
        if hidden.shape[0] != n_inputs:  # a backend bug; never hand out misaligned rows
            for part in batch:
                _fail(part.waiting, RuntimeError(f"the extractor returned {hidden.shape[0]} rows for {n_inputs} inputs"))
            return
        offset = 0
        for part in batch:
            n = len(part)
            if not part.waiting.future.done():
                part.waiting.answer(hidden[offset : offset + n], generated[offset : offset + n])
            offset += n


def as_request_error(err: Exception) -> RequestError:
    """How a failed extraction is answered: 422 for an input the model rejects (ValueError), 500 otherwise."""
    if isinstance(err, RequestError):
        return err
    if isinstance(err, ValueError):
        return RequestError(422, f"the model rejected the input: {err}")
    log.error("extraction failed", exc_info=err)
    return RequestError(500, f"extraction failed: {type(err).__name__}: {err}")


def busy_error(queued: int, max_queued: int) -> RequestError:
    return RequestError(503, f"the server is busy ({queued} observations queued, at most {max_queued}); retry later")


def _fail(waiting: _Waiting, err: Exception) -> None:
    if not waiting.future.done():
        waiting.future.set_exception(as_request_error(err))


# ---- the app -------------------------------------------------------------------------------------------------------


class ModelState:
    """The extractor and its loading status ('loading', 'ready', 'failed'), shared by the routes."""

    def __init__(self, extractor=None):
        self.extractor = extractor
        self.status = "ready" if extractor is not None else "loading"
        self.error: str | None = None

    def run(self, inputs: Inputs):
        if inputs.images is not None:
            result = self.extractor.extract(inputs.texts, images=inputs.images)
        elif inputs.history is not None:
            result = self.extractor.extract(inputs.texts, history=inputs.history)
        else:
            result = self.extractor.extract(inputs.texts)
        hidden = np.asarray(result.hidden_state, dtype=np.float32)
        if not np.isfinite(hidden).all():
            raise RuntimeError("the model returned non-finite hidden states")
        return hidden, list(result.generated_text)

    def check(self, inputs: Inputs) -> None:
        """Refuse (422) text whose prompt does not fit the model, off the model thread (tokenizer only), so an
        oversized request never holds the model and the requests behind it. Image specs have the env's fixed frame
        size, so their length is known in advance."""
        if inputs.images is not None:
            return
        try:
            if inputs.history is None:
                self.extractor.check_prompt_lengths(inputs.texts)
            else:
                self.extractor.check_prompt_lengths(inputs.texts, history=inputs.history)
        except ValueError as err:
            raise RequestError(422, f"the model rejected the input: {err}") from None

    def require_ready(self) -> None:
        if self.status == "loading":
            raise RequestError(503, "the model is still loading; poll /health until ready")
        if self.status == "failed":
            raise RequestError(503, f"the model failed to load: {self.error}")


class _BearerGuard:
    """ASGI middleware: every HTTP route but the open ones needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
                problem = "missing bearer token" if not header else "wrong bearer token"
                response = JSONResponse({"detail": f"{problem}: send 'Authorization: Bearer <token>'"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _CountResponses:
    """ASGI middleware: counts answers by HTTP status (an exception counts as 500)."""

    def __init__(self, app, counter: collections.Counter):
        self.app = app
        self.counter = counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counter[message["status"]] += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            self.counter[500] += 1
            raise


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused (413) past `limit` bytes and (408) when it has not arrived within `timeout_s`,
    so a client that never finishes its body cannot hold a connection and its memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body") from None
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes came)") from None
    return b"".join(chunks)


def _check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        shown = content_type or "none"
        raise RequestError(415, f"content type {shown!r}: send the body as 'application/json'")


class Endpoint:
    """What `spec` served for `settings.env` accepts and answers, shared by `hsrl serve` and `hsrl serve --ray`:
    the checks of spec against env, request validation (`prepare`), the /health fields and the reply."""

    def __init__(self, spec, settings: ServerSettings):
        from hsrl.env.catalog import env_info

        info = env_info(settings.env)
        if spec.variant != info.variant:
            raise ValueError(f"spec variant {spec.variant!r} does not match env {settings.env} (variant {info.variant!r})")
        if len(spec.layers) != 1:
            raise ValueError(f"the server extracts one layer; the spec asks for {spec.layers}")
        if spec.reads_images and not info.pixels:
            raise ValueError(f"spec.input={spec.input!r} reads images, but {settings.env} gives symbolic observations; "
                             f"serve a Pixels env (--env {settings.env.replace('Symbolic', 'Pixels')})")
        from hsrl.llm.spec import check_live_text

        check_live_text(spec, "the server")  # it renders the observations it is sent with hsrl.text
        self.spec = spec
        self.settings = settings
        self.variant = info.variant
        self.observation_length = int(info.symbolic_obs_shape[0])
        self.image_shape = tuple(info.obs_shape) if info.pixels else None
        self.prepare = Preparer(settings, info.variant, self.observation_length, spec.input, self.image_shape,
                                spec.history, int(info.num_actions))

    def check_extractor(self, extractor) -> None:
        """Refuse an extractor made for another spec (fields the backend resolves aside)."""
        resolved = ("template", "template_version", "dtype")  # filled in by the backend
        differ = spec_differences(extractor.spec, self.spec, ignore=resolved)
        if differ:
            raise InputError(f"the extractor given was made for another spec (differs in {', '.join(differ)})")

    def health(self, model: "ModelState") -> dict:
        spec, settings = self.spec, self.settings
        ex = model.extractor if model.status == "ready" else None
        return {
            "ready": ex is not None, "status": model.status, "error": model.error,
            "model": spec.model, "hidden_size": ex.hidden_size if ex else None,
            "spec": ex.spec.to_dict() if ex else None, "spec_json": ex.spec.to_json() if ex else None,
            "spec_hash": ex.spec.hash if ex else None,
            "env": settings.env, "variant": self.variant, "observation_length": self.observation_length,
            "input": spec.input, "image_shape": list(self.image_shape) if self.image_shape else None,
            "generates": spec.generates, "history": spec.history, "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
            "max_request": settings.max_request, "max_body_bytes": settings.max_body_bytes,
            "max_text_chars": settings.max_text_chars, "max_queued": settings.max_queued,
            "body_timeout_s": settings.body_timeout_s, "head_timeout_s": settings.head_timeout_s, "auth": settings.token is not None,
        }

    def legacy_reply(self, hidden: np.ndarray, generated: list[str]) -> dict:
        """The answer of POST /get_hidden_state: one vector as a list, its shape, the generated text ('' when the
        spec does not generate)."""
        vector = np.asarray(hidden[0], dtype=np.float32)
        return {"hidden_state": vector.tolist(), "shape": list(vector.shape),
                "generated_text": generated[0] if self.spec.generates else ""}

    def reply(self, model: "ModelState", hidden: np.ndarray, generated: list[str]) -> dict:
        reply = {"hidden": encode_array(hidden), "spec_hash": model.extractor.spec.hash}
        if self.spec.generates:
            reply["generated_text"] = generated
        return reply


def build_app(endpoint: Endpoint, model: "ModelState", submit: Callable, stats: BatchStats, lifespan=None) -> FastAPI:
    """The routes, auth and error answers of the server; `submit(inputs)` is awaited for (hidden, generated texts)
    and decides how requests are batched (our `Batcher`, or Ray Serve's `@serve.batch`)."""
    settings = endpoint.settings
    app = FastAPI(title="hsrl hidden-state server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.model = model
    app.state.settings = settings
    if settings.token is not None:
        app.add_middleware(_BearerGuard, token=settings.token)

    app.add_middleware(_CountResponses, counter=stats.responses)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        body = endpoint.health(model)
        status = 503 if settings.legacy_routes and not body["ready"] else 200  # legacy clients poll for a 200
        return JSONResponse(body, status_code=status)

    @app.get(STATS_PATH)
    async def stats_route() -> dict:
        cache = getattr(model.extractor, "cache", None)
        return {**stats.to_dict(), "cache": None if cache is None else {**cache.counts(), "hit_rate": cache.hit_rate}}

    request_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": HiddenStatesRequest.model_json_schema()}}}}

    @app.post(HIDDEN_STATES_PATH, openapi_extra=request_schema)
    async def hidden_states(request: Request) -> JSONResponse:
        model.require_ready()
        _check_content_type(request)
        body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        inputs = await run_in_threadpool(endpoint.prepare, body)
        await run_in_threadpool(model.check, inputs)
        hidden, generated = await submit(inputs)
        return JSONResponse(endpoint.reply(model, hidden, generated))

    if settings.legacy_routes:
        @app.post(LEGACY_HIDDEN_STATE_PATH)
        async def legacy_hidden_state(request: Request) -> JSONResponse:
            endpoint.prepare.check_legacy()  # a fact of the server, whatever the body or the loading
            model.require_ready()
            _check_content_type(request)
            body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            inputs = await run_in_threadpool(endpoint.prepare.legacy, body)
            hidden, generated = await submit(inputs)
            return JSONResponse(endpoint.legacy_reply(hidden, generated))

    return app


def create_app(spec, settings: ServerSettings, *, extractor=None, device: str | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The server for `spec` (an ExtractionSpec). The model loads in the background after startup, unless an
    `extractor` (already loaded, for this spec) is given; `on_load_error` is called if loading fails."""
    endpoint = Endpoint(spec, settings)
    if extractor is not None:
        endpoint.check_extractor(extractor)
    model = ModelState(extractor)
    executor = ThreadPoolExecutor(1, thread_name_prefix="hsrl-model")
    batcher = Batcher(model.run, executor, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queued)

    def load() -> None:  # on the model thread
        from hsrl.llm import make_extractor

        try:
            model.extractor = make_extractor(spec, cache=settings.state_cache(), device=device,
                                             batch_size=settings.max_batch)
            model.status = "ready"
            log.info("model ready: %s (spec %s)", model.extractor.spec.model, model.extractor.spec.hash)
        except Exception as err:  # reported in /health and by on_load_error
            model.error = f"{type(err).__name__}: {err}"
            model.status = "failed"
            log.error("the model failed to load: %s", model.error)
            if on_load_error is not None:
                on_load_error(err)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        if model.extractor is None:
            asyncio.get_running_loop().run_in_executor(executor, load)
        yield
        await batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = build_app(endpoint, model, batcher.submit, batcher.stats, lifespan)
    app.state.batcher = batcher
    return app


_HEAD_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                       b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def head_deadline_protocol(timeout_s: float, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools where installed, else h11) with a deadline on request heads.

    uvicorn bounds only the idle time before a request's first byte (`timeout_keep_alive`, cancelled by any
    data), so a client that sends its request line and headers a byte at a time holds a connection forever. Here
    a timer starts when a connection opens and again after each answer on a kept-alive connection; unless the
    whole head (request line and headers) has arrived when it fires, the client gets 408 and the connection is
    closed. The head counts as arrived once uvicorn has made the request's cycle (both parsers do so at the end
    of the head), so the body is left to `body_timeout_s`."""
    if base is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        except ImportError:  # httptools not installed: uvicorn's pure-Python parser
            from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class HeadDeadlineProtocol(base):
        _head_timer = None
        _head_cycle = None  # the cycle when the timer was armed: a new one means the head arrived

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(timeout_s, self._head_deadline_passed)

        def _disarm_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline_passed(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._head_cycle:
                return
            log.info("closing a connection whose request head did not arrive within %g s", timeout_s)
            message = f"the request head did not arrive within {timeout_s:g} s".encode()
            self.transport.write(_HEAD_TIMEOUT_REPLY % (len(message), message))
            self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._head_cycle:
                self._disarm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request on this connection
                self._arm_head_deadline()

        def connection_lost(self, exc) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

    return HeadDeadlineProtocol


def uvicorn_config(app: FastAPI, settings: ServerSettings, **kwargs):
    """uvicorn's config for `app` with the request-head deadline of `settings` (`head_deadline_protocol`)."""
    import uvicorn

    return uvicorn.Config(app, http=head_deadline_protocol(settings.head_timeout_s), lifespan="on", **kwargs)


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Run `app` with uvicorn in a daemon thread; returns (server, thread, port). Stop with `server.should_exit = True`."""
    import uvicorn

    config = uvicorn_config(app, app.state.settings, host=host, port=port, log_level=log_level)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="hsrl-serve")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, bound
