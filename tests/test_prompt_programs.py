"""Prompt programs (issue #28): history, placeholder templates (the shipped forecast, the user's --prompt-template),
the `prompt` verb, and the same state from one observation sequence in label, serve, online and eval."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.data.label import LabelConfig, chunk_history, label_dataset
from hsrl.errors import InputError
from hsrl.llm import ExtractionSpec
from hsrl.llm.prompt import (
    PLACEHOLDERS, TEMPLATE_VERSIONS, TemplateError, history_text, parse_template, prompt_program, shipped_template,
    template_hash,
)

sys.path.insert(0, str(Path(__file__).parent))
from llm_helpers import OBS  # noqa: E402

ENV = "Craftax-Classic-Symbolic-v1"
K = 2
TEMPLATE = "{rules}\nActions: {actions}\n{history}Now:\n{observation}\nWhat next?\n"
SMALL_TEMPLATE = "A Craftax game.\n{history}Now:\n{observation}\nWhat next?\n"  # fits MiniLM's 512 tokens with history


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Three chunks of 2 envs x 5 steps with episodes cut at 7 steps: episodes start at steps 0, 7 and 14 and chunks
    at 0, 5 and 10, so histories cross chunk boundaries and stop at episode starts."""
    out = tmp_path_factory.mktemp("episodes")
    collect(CollectConfig(env=ENV, envs=2, steps=30, chunk_steps=5, max_episode_steps=7, out=str(out), seed=4,
                          progress=False))
    return out


def _by_time(folder, keys=("text_obs", "action", "done")):
    """Every chunk of a folder joined in time: text (S, E), action (S, E), done (S, E) (or other keys)."""
    chunks = [read_chunk(p) for p in list_chunks(folder)]
    return tuple(np.concatenate([c.time_major(k) for c in chunks]) for k in keys)


def _expected_history(texts, actions, done, s, e, k):
    """Step s of env e: walk back over the steps before it until k are found or an episode ended there."""
    entries = []
    for j in range(1, k + 1):
        if s - j < 0 or done[s - j, e]:
            break
        entries.insert(0, (str(texts[s - j, e]), int(actions[s - j, e])))
    return entries


# ---- templates and spec ---------------------------------------------------------------------------------------------


def test_old_specs_keep_their_json_and_hash():
    """A spec that uses none of the new fields writes the JSON (and so the hash) it wrote before they existed."""
    old = ('{"backend":"transformers","dtype":"auto","input":"text","layer":-1,"max_prompt_length":null,'
           '"model":"minilm","pooling":"mean","renderer_version":"1","seed":0,"temperature":0.6,"template":"auto",'
           '"template_version":null,"tokens":1,"top_p":0.95,"variant":"classic"}')
    spec = ExtractionSpec.from_json(old)
    assert spec.to_json() == old and spec.history == 0 and spec.template_text is None
    assert ExtractionSpec().to_json() == old
    with_history = spec.replace(history=2)
    assert '"history":2' in with_history.to_json() and with_history.hash != spec.hash
    from hsrl.llm.spec import spec_differences

    assert spec_differences(old, with_history) == ["history"]
    assert ExtractionSpec.from_json(with_history.to_json()) == with_history


def test_two_templates_give_two_spec_hashes_and_carry_their_text():
    a = ExtractionSpec(template="custom", template_text=TEMPLATE)
    b = ExtractionSpec(template="custom", template_text=TEMPLATE.replace("What next?", "What now?"))
    assert a.hash != b.hash and a.template_hash == template_hash(TEMPLATE) != b.template_hash
    assert json.loads(a.to_json())["template_text"] == TEMPLATE
    back = ExtractionSpec.from_json(a.to_json())
    assert back == a and back.hash == a.hash
    with pytest.raises(ValueError, match="hashes to"):  # a recorded hash that does not match its text
        ExtractionSpec.from_dict({**a.to_dict(), "template_hash": "0" * 12})
    forecast = ExtractionSpec(template="forecast")
    assert forecast.template_text == shipped_template("forecast") and forecast.template_version == 1
    assert len({a.hash, b.hash, forecast.hash, ExtractionSpec(template="chat").hash}) == 4


@pytest.mark.parametrize("text, message", [
    ("{observation} {inventory}", r"unknown placeholder \{inventory\} \(line 1\); known: observation, history"),
    ("line one\n{observation}\n{Observation}", r"unknown placeholder \{Observation\} \(line 3\)"),
    ("{observation:>10}", "without a format"),
    ("{}", r"unknown placeholder \{\}"),
    ("{rules}\n{actions}", r"\{observation\} exactly once \(it holds it 0 times\)"),
    ("{observation} {observation}", "exactly once"),
    ("{observation} }", "literal brace"),
])
def test_a_bad_template_is_refused_in_one_line(text, message):
    with pytest.raises(TemplateError, match=message) as caught:
        parse_template(text)
    assert "\n" not in str(caught.value)


def test_template_flags_refuse_before_any_work(tmp_path):
    from hsrl.llm.flags import SpecFlags

    bad = tmp_path / "bad.txt"
    bad.write_text("{observation}\n\n{inventory}\n")
    with pytest.raises(InputError, match=rf"--prompt-template {bad}: unknown placeholder \{{inventory\}} \(line 3\)"):
        SpecFlags(prompt_template=str(bad)).extraction_spec("classic")
    no_history = tmp_path / "no_history.txt"
    no_history.write_text("{observation}")
    with pytest.raises(InputError, match=r"no \{history\} placeholder.*--history 2"):
        SpecFlags(prompt_template=str(no_history), history=2).extraction_spec("classic")
    with pytest.raises(InputError, match="no such file"):
        SpecFlags(prompt_template=str(tmp_path / "missing.txt")).extraction_spec("classic")
    with pytest.raises(InputError, match="give one"):
        SpecFlags(prompt_template=str(no_history), template="chat").extraction_spec("classic")
    with pytest.raises(InputError, match="--history -1"):
        SpecFlags(history=-1).extraction_spec("classic")
    good = tmp_path / "good.txt"
    good.write_text(TEMPLATE)
    spec = SpecFlags(prompt_template=str(good), history=1).extraction_spec("classic")
    assert spec.template == "custom" and spec.template_text == TEMPLATE and spec.history == 1


def test_the_cli_refuses_an_unknown_placeholder_in_one_line(episodes, tmp_path, capsys):
    from hsrl.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text("{observation} {threats}")
    assert main(["label", str(episodes), str(tmp_path / "out"), "--prompt-template", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and r"unknown placeholder {threats}" in err and not (tmp_path / "out").exists()


def test_placeholders_fill_prefix_slot_and_tail():
    """The fixed placeholders go into the shared prefix; from the first per-sample placeholder to the last is the
    slot; the history block is empty at history 0."""
    program = prompt_program(ExtractionSpec(template="custom", template_text=TEMPLATE, history=1))
    t = program.template()
    assert t.prefix.startswith("You are playing Craftax-Classic") and "Actions: noop, left, right" in t.prefix
    assert t.prefix.endswith("\n") and t.tail == "\nWhat next?\n"
    assert program.sample_text("OBS", [("EARLIER", 3)]) == history_text([("EARLIER", 3)], 1, program.action_names) + \
        "Now:\nOBS"
    assert "Action taken: up" in program.sample_text("OBS", [("EARLIER", 3)])
    assert prompt_program(ExtractionSpec(template="custom", template_text=TEMPLATE)).sample_text("OBS") == "Now:\nOBS"
    assert set(PLACEHOLDERS) == {"observation", "history", "future", "actions", "achievements", "rules"}


def test_history_text_says_how_many_and_refuses_too_many():
    names = prompt_program(ExtractionSpec(template="short")).action_names
    assert "none (the episode starts" in history_text([], 3, names)
    one = history_text([("A", 0)], 3, names)
    assert "1 of the last 3 steps; the episode started 1 step before" in one and "Action taken: noop" in one
    full = history_text([("A", 1), ("B", 2)], 2, names)
    assert full.index("2 steps ago:\nA\nAction taken: left") < full.index("1 step ago:\nB\nAction taken: right")
    assert "episode started" not in full and full.endswith("\n\n")
    with pytest.raises(ValueError, match="at most 2"):
        history_text([("A", 1)] * 3, 2, names)
    with pytest.raises(ValueError, match="not one of the game's 17 actions"):
        history_text([("A", 17)], 2, names)
    assert history_text([], 0, names) == ""


@pytest.mark.parametrize("template", ["chat", "short"])
def test_history_zero_leaves_the_builtin_prompts_unchanged(template):
    from hsrl.llm.prompt import build_template

    program = prompt_program(ExtractionSpec(template=template))
    assert program.render(OBS[0]) == build_template(template, "classic").render(OBS[0])
    assert program.sample_texts(OBS) == OBS


def test_forecast_is_pinned_to_its_version():
    import hashlib

    assert TEMPLATE_VERSIONS["forecast"] == 1
    assert hashlib.sha256(shipped_template("forecast").encode()).hexdigest()[:16] == "57da65f9e14d7890", (
        "the forecast template changed: bump TEMPLATE_VERSIONS['forecast'] and pin the new hash")


def test_history_keeps_the_shared_prefix_of_a_causal_model(tmp_path):
    """With a chat model the history lives after the fixed prefix: prefix ids are the same for every history K, and
    the prefix-cached states equal the uncached ones."""
    from tiny_qwen import build_tiny_qwen

    from hsrl.llm.transformers_backend import TransformersExtractor

    path = build_tiny_qwen(tmp_path / "qwen")
    prefixes = []
    for k in (0, 2):
        spec = ExtractionSpec(model=str(path), template="chat", history=k)
        cached = TransformersExtractor(spec, batch_size=4)
        plain = TransformersExtractor(spec, batch_size=4, prefix_cache=False, model=cached.loaded)
        history = [[(OBS[1], 3), (OBS[3], 5)][:k], [], [(OBS[0], 1)][:k]]
        a = cached.extract(OBS[:3], history=history).hidden_state
        b = plain.extract(OBS[:3], history=history).hidden_state
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        prefixes.append(cached._prefix_ids)
        assert cached.prefix_cache and cached.prefix_tokens > 500
    assert prefixes[0] == prefixes[1]


def test_forecast_pools_its_generated_tokens_or_the_prompt(tmp_path):
    """--template forecast asks for the next steps; with --tokens N the state pools the generated tokens (what
    re-extraction of those tokens gives), with --tokens 1 the prompt's observation slot."""
    from tiny_qwen import build_tiny_qwen

    from hsrl.llm import make_extractor

    path = build_tiny_qwen(tmp_path / "qwen", max_position_embeddings=16384)
    spec = ExtractionSpec(model=str(path), template="forecast", history=1, tokens=5, temperature=0)
    gen = make_extractor(spec, batch_size=2)
    history = [[(OBS[1], 2)], []]
    prompt = gen.program.render(OBS[0], history[0], gen.tokenizer)
    assert "Forecast the next 5 steps" in prompt and "Action taken: right" in prompt and prompt.startswith("<|im_")
    result = gen.extract(OBS[:2], history=history)
    assert list(result.num_tokens) == [len(g) for g in result.generated_ids] and max(result.num_tokens) > 1
    again = gen.reextract(OBS[:2], generated_ids=result.generated_ids, history=history)
    np.testing.assert_allclose(again.hidden_state, result.hidden_state, rtol=1e-4, atol=1e-5)
    prompt_only = make_extractor(spec.replace(tokens=1), batch_size=2)
    rows, ranges = prompt_only.encode(prompt_only.program.sample_texts(OBS[:1], history[:1]))
    assert prompt_only.extract(OBS[:1], history=history[:1]).num_tokens[0] == ranges[0, 1] - ranges[0, 0] > 100


# ---- labelling --------------------------------------------------------------------------------------------------------


def test_history_for_each_row_comes_from_the_files_across_chunks_never_across_an_episode_start(episodes):
    texts, actions, done = _by_time(episodes)
    E = texts.shape[1]
    assert done[6].all() and done[13].all() and not done[:6].any()  # episodes of 7 steps
    crossed = starts = 0
    for i, path in enumerate(list_chunks(episodes)):
        chunk = read_chunk(path)
        history, earlier = chunk_history(chunk, chunk["text_obs"], 3)
        assert [p.name for p in earlier] == [p.name for p in list_chunks(episodes)[max(0, i - 1) : i]]
        for row, entries in enumerate(history):
            s, e = i * 5 + row // E, row % E
            assert entries == _expected_history(texts, actions, done, s, e, 3), (s, e)
            crossed += any(s - j < i * 5 for j in range(1, len(entries) + 1))
            starts += s in (0, 7, 14) and entries == []
    assert crossed > 0 and starts == 3 * E


@pytest.fixture(scope="module")
def labelled(episodes, tmp_path_factory):
    """`episodes` labelled by MiniLM with --history 2 and a template file of our own."""
    folder = tmp_path_factory.mktemp("labelled_history")
    template = folder / "mine.txt"
    template.write_text(SMALL_TEMPLATE)
    out = folder / "labelled"
    summary = label_dataset(LabelConfig(str(episodes), str(out), history=K, prompt_template=str(template),
                                        batch_size=7, progress=False))
    assert not summary.failed and len(summary.labelled) == 3
    return out


def test_history_never_crosses_a_gap_in_the_recording(episodes, tmp_path):
    """A chunk that starts a new segment (imported data with a gap before it) starts every history afresh."""
    from dataclasses import replace

    from hsrl.data import write_chunk

    gapped = tmp_path / "gapped"
    gapped.mkdir()
    for i, path in enumerate(list_chunks(episodes)):
        chunk = read_chunk(path)
        write_chunk(gapped / path.name, chunk.arrays, replace(chunk.meta, segment=int(i == 2)))
    chunk = read_chunk(list_chunks(gapped)[2])
    history, earlier = chunk_history(chunk, chunk["text_obs"], K)
    assert earlier == [] and history[0] == history[1] == []
    chunk = read_chunk(list_chunks(gapped)[1])  # the same segment as chunk 0: its history crosses into it
    assert [len(h) for h in chunk_history(chunk, chunk["text_obs"], K)[0][:2]] == [K, K]


def test_labelled_history_states_and_the_file_records_its_template(episodes, labelled):
    """Labelling with --history and --prompt-template: each row's state is the extractor's for the prompt built from
    that environment's previous observations in the files; the file's spec holds the template's hash and text."""
    from hsrl.llm import make_extractor

    out = labelled
    template = out.parent / "mine.txt"
    chunk = read_chunk(list_chunks(out)[2])
    spec = ExtractionSpec.from_json(chunk.meta.spec_json)
    assert spec.history == K and spec.template == "custom"
    assert spec.template_text == SMALL_TEMPLATE and spec.template_hash == template_hash(SMALL_TEMPLATE)
    texts, actions, done = _by_time(episodes)
    E = texts.shape[1]
    rows = range(0, chunk.num_rows)
    history = [_expected_history(texts, actions, done, 10 + r // E, r % E, K) for r in rows]
    direct = make_extractor(spec).extract(list(chunk["text_obs"]), history=history).hidden_state
    np.testing.assert_allclose(chunk["hidden_state"], direct, rtol=1e-6, atol=1e-6)
    # a rerun asking for another history refuses the folder, naming the field
    with pytest.raises(InputError, match="history"):
        label_dataset(LabelConfig(str(episodes), str(out), history=1, prompt_template=str(template), progress=False))


# ---- serving ----------------------------------------------------------------------------------------------------------


def test_server_history_field_gives_the_labelled_states(episodes, labelled):
    """POST /v1/hidden-states with `history` (symbolic observations or texts): the labelled file's states; without
    it, or with more than K previous observations or the other kind, one 422 naming the problem."""
    import httpx

    from hsrl.llm import make_extractor
    from hsrl.serve import HiddenStateClient
    from hsrl.serve.client import ServerError
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    chunks = [read_chunk(p) for p in list_chunks(labelled)]
    spec = ExtractionSpec.from_json(chunks[0].meta.spec_json)
    texts, actions, done, obs = _by_time(episodes, ("text_obs", "action", "done", "obs"))
    hidden = np.concatenate([c.time_major("hidden_state") for c in chunks])
    E = texts.shape[1]
    cells = [(s, e) for s in (0, 5, 6, 7, 8, 10, 14) for e in range(E)]  # starts, chunk boundaries, middles
    history = [_expected_history(texts, actions, done, s, e, K) for s, e in cells]
    index = {t: (s, e) for s in range(len(texts)) for e in range(E) for t in [texts[s, e]]}
    obs_history = [[(obs[index[t]], a) for t, a in h] for h in history]
    assert any(len(h) == K for h in history) and any(len(h) == 0 for h in history)
    app = create_app(spec, ServerSettings(env=ENV, max_request=5), extractor=make_extractor(spec))
    server, thread, port = serve_in_thread(app)
    try:
        url = f"http://127.0.0.1:{port}"
        with HiddenStateClient(url) as client:
            assert client.health()["history"] == K
            client.check_spec(spec)
            want = np.stack([hidden[s, e] for s, e in cells])
            by_obs = client.hidden_states(observations=np.stack([obs[s, e] for s, e in cells]), history=obs_history)
            by_text = client.hidden_states(texts=[texts[s, e] for s, e in cells], history=history)
            np.testing.assert_allclose(by_obs, want, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(by_text, want, rtol=1e-6, atol=1e-6)

            def refused(body, match):
                r = httpx.post(url + "/v1/hidden-states", json=body)
                assert r.status_code == 422 and match in r.json()["detail"], r.text

            one = [str(texts[8, 0])]
            refused({"texts": one}, "history: missing")
            refused({"texts": one, "history": {"actions": [[1, 2, 3]], "texts": [["a", "b", "c"]]}},
                    "3 previous steps, more than the 2")
            refused({"texts": one, "history": {"actions": [[1]], "observations": [[obs[7, 0].tolist()]]}},
                    "as 'texts'")
            refused({"texts": one, "history": {"actions": [[99]], "texts": [["a"]]}}, "action 99")
            refused({"texts": one, "history": {"actions": [[1], []], "texts": [["a"], []]}}, "2 lists for 1")
            with pytest.raises(ServerError, match="history"):
                client.hidden_states(texts=one)
    finally:
        server.should_exit = True
        thread.join(10)


# ---- hsrl prompt ------------------------------------------------------------------------------------------------------


def test_prompt_verb_prints_the_exact_prompt_and_its_token_count(episodes, labelled, capsys):
    """`hsrl prompt DATA --row N` on labelled data: the prompt the labeller built for that row (its spec, its
    history from the files) and the token count the model read; `--text` with the flags' spec."""
    from hsrl.cli import main
    from hsrl.llm import make_extractor

    chunk = read_chunk(list_chunks(labelled)[1])
    spec = ExtractionSpec.from_json(chunk.meta.spec_json)
    texts, actions, done = _by_time(episodes)
    row = 3  # chunk 1 (steps 5..9), step 6 of env 1: its history crosses into chunk 0
    history = _expected_history(texts, actions, done, 6, 1, K)
    assert len(history) == K
    assert main(["prompt", str(labelled), "--row", str(10 + row)]) == 0
    out = capsys.readouterr().out
    extractor = make_extractor(spec)
    prompt = extractor.program.render(str(chunk["text_obs"][row]), history, extractor.tokenizer)
    tokens = int(extractor.extract([str(chunk["text_obs"][row])], history=[history]).prompt_tokens[0])
    assert f"\n{prompt}\n---- end of prompt ----" in out and f"(from its labels' metadata)" in out
    assert f"---- prompt ({tokens} tokens; the tokenizer adds [CLS], [SEP]) ----" in out
    assert f"chunk_000001.npz row {row} (step 1 of env 1): 2 of up to 2 previous observations" in out
    assert main(["prompt", "--text", "0, 1: tree", "--template", "short"]) == 0
    assert "(from the flags)" in (out := capsys.readouterr().out) and "\n0, 1: tree\nWhat should" in out
    assert main(["prompt", "--text", "0, 1: tree", "--template", "chat"]) == 1  # the few-shot prompt: > 512 tokens
    assert "does not fit minilm's context of 512 tokens" in capsys.readouterr().out
    assert main(["prompt", str(labelled), "--row", "30"]) == 2
    assert "has 30 rows (0..29)" in capsys.readouterr().err


# ---- one observation sequence, four paths --------------------------------------------------------------------------


def _write_sequence(folder, sym, action, done, chunk_steps):
    """A (T, E) sequence of symbolic observations, actions and episode ends as chunk files (time-major rows,
    consecutive first_steps), as `hsrl collect` writes them."""
    from hsrl.data import ChunkMeta, chunk_path, write_chunk

    T, E = action.shape
    folder.mkdir(parents=True)
    next_sym = np.concatenate([sym[1:], sym[-1:]])
    for i, start in enumerate(range(0, T, chunk_steps)):
        sl = slice(start, start + chunk_steps)
        n = len(action[sl]) * E
        arrays = {"obs": sym[sl].reshape(n, -1), "next_obs": next_sym[sl].reshape(n, -1),
                  "action": action[sl].reshape(n).astype(np.int32), "reward": np.zeros(n, np.float32),
                  "done": done[sl].reshape(n)}
        write_chunk(chunk_path(folder, i), arrays, ChunkMeta(env_name=ENV, num_envs=E, obs_kind="symbolic",
                                                             first_step=start))
    return folder


def _label_sequence(extractor, folder, out):
    """`folder` labelled by the labeller with `extractor`: (T, E, H) states."""
    from hsrl.data.label import Labeller

    labeller = Labeller(extractor, batch_size=4, save_token_states=False)
    out.mkdir()
    for path in list_chunks(folder):
        labeller.label_file(path, out / path.name)
    return np.concatenate([read_chunk(p).time_major("hidden_state") for p in list_chunks(out)])


def test_one_observation_sequence_gives_the_same_state_in_label_serve_online_and_eval(tmp_path):
    """The state of a step with history K is the same vector whether labelling builds the prompt from the chunk
    files, the server from a request's `history`, online PPO or evaluation from the runner's ring of previous
    observations (episodes cut at 4 steps: histories restart at episode starts and cross chunk boundaries).
    A tiny Qwen3 (prompt-only): three Classic observations can pass MiniLM's 512 tokens."""
    import jax
    import jax.numpy as jnp
    from tiny_qwen import build_tiny_qwen

    from hsrl.env import make_env
    from hsrl.evaluate import AblatedHidden, initial_carry, make_segment
    from hsrl.llm import make_extractor
    from hsrl.rl.live import ExtractorSource, History, LiveHidden, Runner
    from hsrl.rl.networks import NetworkConfig, init_params
    from hsrl.rl.ppo import Memory, Norm, OnlineConfig, make_rollout
    from hsrl.serve import HiddenStateClient
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    model = build_tiny_qwen(tmp_path / "qwen", max_position_embeddings=16384)
    spec = ExtractionSpec(model=str(model), variant="classic", template="custom", template_text=SMALL_TEMPLATE,
                          history=K)
    extractor = make_extractor(spec, batch_size=8)
    E, T = 2, 10
    env = make_env(ENV, E, reset_pool=2, with_symbolic=True, max_timesteps=4)
    live = LiveHidden("classic", None, ExtractorSource(extractor))
    assert live.history == K

    # online PPO: the rollout's states (a refresh every step), observations, actions and episode ends
    net = NetworkConfig(kind="mlp", num_actions=env.info.num_actions, obs_shape=env.info.obs_shape,
                        hidden_size=extractor.hidden_size, width=16)
    params = init_params(net, jax.random.PRNGKey(0))
    obs, env_state, info = jax.jit(env.reset)(jax.random.PRNGKey(1))
    sym = info["symbolic_obs"]
    hidden = jnp.asarray(live(np.asarray(sym), np.ones(E, bool)))
    runner = Runner(env_state, obs, sym, hidden, jnp.zeros(E, bool), jnp.zeros((), jnp.int32),
                    jax.random.PRNGKey(2), History.empty(sym, K))
    stats = live.stats()
    rollout = make_rollout(OnlineConfig(env=ENV, envs=E, num_steps=T, skip_n=1, num_minibatches=1), env, net, live)
    after, _, traj, _ = rollout(params, runner, Memory.initial(net, E), Norm(jnp.asarray(stats.mean),
                                                                             jnp.asarray(stats.std)))
    online = {k: np.asarray(getattr(traj, k)) for k in ("obs", "action", "done", "hidden")}
    assert online["done"][:-1].any() and after.history.sym.shape == (E, K, sym.shape[1])
    labelled = _label_sequence(extractor, _write_sequence(tmp_path / "online", online["obs"], online["action"],
                                                          online["done"], 4), tmp_path / "online_labelled")
    np.testing.assert_allclose(online["hidden"], labelled, rtol=1e-6, atol=1e-6)

    # the server, asked with each step's history from the files
    texts, actions, done, sym_rows = _by_time(tmp_path / "online_labelled", ("text_obs", "action", "done", "obs"))
    cells = [(s, e) for s in range(T) for e in range(E)]
    history = [[(sym_rows[s - len(h) + j, e], a) for j, (_, a) in enumerate(h)]
               for s, e in cells for h in [_expected_history(texts, actions, done, s, e, K)]]
    assert {len(h) for h in history} == {0, 1, 2}
    s, e = next(c for c, h in zip(cells, history) if len(h) == K)  # the history is in the state
    assert np.abs(labelled[s, e] - extractor.extract([str(texts[s, e])]).hidden_state[0]).max() > 1e-3
    app = create_app(spec, ServerSettings(env=ENV), extractor=extractor)
    server, thread, port = serve_in_thread(app)
    try:
        with HiddenStateClient(f"http://127.0.0.1:{port}") as client:
            served = client.hidden_states(observations=np.stack([sym_rows[c] for c in cells]), history=history)
    finally:
        server.should_exit = True
        thread.join(10)
    np.testing.assert_allclose(served, labelled.reshape(T * E, -1), rtol=1e-6, atol=1e-6)

    # evaluation: `hsrl eval`'s segment (greedy, a fixed linear policy), its states recorded at each refresh
    class Policy:
        network = net
        W = jax.random.normal(jax.random.PRNGKey(3), (env.info.obs_shape[0], env.info.num_actions))

        def forward(self, memory, start, obs, hidden):
            return memory, obs @ self.W, jnp.zeros(len(obs))

        def initial_carry(self, n):
            return jnp.zeros((n, 1))

    class Recorder(AblatedHidden):
        calls = []

        def __call__(self, sym, mask, pixels=None, history=None):
            states = super().__call__(sym, mask, pixels, history=history)
            self.calls.append((np.array(sym), np.array(mask), states))
            return states

    recorder = Recorder(live, "real", stats, None, 0)
    segment = make_segment(env, Policy(), recorder, skip_n=1, length=T, greedy=True, frames=False)
    _, outs = segment(initial_carry(env, Policy(), True, seed=5, history=K))
    assert len(recorder.calls) == T and all(mask.all() for _, mask, _ in recorder.calls)
    eval_sym = np.stack([c[0] for c in recorder.calls])
    eval_states = np.stack([c[2] for c in recorder.calls])
    outs = jax.device_get(outs)
    assert outs["done"][:-1].any()
    labelled = _label_sequence(extractor, _write_sequence(tmp_path / "eval", eval_sym, outs["action"],
                                                          outs["done"], 4), tmp_path / "eval_labelled")
    np.testing.assert_allclose(eval_states, labelled, rtol=1e-6, atol=1e-6)


def test_an_online_run_with_history_resumes_with_its_history(tmp_path, monkeypatch):
    """The runner's history is part of the checkpointed training state: a run stopped after its first update resumes
    from it (the saved history fits the resumed run's runner) and finishes."""
    import hsrl.rl.ppo as ppo
    import hsrl.rl.resume as resume
    from hsrl.errors import Preempted

    class StopAtOnce:  # a preemption asked before the first update: the loop saves after it and stops
        requested = "SIGTERM"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    flags = dict(env=ENV, envs=2, steps=48, num_steps=8, skip_n=2, num_minibatches=1, width=16, history=1,
                 template="short", max_episode_steps=6, out=str(tmp_path / "run"), progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(resume, "Preemption", StopAtOnce)
        with pytest.raises(Preempted):
            ppo.train_online(ppo.OnlineConfig(**flags))
    summary = ppo.train_online(ppo.OnlineConfig(**flags))
    assert summary["resumed_from"] == 16 and summary["steps"] == 48
    spec = ExtractionSpec.from_json(json.loads(next((tmp_path / "run" / "checkpoints").glob("*.json")).read_text())
                                    ["spec_json"])
    assert spec.history == 1
