"""The hidden-state server: a real `hsrl serve` process on a loopback port (MiniLM), and in-process servers with a
stub extractor (failure isolation) and a tiny Qwen3 (generation mode)."""

import base64
import json
import socket
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

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.data.label import LabelConfig, label_dataset
from hsrl.serve import HiddenStateClient, ServerError
from hsrl.serve.wire import HIDDEN_STATES_PATH, STATS_PATH, TOKEN_ENV, encode_array

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "test-token-4f1c"
ENV = "Craftax-Classic-Symbolic-v1"
LIMITS = {"max_batch": 16, "max_request": 64, "max_body_bytes": 2**20, "max_text_chars": 4000}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hsrl serve` in a subprocess (token from the environment); yields (url, log path)."""
    folder = tmp_path_factory.mktemp("serve")
    log_path = folder / "server.log"
    port = free_port()
    cmd = serve_command(ENV, port, "--max-batch", str(LIMITS["max_batch"]), "--max-wait-ms", "20", "--max-request",
                        str(LIMITS["max_request"]), "--max-body-mb", "1", "--max-text-chars",
                        str(LIMITS["max_text_chars"]), "--log-level", "warning")
    env = dict(os.environ, **{TOKEN_ENV: TOKEN, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, log_path, proc
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def client(server, labelled):  # labelled: collect and label while the server loads
    url, log_path, proc = server
    with HiddenStateClient(url, token=TOKEN, timeout=60, retries=2, backoff=0.1) as c:
        try:
            c.wait_ready(timeout=240)
        except ServerError:
            proc.poll()
            raise AssertionError(f"server not ready:\n{log_path.read_text()[-3000:]}") from None
        yield c


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Observations labelled by `hsrl label` (batch size 8): the labelling path's vectors to compare with."""
    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("labelled")
    collect(CollectConfig(env=ENV, envs=2, steps=32, chunk_steps=8, out=str(raw), seed=3, progress=False))
    summary = label_dataset(LabelConfig(str(raw), str(out), batch_size=8, progress=False))
    assert not summary.failed
    chunks = [read_chunk(f) for f in list_chunks(out)]
    return {
        "obs": np.concatenate([c["obs"] for c in chunks]),
        "text": np.concatenate([c["text_obs"] for c in chunks]),
        "hidden": np.concatenate([c["hidden_state"] for c in chunks]),
        "spec_json": chunks[0].meta.spec_json,
    }


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_health_reports_ready_spec_and_limits(server, client):
    from hsrl.llm import ExtractionSpec

    health = httpx.get(server[0] + "/health").json()  # open without a token
    assert health["ready"] and health["status"] == "ready" and health["error"] is None
    assert health["model"] == "minilm" and health["hidden_size"] == 384
    spec = ExtractionSpec.from_json(health["spec_json"])
    assert spec.hash == health["spec_hash"] and spec.to_dict() == health["spec"]
    assert spec.variant == "classic" and spec.template == "short" and spec.dtype == "float32"  # resolved
    assert health["env"] == ENV and health["variant"] == "classic" and health["observation_length"] == 1345
    assert health["auth"] is True and health["generates"] is False
    for key, value in LIMITS.items():
        assert health[key] == value, key


def test_token_guards_every_route_but_health(server):
    url = server[0]
    body = {"texts": ["Map:\nnone"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path in (("POST", HIDDEN_STATES_PATH), ("GET", STATS_PATH), ("GET", "/docs"), ("GET", "/nowhere")):
            r = httpx.request(method, url + path, json=body if method == "POST" else None, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.json()["detail"]
    ok = httpx.post(url + HIDDEN_STATES_PATH, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    with HiddenStateClient(url, token="wrong", retries=3) as bad:
        with pytest.raises(ServerError) as err:
            bad.hidden_states(texts=["x"])
        assert err.value.status == 401


def test_batch_request_equals_the_labelling_path(client, labelled):
    obs, hidden = labelled["obs"], labelled["hidden"]
    got = client.hidden_states(observations=obs[:12])  # base64 float32
    assert got.shape == (12, 384) and got.dtype == np.float32
    close(got, hidden[:12])
    close(client.hidden_states(observations=obs[20]), hidden[20:21])  # one (D,) observation
    close(client.hidden_states(texts=list(labelled["text"][:3])), hidden[:3])
    # JSON lists and float64 base64 are accepted too
    r = client._call("POST", HIDDEN_STATES_PATH, json={"observations": obs[:3].tolist()})
    close(np.frombuffer(base64.b64decode(r["hidden"]["data"]), "<f4").reshape(3, 384), hidden[:3])
    r = client._call("POST", HIDDEN_STATES_PATH, json={"observations": encode_array(obs[3:5], "float64")})
    close(np.frombuffer(base64.b64decode(r["hidden"]["data"]), "<f4").reshape(2, 384), hidden[3:5])
    # larger than the server's per-request maximum: the client splits and joins
    with HiddenStateClient(client.url, token=TOKEN) as small:
        small._max_request = 4
        close(small.hidden_states(observations=obs[12:22]), hidden[12:22])


def test_check_spec_names_the_differing_fields(client, labelled):
    from hsrl.llm import ExtractionSpec

    assert client.check_spec(labelled["spec_json"]) == []
    other = ExtractionSpec.from_json(labelled["spec_json"]).replace(layer=3, pooling="last")
    with pytest.raises(ValueError, match="layer, pooling"):
        client.check_spec(other)
    with pytest.warns(UserWarning, match="layer"):
        assert client.check_spec(other.to_json(), allow=True) == ["layer", "pooling"]
    client.check_spec(labelled["spec_json"])


def test_concurrent_clients_are_batched_together(server, client, labelled):
    obs, hidden = labelled["obs"], labelled["hidden"]
    before = client.stats()
    threads, rounds = 16, 2
    barrier = threading.Barrier(threads)
    results, errors = {}, []

    def worker(k):
        try:
            with HiddenStateClient(server[0], token=TOKEN, retries=0) as c:
                c._max_request = LIMITS["max_request"]
                barrier.wait()
                for r in range(rounds):
                    rows = [(2 * k + r + j) % len(obs) for j in range(1 + (k + r) % 2)]
                    results[k, r] = (rows, c.hidden_states(observations=obs[rows]))
        except Exception as err:  # reported below
            errors.append(err)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors
    assert len(results) == threads * rounds
    for rows, got in results.values():  # every request got its own rows back
        close(got, hidden[rows])
    after = client.stats()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == threads * rounds
    assert after["max_batch_requests"] > 1 and batches < requests, after


def _fuzz_cases(rng, obs, texts):
    """(description, method, path, body bytes, headers, chunked, with token) of requests that must all be refused."""
    D = obs.shape[1]
    valid_obs = obs[:2]
    arr = encode_array(valid_obs)
    bases = {
        "array": {"observations": arr},
        "lists": {"observations": valid_obs.tolist()},
        "texts": {"texts": [str(t) for t in texts[:2]]},
    }
    junk = [None, 1, -7, 1.5, "x", "", True, False, {}, [], [[]], {"a": 1}, [1, 2], "A" * 1000, [None], 10**40]
    bad_dtypes = ["int32", "float16", "float", "", None, 5, ["float32"], "FLOAT32", "<f4", "float64", "uint8", True]
    bad_shapes = [[], [2], [2, D - 1], [2, D + 1], [D, 2], [2, D, 1], [-2, D], [0, D], [3, D], [1, D], [10**20, D],
                  [2.0, D], ["2", D], None, "2x1345", [True, D], [2, None], [LIMITS["max_request"] + 1, D]]
    # raw JSON tokens put in place of one number of a list observation
    bad_numbers = ["NaN", "Infinity", "-Infinity", "1e39", "-1e39", "1e308", "1e400", '"0"', "null", "true", "[]",
                   "{}", "1" + "0" * 400, '"x"', "[1.0]"]

    def dumps(value) -> bytes:
        return json.dumps(value).encode()

    def with_number(row, col, token: str) -> bytes:
        lists = valid_obs.tolist()
        lists[row][col] = "__HERE__"
        return json.dumps({"observations": lists}).replace('"__HERE__"', token).encode()

    def array_with(**changes):
        return {"observations": {**arr, **changes}}

    def corrupt_data() -> str:
        data = arr["data"]
        kind = rng.integers(6)
        if kind == 0:
            return data[: -int(rng.integers(1, 12))]
        if kind == 1:
            return data + "A" * int(rng.integers(1, 8))
        if kind == 2:
            i = int(rng.integers(len(data)))
            return data[:i] + str(rng.choice(list("!@#$%^&*() \n-_.,"))) + data[i + 1 :]
        if kind == 3:
            return base64.b64encode(rng.bytes(int(rng.integers(1, 200)))).decode()
        if kind == 4:
            return "ü" + data[1:]
        return encode_array(obs[:3])["data"]

    def nonfinite_array():
        x = valid_obs.copy()
        x[rng.integers(2), rng.integers(D)] = rng.choice([np.nan, np.inf, -np.inf])
        return {"observations": encode_array(x)}

    def not_craftax():
        x = valid_obs.copy()
        tile = int(rng.integers(63))
        channel = int(rng.integers(17))
        x[rng.integers(2), tile * 21 : tile * 21 + 17] = 0
        if rng.random() < 0.5:
            x[0, tile * 21 : tile * 21 + 17] = 0
            x[0, tile * 21 + channel] = 0.5
        return {"observations": encode_array(x) if rng.random() < 0.5 else x.tolist()}

    families = []

    def family(fn):
        families.append(fn)
        return fn

    @family
    def top_level_junk():
        key = str(rng.choice(["observations", "texts"]))
        value = junk[rng.integers(len(junk))]
        return f"{key}={value!r:.40}", dumps({key: value})

    @family
    def field_junk():
        key = str(rng.choice(["dtype", "shape", "data"]))
        value = junk[rng.integers(len(junk))]
        return f"observations.{key}={value!r:.40}", dumps(array_with(**{key: value}))

    @family
    def bad_dtype():
        value = bad_dtypes[rng.integers(len(bad_dtypes))]
        return f"dtype={value!r}", dumps(array_with(dtype=value))

    @family
    def bad_shape():
        value = bad_shapes[rng.integers(len(bad_shapes))]
        return f"shape={value!r:.40}", dumps(array_with(shape=value))

    @family
    def bad_base64():
        return "bad data", dumps(array_with(data=corrupt_data()))

    @family
    def non_finite():
        return "NaN/inf in base64 data", dumps(nonfinite_array())

    @family
    def bad_list_number():
        value = bad_numbers[rng.integers(len(bad_numbers))]
        return f"list value {value:.30}", with_number(int(rng.integers(2)), int(rng.integers(D)), value)

    @family
    def ragged_lists():
        lists = valid_obs.tolist()
        row = lists[int(rng.integers(2))]
        if rng.random() < 0.5:
            del row[int(rng.integers(D)) :]
        else:
            row.extend([0.0] * int(rng.integers(1, 5)))
        return "ragged rows", dumps({"observations": lists})

    @family
    def not_an_observation():
        return "not one-hot", dumps(not_craftax())

    @family
    def unknown_or_missing_field():
        kind = rng.integers(6)
        if kind == 0:
            return "unknown top-level field", dumps({**bases[str(rng.choice(list(bases)))], "extra": 1})
        if kind == 1:
            return "unknown array field", dumps(array_with(order="C"))
        if kind == 2:
            missing = str(rng.choice(["dtype", "shape", "data"]))
            return f"missing {missing}", dumps({"observations": {k: v for k, v in arr.items() if k != missing}})
        if kind == 3:
            return "both fields", dumps({**bases["array"], **bases["texts"]})
        if kind == 4:
            return "no field", dumps({})
        return "misspelt field", dumps({"observation": arr})

    @family
    def bad_texts():
        kind = rng.integers(7)
        choices = [
            ("empty list", []), ("empty text", [""]), ("blank text", ["  \n "]),
            ("too long", ["x" * (LIMITS["max_text_chars"] + 1)]),
            ("too many", ["tree"] * (LIMITS["max_request"] + 1)), ("a string", "tree"),
            ("too many tokens for the model", ["tree stone water " * 230]),
        ]
        what, value = choices[kind]
        return f"texts {what}", dumps({"texts": value})

    @family
    def broken_bytes():
        body = dumps(bases[str(rng.choice(list(bases)))])
        kind = rng.integers(5)
        if kind == 0:
            return "truncated JSON", body[: int(rng.integers(0, len(body)))]
        if kind == 1:
            i = int(rng.integers(len(body)))
            return "invalid UTF-8", body[:i] + b"\xff\xfe" + body[i:]
        if kind == 2:
            return "random bytes", rng.bytes(int(rng.integers(1, 300)))
        if kind == 3:
            return "deep nesting", b"[" * 5000 + b"]" * 5000
        return "JSON scalar", str(rng.choice(["null", "1", '"x"', "[]", "true", "NaN"])).encode()

    cases = []
    for i in range(560):
        what, body = families[i % len(families)]()
        cases.append((what, "POST", HIDDEN_STATES_PATH, body, {}, False, True))
    valid = dumps(bases["array"])
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "",
                         "application/jsonx", "text/json"):
        cases.append((f"content type {content_type!r}", "POST", HIDDEN_STATES_PATH, valid,
                      {"content-type": content_type}, False, True))
    cases += [
        ("GET on the POST route", "GET", HIDDEN_STATES_PATH, b"", {}, False, True),
        ("PUT", "PUT", HIDDEN_STATES_PATH, valid, {}, False, True),
        ("unknown route", "POST", "/v1/hidden", valid, {}, False, True),
        ("POST /health", "POST", "/health", valid, {}, False, True),
        ("no token", "POST", HIDDEN_STATES_PATH, valid, {}, False, False),
        ("body over the limit", "POST", HIDDEN_STATES_PATH, b" " * (LIMITS["max_body_bytes"] + 10) + valid, {}, False,
         True),
        ("chunked body over the limit", "POST", HIDDEN_STATES_PATH, valid + b" " * (LIMITS["max_body_bytes"] + 10), {},
         True, True),
        ("too many observations", "POST", HIDDEN_STATES_PATH,
         dumps({"observations": encode_array(np.repeat(valid_obs, 33, axis=0)[:65])}), {}, False, True),
        ("empty body", "POST", HIDDEN_STATES_PATH, b"", {}, False, True),
    ]
    return cases


def test_fuzz_malformed_requests_get_4xx_and_the_server_stays_up(server, client, labelled):
    url, log_path, proc = server
    rng = np.random.default_rng(0)
    cases = _fuzz_cases(rng, labelled["obs"], labelled["text"])
    assert len(cases) >= 500
    wrong = []
    statuses = {}
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        for what, method, path, body, headers, chunked, with_token in cases:
            headers = {"content-type": "application/json", **headers}
            if with_token:
                headers["authorization"] = f"Bearer {TOKEN}"
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
            r = http.request(method, path, content=content, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if not 400 <= r.status_code < 500:
                wrong.append((what, r.status_code, r.text[:200]))
            elif r.status_code not in (404, 405):
                detail = r.json().get("detail")
                if not (isinstance(detail, str) and detail):
                    wrong.append((what, r.status_code, "no message: " + r.text[:200]))
    seconds = time.perf_counter() - start
    assert not wrong, wrong[:10]
    assert {400, 401, 404, 405, 413, 415, 422} <= set(statuses), statuses
    assert seconds < 60, f"{len(cases)} malformed requests took {seconds:.1f} s"
    # alive and still right afterwards
    assert proc.poll() is None
    assert client.health()["ready"]
    close(client.hidden_states(observations=labelled["obs"][:2]), labelled["hidden"][:2])
    stats = client.stats()
    assert not [s for s in stats["responses"] if int(s) >= 500], stats["responses"]
    assert "Traceback" not in log_path.read_text()


def test_error_messages_name_the_problem(server):
    url = server[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def detail(body, status=422):
        r = httpx.post(url + HIDDEN_STATES_PATH, content=json.dumps(body).encode(),
                       headers={**auth, "content-type": "application/json"})
        assert r.status_code == status, r.text
        return r.json()["detail"]

    obs = np.zeros((1, 1345), np.float32)
    assert "1345" in detail({"observations": encode_array(np.zeros((1, 8268), np.float32))})
    assert "dtype" in detail({"observations": {**encode_array(obs), "dtype": "int8"}})
    assert "base64" in detail({"observations": {**encode_array(obs), "data": "@@@@"}})
    assert "Extra inputs" in detail({"texts": ["a"], "colour": "red"}) and "colour" in detail({"texts": ["a"], "colour": 1})
    obs[0, 5] = np.nan
    assert "not finite" in detail({"observations": encode_array(obs)})
    assert "more than the maximum of 64" in detail({"texts": ["a"] * 65})
    assert "one-hot" in detail({"observations": encode_array(np.zeros((1, 1345), np.float32))})
    assert "exactly one" in detail({})
    frames = encode_array(np.zeros((1, 63, 63, 3), np.uint8), "uint8")
    assert "reads no images" in detail({"images": frames})


def test_client_raises_on_failure_never_zeros(server, client):
    with HiddenStateClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, timeout=2) as nowhere:
        start = time.perf_counter()
        with pytest.raises(ServerError, match="gave up after 3 attempts") as err:
            nowhere.hidden_states(texts=["tree"])
        assert err.value.status is None and time.perf_counter() - start < 10
    calls = []
    original = client._http.request
    client._http.request = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        with pytest.raises(ServerError, match="422") as err:  # 4xx: not retried
            client.hidden_states(observations=np.zeros((1, 7), np.float32))
        assert err.value.status == 422 and len(calls) == 1
    finally:
        client._http.request = original
    with pytest.raises(ValueError, match="exactly one"):
        client.hidden_states()


def test_cli_refuses_bad_flags():
    from hsrl.cli import main

    assert main(["serve", "--env", "Craftax-Nope-v1"]) == 2
    assert main(["serve", "--max-batch", "0"]) == 2


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys):
    from hsrl.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.perf_counter()
        assert main(["serve", "--port", str(port)]) == 2
        assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert err.startswith(f"hsrl serve: error: cannot bind 127.0.0.1:{port}") and err.count("\n") == 1, err


@pytest.mark.parametrize("flag", ["--max-body-mb", "--head-timeout-s", "--body-timeout-s"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_cli_refuses_non_finite_or_non_positive_limits_in_one_line(flag, value, capsys):
    from hsrl.cli import main

    assert main(["serve", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hsrl serve: error: {flag}") and err.count("\n") == 1, err


# ---- in-process servers --------------------------------------------------------------------------------------------


class StubExtractor:
    """Fails on texts containing BAD (ValueError) or BOOM (RuntimeError); otherwise hidden = text length."""

    hidden_size = 4

    def __init__(self):
        from hsrl.llm import ExtractionSpec

        self.spec = ExtractionSpec(model="stub", template="short", dtype="float32")
        self.calls = []

    def check_prompt_lengths(self, texts):
        pass  # the stub takes any length

    def extract(self, texts):
        from hsrl.llm import ExtractionResult

        self.calls.append(len(texts))
        time.sleep(0.05)
        if any("BAD" in t for t in texts):
            raise ValueError("a BAD text")
        if any("BOOM" in t for t in texts):
            raise RuntimeError("the device fell over")
        hidden = np.array([[len(t)] * 4 for t in texts], np.float32)
        n = len(texts)
        return ExtractionResult({-1: hidden}, [""] * n, [[] for _ in range(n)], np.ones(n), np.ones(n), np.zeros(n, bool))


def test_a_failing_request_fails_alone(tmp_path):
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    stub = StubExtractor()
    app = create_app(stub.spec.replace(template="auto", dtype="auto"), ServerSettings(max_wait_ms=300), extractor=stub)
    server, thread, port = serve_in_thread(app)
    try:
        texts = ["tree", "BAD one", "stone stone", "BOOM", "water"]
        answers = {}

        barrier = threading.Barrier(len(texts))

        def send(text):
            with HiddenStateClient(f"http://127.0.0.1:{port}", retries=0) as c:
                c._max_request = 10
                barrier.wait()
                try:
                    answers[text] = c.hidden_states(texts=[text])
                except ServerError as err:
                    answers[text] = err

        pool = [threading.Thread(target=send, args=(t,)) for t in texts]
        for t in pool:
            t.start()
        for t in pool:
            t.join(30)
        assert stub.calls[0] == 5  # all five ran together first
        for text in ("tree", "stone stone", "water"):
            np.testing.assert_array_equal(answers[text], [[len(text)] * 4])
        assert answers["BAD one"].status == 422 and "BAD text" in str(answers["BAD one"])
        assert answers["BOOM"].status == 500 and "fell over" in str(answers["BOOM"])
    finally:
        server.should_exit = True
        thread.join(10)


def test_loading_failure_is_reported_and_requests_wait(tmp_path):
    from hsrl.llm import ExtractionSpec
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    app = create_app(ExtractionSpec(model=str(tmp_path / "no-such-model")), ServerSettings())
    server, thread, port = serve_in_thread(app)
    try:
        with HiddenStateClient(f"http://127.0.0.1:{port}", retries=0) as c:
            with pytest.raises(ServerError, match="failed to load"):
                c.wait_ready(timeout=30, poll=0.1)
            health = c.health()
            assert health["ready"] is False and health["status"] == "failed" and health["spec_json"] is None
            with pytest.raises(ServerError, match="503") as err:
                c._max_request = 10
                c.hidden_states(texts=["tree"])
            assert err.value.status == 503
    finally:
        server.should_exit = True
        thread.join(10)


def test_generation_mode_returns_generated_text(tmp_path):
    from tiny_qwen import build_tiny_qwen

    from hsrl.llm import ExtractionSpec
    from hsrl.llm.models import load_model
    from hsrl.llm.transformers_backend import TransformersExtractor
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    path = build_tiny_qwen(tmp_path / "qwen", num_layers=2)
    loaded = load_model(str(path))
    spec = ExtractionSpec(model=str(path), tokens=4, template="chat", temperature=1.0)
    served = TransformersExtractor(spec, model=loaded, batch_size=8)
    direct = TransformersExtractor(spec, model=loaded, batch_size=3)
    texts = ["Map:\n0, 1: tree\nInventory: wood 2", "Map:\nnone\nInventory: empty", "Map:\n-1, 0: water"]
    server, thread, port = serve_in_thread(create_app(spec, ServerSettings(), extractor=served))
    try:
        with HiddenStateClient(f"http://127.0.0.1:{port}") as c:
            assert c.wait_ready(timeout=10)["generates"] is True
            got = c.extract(texts=texts)
        want = direct.extract(texts)
        assert got.generated_text == want.generated_text and all(got.generated_text)
        close(got.hidden_state, want.hidden_state)
    finally:
        server.should_exit = True
        thread.join(10)


def test_image_payloads_equal_labelling_with_a_vision_language_model(classic_pixel_dataset, tiny_vlm_path, tmp_path):
    """A tiny Qwen3-VL served for Craftax-Classic-Pixels: base64 uint8 frames (or float frames, sent as uint8) give
    the vectors `hsrl label --input image` stored for the same frames; bad image payloads get a 422 naming the field."""
    from hsrl.data import uint8_to_pixels
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    out = tmp_path / "labelled"
    assert not label_dataset(LabelConfig(str(classic_pixel_dataset), str(out), model=str(tiny_vlm_path),
                                         input="image", batch_size=5, progress=False)).failed
    chunk = read_chunk(list_chunks(out)[0])
    frames, labelled = chunk["obs"], chunk["hidden_state"]
    spec = ExtractionSpec(model=str(tiny_vlm_path), input="image", variant="classic")
    with pytest.raises(ValueError, match="serve a Pixels env"):
        create_app(spec, ServerSettings())
    pixels_env = "Craftax-Classic-Pixels-v1"
    app = create_app(spec, ServerSettings(env=pixels_env, max_wait_ms=200), extractor=make_extractor(spec, batch_size=8))
    server, thread, port = serve_in_thread(app)
    url = f"http://127.0.0.1:{port}"
    try:
        with HiddenStateClient(url) as c:
            health = c.wait_ready(timeout=10)
            assert health["input"] == "image" and health["image_shape"] == [63, 63, 3] and health["env"] == pixels_env
            assert c.check_spec(chunk.meta.spec_json) == []
            close(c.hidden_states(images=frames[:5]), labelled[:5])
            close(c.hidden_states(images=uint8_to_pixels(frames[5])), labelled[5:6])  # one float frame
            answers = {}

            def send(rows):
                with HiddenStateClient(url) as other:
                    answers[rows] = other.hidden_states(images=frames[list(rows)])

            pool = [threading.Thread(target=send, args=(rows,)) for rows in ((6, 7), (8,), (9, 10, 11))]
            for t in pool:
                t.start()
            for t in pool:
                t.join(60)
            for rows, got in answers.items():  # batched together, each request got its own rows
                close(got, labelled[list(rows)])
            assert len(answers) == 3 and c.stats()["max_batch_requests"] > 1

        def detail(body):
            r = httpx.post(url + HIDDEN_STATES_PATH, json=body)
            assert r.status_code == 422, r.text
            return r.json()["detail"]

        good = encode_array(frames[:1], "uint8")
        assert "images: missing" in detail({"texts": ["Map:\nnone"]})
        assert "reads no text" in detail({"images": good, "texts": ["Map:\nnone"]})
        assert "images.shape" in detail({"images": encode_array(frames[:1, :60], "uint8")})
        assert "images.dtype" in detail({"images": {**good, "dtype": "float32"}})
        assert "images.data" in detail({"images": {**good, "data": good["data"][:-8]}})
        assert "images" in detail({"images": [[1, 2, 3]]})
    finally:
        server.should_exit = True
        thread.join(10)


# ---- fairness and limits: no head-of-line blocking ------------------------------------------------------------------


class TimedStub(StubExtractor):
    """hidden = text length; each call takes a fixed cost plus a cost per row, like a model batch."""

    def __init__(self, fixed: float = 0.1, per_row: float = 0.005):
        super().__init__()
        self.fixed, self.per_row = fixed, per_row

    def extract(self, texts):
        from hsrl.llm import ExtractionResult

        self.calls.append(len(texts))
        time.sleep(self.fixed + self.per_row * len(texts))
        hidden = np.array([[len(t)] * 4 for t in texts], np.float32)
        n = len(texts)
        return ExtractionResult({-1: hidden}, [""] * n, [[] for _ in range(n)], np.ones(n), np.ones(n), np.zeros(n, bool))


def _in_process(stub, **settings):
    return _in_process_with(stub, spec=stub.spec.replace(template="auto", dtype="auto"), **settings)


def _in_process_with(extractor, spec=None, **settings):
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    app = create_app(spec or extractor.spec, ServerSettings(**settings), extractor=extractor)
    return serve_in_thread(app)


def test_a_small_request_waits_at_most_one_batch_behind_large_ones():
    stub = TimedStub()
    server, thread, port = _in_process(stub, max_batch=8, max_wait_ms=5, max_request=64)
    url = f"http://127.0.0.1:{port}"
    try:
        def small() -> float:
            with HiddenStateClient(url, retries=0) as c:
                start = time.perf_counter()
                np.testing.assert_array_equal(c.hidden_states(texts=["tree"]), [[4] * 4])
                return time.perf_counter() - start

        unloaded = min(small() for _ in range(3))
        big = {}

        def send_big(k):
            texts = [f"{'x' * (k + 1)} {i}" for i in range(64)]
            with HiddenStateClient(url, retries=0, timeout=60) as c:
                big[k] = (texts, c.hidden_states(texts=texts))

        pool = [threading.Thread(target=send_big, args=(k,)) for k in range(4)]
        for t in pool:
            t.start()
        time.sleep(0.4)  # the 256 rows of the large requests are queued (32 batches of 8, ~4.5 s of model time)
        loaded = small()
        for t in pool:
            t.join(60)
        # Answered within about two batches (the one running, then its own), not after the whole queue.
        assert loaded / unloaded < 5, (loaded, unloaded)
        for texts, hidden in big.values():  # sliced requests still get every row, in order
            np.testing.assert_array_equal(hidden[:, 0], [len(t) for t in texts])
        assert len(big) == 4 and max(stub.calls) <= 8
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_full_queue_is_refused_with_503_and_recovers():
    stub = TimedStub(fixed=0.3, per_row=0.0)
    server, thread, port = _in_process(stub, max_batch=4, max_request=8, max_queued=8)
    url = f"http://127.0.0.1:{port}"
    try:
        statuses = []

        def send():
            with HiddenStateClient(url, retries=0, timeout=60) as c:
                try:
                    c.hidden_states(texts=["tree"] * 8)
                    statuses.append(200)
                except ServerError as err:
                    statuses.append(err.status)
                    assert "busy" in str(err)

        pool = [threading.Thread(target=send) for _ in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert 503 in statuses and 200 in statuses
        with HiddenStateClient(url, retries=0) as c:
            np.testing.assert_array_equal(c.hidden_states(texts=["stone"]), [[5] * 4])
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_body_that_never_finishes_times_out_with_408():
    server, thread, port = _in_process(StubExtractor(), body_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/hidden-states HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"texts\": [")
            start = time.perf_counter()
            reply = s.recv(4096).decode()
            assert time.perf_counter() - start < 5
        assert reply.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in reply
        with HiddenStateClient(f"http://127.0.0.1:{port}", retries=0) as c:
            np.testing.assert_array_equal(c.hidden_states(texts=["tree"]), [[4] * 4])
    finally:
        server.should_exit = True
        thread.join(10)


def _drip_until_closed(s: socket.socket, pieces: list[bytes], limit_s: float = 10.0) -> tuple[float, bytes]:
    """Send `pieces` one every 0.1 s (then keep sending header lines) until the server closes the connection;
    returns (seconds until closed, what the server sent)."""
    s.settimeout(0.1)
    start, got = time.perf_counter(), b""
    pieces = iter(pieces)
    while time.perf_counter() - start < limit_s:
        try:
            s.sendall(next(pieces, b"X-Slow: a\r\n"))
        except OSError:  # reset or broken pipe: closed
            break
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return time.perf_counter() - start, got


def test_a_request_head_that_never_finishes_is_closed_within_the_head_timeout():
    server, thread, port = _in_process(StubExtractor(), head_timeout_s=0.6)
    try:
        head = b"POST /v1/hidden-states HTTP/1.1\r\nHost: x\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a byte at a time, never ending
            took, got = _drip_until_closed(s, [bytes([b]) for b in head])
        assert 0.5 < took < 0.6 + 2.0, took
        assert got.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.6 s" in got, got
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # idle after an answer: armed again
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            took, got = _drip_until_closed(s, [b"GET /hea"])
        assert took < 0.6 + 2.0, took
        with HiddenStateClient(f"http://127.0.0.1:{port}", retries=0) as c:  # still serves a normal request
            np.testing.assert_array_equal(c.hidden_states(texts=["tree"]), [[4] * 4])
            assert c.health()["head_timeout_s"] == 0.6
    finally:
        server.should_exit = True
        thread.join(10)


def test_texts_too_long_for_the_model_are_refused_before_the_model_thread():
    """A request of texts that pass the character limit but not the model's context is refused (422) after
    tokenising only: the model never runs for it, and a valid request sent behind several of them is served."""
    from hsrl.llm import ExtractionSpec, make_extractor

    extractor = make_extractor(ExtractionSpec(model="minilm", variant="classic"))
    calls = []
    extract = extractor.extract

    def counting_extract(texts, **kw):
        calls.append(len(texts))
        return extract(texts, **kw)

    extractor.extract = counting_extract
    server, thread, port = _in_process_with(extractor, max_text_chars=20_000, max_request=64)
    url = f"http://127.0.0.1:{port}"
    try:
        long_text = "tree stone water " * 600  # ~10k characters: within the limit, ~1800 tokens > MiniLM's 512
        statuses = []

        def send_long():
            with HiddenStateClient(url, retries=0, timeout=60) as c:
                try:
                    c.hidden_states(texts=[long_text] * 64)
                except ServerError as err:
                    statuses.append((err.status, str(err)))

        pool = [threading.Thread(target=send_long) for _ in range(4)]
        for t in pool:
            t.start()
        with HiddenStateClient(url, retries=0, timeout=60) as c:
            assert c.hidden_states(texts=["tree"]).shape == (1, 384)
        for t in pool:
            t.join(60)
        assert len(statuses) == 4 and all(code == 422 and "more than the context" in msg
                                           for code, msg in statuses), statuses
        assert calls == [1], calls  # only the valid request reached the model
    finally:
        server.should_exit = True
        thread.join(10)
