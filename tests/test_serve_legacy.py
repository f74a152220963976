"""`hsrl serve --legacy-routes`: a client written for the servers of the Craftax_Baselines family of scripts
(`POST /get_hidden_state` with one frame as nested lists, `/health` polled for a 200) works unchanged against a real
`hsrl serve` process with a vision-language model, and gets the vector `HiddenStateClient` gets for the same frame;
`/health` answers 503 until the model is loaded."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import free_port, serve_command, stop_process

from hsrl.serve import HiddenStateClient
from hsrl.serve.wire import HIDDEN_STATES_PATH, LEGACY_HIDDEN_STATE_PATH

sys.path.insert(0, str(Path(__file__).parent))

PIXELS = "Craftax-Classic-Pixels-v1"


def legacy_client(url: str, frame: np.ndarray, timeout: float = 60.0) -> dict:
    """What those evaluation clients do: wait for a 200 /health, then post the frame as nested lists."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}/health never answered 200")
        time.sleep(0.1)
    response = httpx.post(url + LEGACY_HIDDEN_STATE_PATH, json={"obs": frame.tolist()}, timeout=timeout)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def legacy_server(tiny_vlm_path, tmp_path_factory):
    """`hsrl serve --legacy-routes` (tiny Qwen3-VL, --input image, generating 3 tokens) in a subprocess; the /health
    answers seen from the moment it was started; yields (url, statuses, process, log path)."""
    log_path = tmp_path_factory.mktemp("legacy") / "server.log"
    port = free_port()
    cmd = serve_command(PIXELS, port, "--legacy-routes", "--model", str(tiny_vlm_path), "--input", "image",
                        "--tokens", "3", "--log-level", "warning")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HSRL_SERVE_TOKEN", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    seen = []  # (status, ready) of every /health answer until the first 200
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(url + "/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.append((r.status_code, r.json()["ready"], r.json()["status"]))
            if r.status_code == 200:
                break
            time.sleep(0.05)
        if not seen or seen[-1][0] != 200:
            raise AssertionError(f"server not ready:\n{log_path.read_text()[-3000:]}")
        yield url, seen, proc, log_path
    finally:
        stop_process(proc)


def test_health_is_503_until_the_model_is_loaded(legacy_server):
    _, seen, _, _ = legacy_server
    assert seen[-1] == (200, True, "ready") and len(seen) > 1, seen  # the port opens before the model loads
    assert all(status == 503 and not ready and state == "loading" for status, ready, state in seen[:-1]), seen


def test_a_legacy_client_gets_the_vector_and_text_of_hidden_state_client(legacy_server):
    url, _, _, _ = legacy_server
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (2, 63, 63, 3)) / 255.0).astype(np.float32)  # float in [0, 1], as Craftax renders
    with HiddenStateClient(url) as client:
        health = client.wait_ready(timeout=30)
        assert health["input"] == "image" and health["generates"] is True
        for frame in frames:
            answer = legacy_client(url, frame)
            want = client.extract(images=frame)
            assert answer["shape"] == [health["hidden_size"]] == [64]
            np.testing.assert_array_equal(np.asarray(answer["hidden_state"], np.float32), want.hidden_state[0])
            assert answer["generated_text"] == want.generated_text[0] and answer["generated_text"]
        # the two frames' answers differ: not one constant vector
        a, b = (np.asarray(legacy_client(url, f)["hidden_state"]) for f in frames)
        assert np.abs(a - b).max() > 1e-3
        # concurrent legacy clients are batched with the others and each gets its own frame's vector
        answers = {}

        def send(i):
            answers[i] = np.asarray(legacy_client(url, frames[i % 2])["hidden_state"], np.float32)

        pool = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        for i, got in answers.items():
            np.testing.assert_array_equal(got, client.hidden_states(images=frames[i % 2])[0])
        assert len(answers) == 4


def test_bad_legacy_requests_get_4xx_naming_the_problem(legacy_server):
    url, _, _, _ = legacy_server
    frame = np.zeros((63, 63, 3))

    def detail(body, status=422, **kw):
        r = httpx.post(url + LEGACY_HIDDEN_STATE_PATH, timeout=30, **({"json": body} if body is not None else kw))
        assert r.status_code == status, r.text
        return r.json()["detail"]

    assert "obs: shape [60, 63, 3]" in detail({"obs": frame[:60].tolist()})
    assert "[0, 1]" in detail({"obs": (frame + 2).tolist()})
    assert "exactly the field 'obs'" in detail({"obs": frame.tolist(), "extra": 1})
    assert "exactly the field 'obs'" in detail({"image": frame.tolist()})
    assert "nested lists of numbers" in detail({"obs": [["a"]]})
    assert "malformed JSON" in detail(None, 400, content=b"{", headers={"content-type": "application/json"})


def _stub(input_):
    """A stand-in extractor: hidden = the mean of each image (or text length), after `gate` is set."""
    from hsrl.llm import ExtractionResult, ExtractionSpec

    class Stub:
        hidden_size = 4
        spec = ExtractionSpec(model="stub", input=input_, variant="classic", template="short", dtype="float32")

        def check_prompt_lengths(self, texts):
            pass

        def extract(self, texts, images=None):
            n = len(images) if images is not None else len(texts)
            value = images.reshape(n, -1).mean(1) if images is not None else np.array([len(t) for t in texts])
            hidden = np.repeat(value[:, None], 4, 1).astype(np.float32)
            return ExtractionResult({-1: hidden}, [""] * n, [[] for _ in range(n)], np.ones(n), np.ones(n),
                                    np.zeros(n, bool))

    return Stub()


def test_health_follows_the_loading_and_plain_servers_are_unchanged(monkeypatch):
    """While the model loads, a legacy server answers /health and /get_hidden_state 503, then 200; a server without
    --legacy-routes answers /health 200 with ready false and has no /get_hidden_state."""
    import hsrl.llm
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    gate = threading.Event()

    def slow_make_extractor(spec, **kw):
        assert gate.wait(30)
        return _stub(spec.input)

    monkeypatch.setattr(hsrl.llm, "make_extractor", slow_make_extractor)
    stub = _stub("image")
    frame = np.full((63, 63, 3), 0.5).tolist()
    for legacy in (True, False):
        gate.clear()
        app = create_app(stub.spec.replace(template="auto", dtype="auto"), ServerSettings(env=PIXELS, legacy_routes=legacy))
        server, thread, port = serve_in_thread(app)
        url = f"http://127.0.0.1:{port}"
        try:
            r = httpx.get(url + "/health")
            assert r.status_code == (503 if legacy else 200) and r.json()["ready"] is False
            r = httpx.post(url + LEGACY_HIDDEN_STATE_PATH, json={"obs": frame})
            assert r.status_code == (503 if legacy else 404), r.text
            with HiddenStateClient(url, retries=0) as client:  # reads a 503 health as "not ready yet"
                assert client.health()["status"] == "loading" and client.check_reachable()["ready"] is False
                gate.set()
                assert client.wait_ready(timeout=10, poll=0.05)["ready"]
            assert httpx.get(url + "/health").status_code == 200
            if legacy:
                answer = httpx.post(url + LEGACY_HIDDEN_STATE_PATH, json={"obs": frame}).json()
                assert answer == {"hidden_state": [128.0] * 4, "shape": [4], "generated_text": ""}
        finally:
            gate.set()
            server.should_exit = True
            thread.join(10)


def test_the_route_says_it_serves_image_specs(monkeypatch):
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    stub = _stub("text")
    app = create_app(stub.spec, ServerSettings(legacy_routes=True), extractor=stub)
    server, thread, port = serve_in_thread(app)
    url = f"http://127.0.0.1:{port}"
    try:
        r = httpx.post(url + LEGACY_HIDDEN_STATE_PATH, json={"obs": [[[0.0, 0.0, 0.0]]]})
        assert r.status_code == 422
        assert "input='text'" in r.json()["detail"] and "--input image" in r.json()["detail"]
        assert HIDDEN_STATES_PATH in r.json()["detail"]
        assert httpx.get(url + "/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
