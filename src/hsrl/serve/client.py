"""Client of the hidden-state server (`hsrl serve`): observations or texts in, (B, H) float32 hidden states out.

    from hsrl.serve import HiddenStateClient
    with HiddenStateClient("http://127.0.0.1:8000") as client:   # token: argument or $HSRL_SERVE_TOKEN
        client.wait_ready()
        client.check_spec(checkpoint_spec_json)       # ValueError naming the differing fields
        hidden = client.hidden_states(observations=obs)          # (B, H) float32
        hidden = client.hidden_states(images=frames)              # input='image' servers: (B, H, W, 3) frames
        result = client.extract(texts=["..."])                   # .hidden_state, .generated_text, .spec_hash
        hidden = client.hidden_states(observations=obs, history=[[(earlier_obs, action), ...], ...])  # --history K

`check_reachable()` asks /health once with a short timeout and fails at once when nothing answers (eval calls it
before any work). Connection errors, timeouts and 5xx answers are retried with exponential backoff (the request is a
pure function of its body, so retrying is safe), each retry reported on stderr as it happens; 4xx answers are not. When it cannot get an answer the client raises
`ServerError`: it never returns zeros or a partial batch. Batches larger than the server's per-request maximum
are split into several requests and joined.
"""

import os
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np

from hsrl.errors import UserError
from hsrl.pixels import pixels_to_uint8
from hsrl.serve.wire import HEALTH_PATH, HIDDEN_STATES_PATH, STATS_PATH, TOKEN_ENV, decode_array, encode_array


class ServerError(UserError, RuntimeError):
    """The server could not be reached or answered with an error. `status`: the HTTP status (None: no answer).
    A `UserError`: the command line prints it as one line (the message names the URL and what happened)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ServerResult:
    """One `extract` answer, named like `hsrl.llm.ExtractionResult`'s fields."""

    hidden_state: np.ndarray  # (B, H) float32
    generated_text: list[str]  # per sample; '' in prompt-only mode
    spec_hash: str


class HiddenStateClient:
    """Talks to one hidden-state server.

    url: base URL, e.g. http://127.0.0.1:8000. token: bearer token (default: $HSRL_SERVE_TOKEN, if set).
    timeout: seconds per HTTP request. retries: extra attempts after a connection error, timeout or 5xx.
    backoff: first wait between attempts in seconds, doubled each time up to max_backoff.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.25, max_backoff: float = 5.0):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._max_request: int | None = None
        self._expected_hash: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HiddenStateClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport -----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """The JSON answer of one request, retried on connection errors, timeouts and 5xx; ServerError otherwise."""
        where = f"{method} {self.url}{path}"
        last: ServerError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                print(f"hsrl: {last}; retry {attempt}/{self.retries} in {wait:.2g} s", file=sys.stderr, flush=True)
                time.sleep(wait)
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                last = ServerError(f"{where}: {type(err).__name__}: {err}")
                continue
            if response.status_code == 503 and path == HEALTH_PATH and _is_health(response):
                return response.json()  # `hsrl serve --legacy-routes` while the model loads: not ready yet
            if response.status_code >= 400:
                error = ServerError(f"{where} answered {response.status_code}: {_detail(response)}",
                                    response.status_code)
                if response.status_code < 500:
                    raise error
                last = error
                continue
            try:
                return response.json()
            except ValueError as err:
                raise ServerError(f"{where}: the answer is not JSON ({err})", response.status_code) from None
        raise ServerError(f"{last} (gave up after {self.retries + 1} attempts)", last.status)

    # ---- routes --------------------------------------------------------------------------------------------------

    def check_reachable(self, timeout: float = 3.0) -> dict:
        """The server's /health from one request with a short timeout, no retry; ServerError at once when nothing
        answers there (or the answer is not a health)."""
        try:
            response = self._http.get(HEALTH_PATH, timeout=timeout)
        except httpx.TransportError as err:
            raise ServerError(f"no hidden-state server answers at {self.url} (GET {HEALTH_PATH}, {timeout:.0f} s: "
                              f"{type(err).__name__}: {err}); start one with `hsrl serve` or check --server") from None
        if response.status_code != 200 and not (response.status_code == 503 and _is_health(response)):
            raise ServerError(f"{self.url}{HEALTH_PATH} answered {response.status_code}: {_detail(response)} (is "
                              f"this an `hsrl serve` server?)", response.status_code)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{self.url}{HEALTH_PATH} did not answer JSON: not an `hsrl serve` server") from None

    def health(self) -> dict:
        """The server's /health: ready, model, hidden_size, spec_json, spec_hash, env, limits (also while a server with
        --legacy-routes answers it 503, loading: `ready` is false then)."""
        return self._call("GET", HEALTH_PATH)

    def stats(self) -> dict:
        """The server's batching statistics (/v1/stats)."""
        return self._call("GET", STATS_PATH)

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.5) -> dict:
        """Poll /health until the model is loaded; returns the health. ServerError if loading failed or timed out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
            except ServerError as err:
                if err.status is not None or time.monotonic() > deadline:
                    raise
                health = None
            if health is not None:
                if health.get("ready"):
                    self._max_request = int(health["max_request"])
                    return health
                if health.get("status") == "failed":
                    raise ServerError(f"the server's model failed to load: {health.get('error')}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.url} was not ready after {timeout:.0f} s")
            time.sleep(poll)

    def spec(self, wait: float = 300.0):
        """The server's resolved ExtractionSpec, waiting up to `wait` seconds for its model to load."""
        from hsrl.llm.spec import ExtractionSpec

        health = self.wait_ready(timeout=wait)
        return ExtractionSpec.from_json(health["spec_json"])

    def check_spec(self, expected, allow: bool = False, wait: float = 300.0) -> list[str]:
        """Compare the server's spec with `expected` (ExtractionSpec, its JSON or dict).

        Waits up to `wait` seconds for the model to load. Raises ValueError naming the differing fields (with
        allow=True only warns); returns them. Afterwards every answer's spec_hash is checked against the server's,
        so a server restarted with another spec is noticed.
        """
        from hsrl.llm.spec import ExtractionSpec, check_spec

        if isinstance(expected, str):
            expected = ExtractionSpec.from_json(expected)
        elif isinstance(expected, dict):
            expected = ExtractionSpec.from_dict(expected)
        served = self.spec(wait=wait)
        differ = check_spec(served, expected, allow=allow, what=f"the server {self.url} extracts by another spec")
        self._expected_hash = served.hash
        return differ

    def extract(self, observations=None, texts=None, images=None, history=None) -> ServerResult:
        """Hidden states for symbolic observations ((B, D) or (D,) array of the server's env) or text observations,
        and/or images ((B, H, W, 3) or (H, W, 3), float in [0, 1] or uint8; sent as uint8) for servers whose spec
        reads images (input 'image': images alone; 'image+text': images plus observations or texts).
        history (servers whose spec has history K > 0): per observation, its previous observations in the episode
        as (observation, action) pairs, oldest first, at most K ([] at an episode's first step); each observation
        a (D,) vector with `observations`, a text with `texts`."""
        if (observations is not None and texts is not None) or (observations is texts is images is None):
            raise ValueError("give exactly one of observations and texts, or images (with one of them for image+text)")
        n = None
        if images is not None:
            frames = pixels_to_uint8(images)
            if frames.ndim == 3:
                frames = frames[None]
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"images: expected shape (batch, height, width, 3), got {frames.shape}")
            n = len(frames)
        if observations is not None:
            x = np.asarray(observations)
            if x.ndim == 1:
                x = x[None]
            if x.ndim != 2:
                raise ValueError(f"observations: expected shape (batch, length), got {x.shape}")
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
                raise ValueError(f"observations: expected numbers, got dtype {x.dtype}")
            x = x.astype(np.float32)
            count = len(x)
        elif texts is not None:
            if isinstance(texts, str):
                raise ValueError("texts: give a list of strings, not one string")
            texts = list(texts)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("texts: every item must be a string")
            count = len(texts)
        else:
            count = n
        if n is not None and count != n:
            raise ValueError(f"{n} images for {count} text observations")
        n = count
        if n == 0:
            raise ValueError("no observations to extract")
        if history is not None:
            history = [list(h) for h in history]
            if len(history) != n:
                raise ValueError(f"history for {len(history)} observations, but {n} observations")
        step = self._request_limit()
        parts = []
        for start in range(0, n, step):
            body = {}
            if observations is not None:
                body["observations"] = encode_array(x[start : start + step])
            elif texts is not None:
                body["texts"] = texts[start : start + step]
            if images is not None:
                body["images"] = encode_array(frames[start : start + step], "uint8")
            if history is not None:
                body["history"] = _history_body(history[start : start + step], observations is not None,
                                                None if observations is None else x.shape[1])
            parts.append(self._post(body, min(step, n - start)))
        return ServerResult(
            hidden_state=np.concatenate([p.hidden_state for p in parts]),
            generated_text=[t for p in parts for t in p.generated_text],
            spec_hash=parts[0].spec_hash,
        )

    def hidden_states(self, observations=None, texts=None, images=None, history=None) -> np.ndarray:
        """(B, H) float32 hidden states; see `extract` (which also gives the generated texts)."""
        return self.extract(observations=observations, texts=texts, images=images, history=history).hidden_state

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _request_limit(self) -> int:
        if self._max_request is None:
            self._max_request = int(self.health()["max_request"])
        return self._max_request

    def _post(self, body: dict, n: int) -> ServerResult:
        answer = self._call("POST", HIDDEN_STATES_PATH, json=body)
        where = f"POST {self.url}{HIDDEN_STATES_PATH}"
        try:
            hidden = decode_array(**answer["hidden"], what="hidden", dtypes=("float32",))
            spec_hash = str(answer["spec_hash"])
            generated = answer.get("generated_text")
        except (KeyError, TypeError, ValueError) as err:
            raise ServerError(f"{where}: malformed answer ({type(err).__name__}: {err})") from None
        if hidden.ndim != 2 or hidden.shape[0] != n:
            raise ServerError(f"{where}: {tuple(hidden.shape)} hidden states for {n} observations")
        if not np.isfinite(hidden).all():
            raise ServerError(f"{where}: the answer holds non-finite hidden states")
        if self._expected_hash is not None and spec_hash != self._expected_hash:
            raise ServerError(f"{where}: the server's spec changed (hash {spec_hash}, checked {self._expected_hash})")
        if generated is None:
            generated = [""] * n
        elif not (isinstance(generated, list) and len(generated) == n and all(isinstance(t, str) for t in generated)):
            raise ServerError(f"{where}: malformed generated_text")
        return ServerResult(hidden_state=hidden.copy(), generated_text=generated, spec_hash=spec_hash)


def _history_body(history: list[list[tuple]], symbolic: bool, width: int | None) -> dict:
    """The request's `history` field: per observation its actions, and its previous observations as a
    (B, M, D) float32 array (symbolic; rows past each one's count are zeros) or as lists of texts."""
    actions = [[int(a) for _, a in h] for h in history]
    if not symbolic:
        texts = [[t for t, _ in h] for h in history]
        if not all(isinstance(t, str) for row in texts for t in row):
            raise ValueError("history: with texts, each previous observation is a text")
        return {"actions": actions, "texts": texts}
    m = max((len(h) for h in history), default=0)
    x = np.zeros((len(history), m, width), np.float32)
    for b, h in enumerate(history):
        for j, (obs, _) in enumerate(h):
            row = np.asarray(obs, np.float32)
            if row.shape != (width,):
                raise ValueError(f"history[{b}][{j}]: expected an observation of shape ({width},), got {row.shape}")
            x[b, j] = row
    return {"actions": actions, "observations": encode_array(x)}


def _is_health(response: httpx.Response) -> bool:
    """Whether an answer is an hsrl /health body (a 503 one comes from `hsrl serve --legacy-routes` while loading)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "ready" in body and "status" in body


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else response.text
    return text[:500] if text else response.reason_phrase

