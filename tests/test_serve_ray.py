"""`hsrl serve --ray`: the server deployed with Ray Serve on a local Ray, 2 CPU replicas of MiniLM, against in-process
extraction and against `hsrl serve`'s app (same settings, same extractor) for health, auth and error answers."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.serve import HiddenStateClient
from hsrl.serve.wire import HIDDEN_STATES_PATH, STATS_PATH, TOKEN_ENV, encode_array

TOKEN = "ray-token-77a2"
ENV = "Craftax-Classic-Symbolic-v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings():
    from hsrl.serve.server import ServerSettings

    return ServerSettings(env=ENV, max_batch=16, max_wait_ms=20, max_request=64, max_body_bytes=2**20,
                          max_text_chars=4000, token=TOKEN)


def spec():
    from hsrl.llm import ExtractionSpec

    return ExtractionSpec(model="minilm", variant="classic")


@pytest.fixture(scope="module")
def ray_server():
    """2 CPU replicas on a local Ray, deployed from this process; yields (url, deployment handle)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from hsrl.serve.ray_serve import deploy, shutdown

    port = free_port()
    try:
        handle = deploy(spec(), settings(), address=None, replicas=2, port=port)
        yield f"http://127.0.0.1:{port}", handle
    finally:
        shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Observations from random play, their in-process vectors (render_text + extract, the labelling path), and
    `hsrl serve`'s app (same settings, same extractor) on a loopback port."""
    from hsrl.llm import make_extractor
    from hsrl.serve.server import create_app, serve_in_thread
    from hsrl.text import render_text

    raw = tmp_path_factory.mktemp("raw")
    collect(CollectConfig(env=ENV, envs=2, steps=16, chunk_steps=8, out=str(raw), seed=5, progress=False))
    obs = np.concatenate([read_chunk(f)["obs"] for f in list_chunks(raw)])
    extractor = make_extractor(spec(), batch_size=16)
    texts = render_text(obs, "classic")
    hidden = extractor.extract(texts).hidden_state
    server, thread, port = serve_in_thread(create_app(spec(), settings(), extractor=extractor))
    try:
        yield {"obs": obs, "texts": texts, "hidden": np.asarray(hidden, np.float32), "url": f"http://127.0.0.1:{port}"}
    finally:
        server.should_exit = True
        thread.join(30)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_vectors_equal_in_process_extraction(ray_server, reference):
    obs, hidden = reference["obs"], reference["hidden"]
    with HiddenStateClient(ray_server[0], token=TOKEN) as client:
        got = client.hidden_states(observations=obs)  # 32 rows: two slices of max_batch, batched by Ray Serve
        assert got.shape == (len(obs), 384) and got.dtype == np.float32
        close(got, hidden)
        close(client.hidden_states(texts=list(reference["texts"][:3])), hidden[:3])
        close(client.hidden_states(observations=obs[7]), hidden[7:8])
        answers = {}

        def worker(k):
            with HiddenStateClient(ray_server[0], token=TOKEN) as c:
                for i in range(k, len(obs), 8):
                    answers[i] = c.hidden_states(observations=obs[i:i + 1])[0]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        close(np.stack([answers[i] for i in range(len(obs))]), hidden)
        stats = client.stats()
        assert stats["observations"] > 0 and stats["responses"]["200"] > 0


def test_health_equals_hsrl_serve(ray_server, reference):
    ours = httpx.get(ray_server[0] + "/health").json()  # open without a token, like hsrl serve's
    theirs = httpx.get(reference["url"] + "/health").json()
    assert ours == theirs
    assert ours["ready"] and ours["auth"] and ours["hidden_size"] == 384 and ours["max_batch"] == 16


def _error_cases(obs):
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    arr = encode_array(obs[:2])
    nan = obs[:1].copy()
    nan[0, 3] = np.nan
    return [
        ("no token", "POST", HIDDEN_STATES_PATH, {"Content-Type": "application/json"}, json.dumps({"texts": ["x"]})),
        ("wrong token", "POST", HIDDEN_STATES_PATH, {**good, "Authorization": "Bearer nope"}, "{}"),
        ("stats without token", "GET", STATS_PATH, {}, None),
        ("unknown route", "GET", "/nowhere", good, None),
        ("malformed JSON", "POST", HIDDEN_STATES_PATH, good, '{"observations": [1, 2'),
        ("content type", "POST", HIDDEN_STATES_PATH, {**good, "Content-Type": "text/plain"}, json.dumps({"texts": ["x"]})),
        ("unknown field", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": arr, "extra": 1})),
        ("both fields", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": arr, "texts": ["x", "y"]})),
        ("wrong width", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": encode_array(obs[:2, :100])})),
        ("bad dtype", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": {**arr, "dtype": "int8"}})),
        ("bad base64", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": {**arr, "data": "@@@@"}})),
        ("NaN", "POST", HIDDEN_STATES_PATH, good, json.dumps({"observations": encode_array(nan)})),
        ("too many", "POST", HIDDEN_STATES_PATH, good, json.dumps({"texts": ["tree"] * 65})),
        ("empty text", "POST", HIDDEN_STATES_PATH, good, json.dumps({"texts": ["  "]})),
        ("body too large", "POST", HIDDEN_STATES_PATH, good, json.dumps({"texts": ["x" * (2**20 + 10)]})),
    ]


def test_auth_and_error_answers_equal_hsrl_serve(ray_server, reference):
    for name, method, path, headers, body in _error_cases(reference["obs"]):
        ours = httpx.request(method, ray_server[0] + path, headers=headers, content=body)
        theirs = httpx.request(method, reference["url"] + path, headers=headers, content=body)
        assert 400 <= ours.status_code < 500, (name, ours.status_code, ours.text)
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), name
        if ours.status_code == 401:
            assert ours.headers["www-authenticate"] == theirs.headers["www-authenticate"] == "Bearer"


def _replica_pids(handle, tries: int = 40) -> set[int]:
    return {handle.pid.remote().result(timeout_s=60) for _ in range(tries)}


def test_a_replica_killed_under_load_loses_no_request(ray_server, reference):
    url, handle = ray_server
    obs, hidden = reference["obs"], reference["hidden"]
    pids = _replica_pids(handle)
    assert len(pids) == 2, pids  # two replicas, each its own process
    victim = min(pids)
    answers, errors = [], []
    stop = time.monotonic() + 8
    killed = threading.Event()

    def worker(k):
        rng = np.random.default_rng(k)
        with HiddenStateClient(url, token=TOKEN, timeout=60, retries=8, backoff=0.2) as c:
            while time.monotonic() < stop or not killed.is_set():
                rows = rng.choice(len(obs), size=int(rng.integers(1, 5)), replace=False)
                try:
                    answers.append((rows, c.hidden_states(observations=obs[rows]), killed.is_set()))
                except Exception as err:  # reported below
                    errors.append(err)
                    return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(victim, signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert sum(after for _, _, after in answers) >= 8, "too few requests answered after the kill"
    for rows, got, _ in answers:
        assert np.abs(got).sum(axis=1).min() > 0  # never a zero vector
        close(got, hidden[rows])
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    # the survivor still answers correctly, and Serve replaces the dead replica
    with HiddenStateClient(url, token=TOKEN, retries=8, backoff=0.2) as c:
        close(c.hidden_states(observations=obs[:4]), hidden[:4])


def test_cli_refuses_bad_ray_flags():
    env = dict(os.environ, **{TOKEN_ENV: TOKEN})
    for flags, message in ((["--ray", "--replicas", "0"], "--replicas"),
                           (["--ray", "--gpus-per-replica", "-1"], "--gpus-per-replica"),
                           (["--replicas", "2"], "need --ray")):
        r = subprocess.run([sys.executable, "-m", "hsrl.cli", "serve", "--env", ENV, *flags],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode != 0 and message in r.stderr, (flags, r.stderr[-2000:])
