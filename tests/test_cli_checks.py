"""A new user's mistakes: every verb checks its flags before any work or folder (one line, exit 2); a missing
model, CUDA that is not there and a server that does not answer fail at once; every default shows in --help and
the README's commands parse with the verbs' parsers. No test here opens a network connection (HF_HUB_OFFLINE=1,
set by conftest; the server tests use a free loopback port)."""

import dataclasses
import json
import re
import shlex
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from hsrl.cli import VERBS, build_parser, load, main
from hsrl.docs import hsrl_commands

README = Path(__file__).resolve().parent.parent / "README.md"
CLASSIC = "Craftax-Classic-Symbolic-v1"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two tiny Classic chunks (2 envs x 8 steps) collected by random play."""
    from hsrl.data.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("raw")
    collect(CollectConfig(env=CLASSIC, envs=2, steps=32, chunk_steps=8, out=str(out), seed=1, progress=False))
    return out


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"hsrl {verb}: error: ") and err.count("\n") == 1, err
    return err


# verb -> (arguments with one bad flag, the output path that must not appear). {raw}: a real dataset, {tmp}: tmp_path.
BAD_FLAGS = {
    "envs": (["--env", "Craftax-Nope-v1"], None),
    "collect": (["--envs", "0", "--out", "{tmp}/out"], "out"),
    "label": (["{raw}", "{tmp}/out", "--tokens", "0"], "out"),
    "extract": (["{raw}", "{tmp}/out", "--pooling", "median"], "out"),
    "prompt": (["{raw}", "--row", "-1"], None),
    "online": (["--num-minibatches", "3", "--no-hidden", "--out", "{tmp}/out"], "out"),
    "eval": (["{tmp}/run", "--episodes", "0", "--out", "{tmp}/out"], "out"),
    "import": (["{tmp}/src", "{tmp}/out", "--num-envs", "0"], "out"),
    "returns": (["{raw}", "--gamma", "1.5"], None),
    "stats": (["{raw}", "--std-floor", "0", "--out", "{tmp}/out/stats.json"], "out"),
    "train-awr": (["{raw}", "--steps", "0", "--out", "{tmp}/out"], "out"),
    "plot": (["{raw}", "--smooth", "1.5", "--out", "{tmp}/out"], "out"),
    "serve": (["--port", "70000"], None),
    "make-model": (["no-such-reference", "{tmp}/out"], "out"),
    "experiment": (["--offline", "{raw}", "--seeds", "0", "--out", "{tmp}/out"], "out"),
    "probe": (["{raw}", "--test-fraction", "1.5", "--out", "{tmp}/out"], "out"),
    "quickstart": (["--epsilon", "2", "--out", "{tmp}/out"], "out"),
    "docs": (["nope"], None),
}


def test_every_verb_is_in_the_bad_flag_table():
    assert set(BAD_FLAGS) == set(VERBS)


@pytest.mark.parametrize("verb", sorted(BAD_FLAGS))
def test_every_verb_rejects_a_bad_flag_before_creating_output(verb, raw, tmp_path, capsys):
    args, created = BAD_FLAGS[verb]
    args = [a.format(raw=raw, tmp=tmp_path) for a in args]
    before = {p: p.stat().st_mtime_ns for p in Path(raw).iterdir()}
    start = time.perf_counter()
    assert main([verb, *args]) == 2
    assert time.perf_counter() - start < 10, "a bad flag fails before any work"
    _one_line_error(capsys, verb)
    if created:
        assert not (tmp_path / created).exists(), f"hsrl {verb} made {created} before refusing a bad flag"
    assert {p: p.stat().st_mtime_ns for p in Path(raw).iterdir()} == before, "the input was not touched"


def test_a_missing_model_fails_offline_in_one_line_within_2_s(raw, tmp_path, capsys):
    out = tmp_path / "out"
    import hsrl.data.label  # noqa: F401  (the verb's module, as `hsrl label` has it loaded before running)

    start = time.perf_counter()
    assert main(["label", str(raw), str(out), "--model", "no-such-model"]) == 2
    seconds = time.perf_counter() - start
    err = _one_line_error(capsys, "label")
    assert seconds < 2.0, f"{seconds:.1f} s"
    for looked in ("not a registry name (minilm", "no local folder", "hub id no-such-model not in the local cache",
                   "hub is not reachable (HF_HUB_OFFLINE is set)"):
        assert looked in err
    assert not out.exists()
    # a local path that is not a model folder, and a name that cannot be a hub id
    (tmp_path / "empty").mkdir()
    assert main(["online", "--model", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no config.json" in _one_line_error(capsys, "online")
    assert main(["serve", "--model", "no such/model/here"]) == 2
    assert "not a HuggingFace hub id" in _one_line_error(capsys, "serve")


def test_the_hub_counts_as_unreachable_from_dns_alone(monkeypatch):
    """Without the offline variables only the hub host's name is resolved: an unresolvable endpoint is reported
    without any connection being attempted."""
    from hsrl.llm.models import hub_unreachable

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    start = time.perf_counter()
    why = hub_unreachable(timeout=1.5)
    assert why is not None and "no-such-host.invalid" in why and time.perf_counter() - start < 2.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_device_cuda_without_cuda_is_one_line_before_work(raw, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for verb, args in (("label", [str(raw), str(tmp_path / "out")]), ("extract", [str(raw), str(tmp_path / "out")]),
                       ("online", ["--out", str(tmp_path / "out")])):
        assert main([verb, *args, "--device", "cuda"]) == 2
        assert "CUDA is not available on this machine" in _one_line_error(capsys, verb)
        assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_with_no_server_listening_fails_at_once(tmp_path, capsys):
    """`eval --server URL` with nothing listening: one /health request, one line, no output folder."""
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "step_000000001.json").write_text("{}")  # found by name; the server is checked before it is read
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    assert main(["eval", str(tmp_path / "run"), "--server", url]) == 2
    assert time.perf_counter() - start < 10
    err = _one_line_error(capsys, "eval")
    assert f"no hidden-state server answers at {url}" in err and "hsrl serve" in err
    assert not (tmp_path / "run" / "eval").exists()


def test_client_retries_are_shown_as_they_happen(capsys):
    from hsrl.serve.client import HiddenStateClient, ServerError

    with HiddenStateClient(f"http://127.0.0.1:{_free_port()}", timeout=1.0, retries=2, backoff=0.01) as client:
        with pytest.raises(ServerError, match="gave up after 3 attempts"):
            client.health()
    err = capsys.readouterr().err
    assert "retry 1/2" in err and "retry 2/2" in err and "ConnectError" in err


def test_eval_writes_inside_the_evaluated_run_by_default(tmp_path):
    from hsrl.evaluate import EvalConfig

    for name in ("a", "b"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "step_000000005.json").write_text("{}")
    a, b = (EvalConfig(str(tmp_path / n)).out_dir() for n in ("a", "b"))
    assert a == tmp_path / "a" / "eval" and b == tmp_path / "b" / "eval"
    file_ = EvalConfig(str(tmp_path / "a" / "checkpoints" / "step_000000005.json")).out_dir()
    assert file_ == tmp_path / "a" / "eval"
    assert EvalConfig(str(tmp_path / "a"), out=str(tmp_path / "x")).out_dir() == tmp_path / "x"


def test_one_default_env_and_an_output_default_for_every_run():
    """The same default --env in every verb that has one (the CPU-friendly Classic symbolic env); every verb that
    writes a run folder defaults its --out."""
    for verb, (target, _, _) in VERBS.items():
        fields = {f.name: f for f in dataclasses.fields(load(target))}
        if "env" in fields and fields["env"].default is not None:
            assert fields["env"].default == CLASSIC, verb
        if "out" in fields and not fields["out"].metadata.get("positional"):
            assert fields["out"].default is not dataclasses.MISSING, f"hsrl {verb} --out has no default"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_shows_every_default_the_same_way(verb):
    """Every flag with a default value says it in --help, switches as on/off."""
    parser = build_parser(verb)
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    fields = {f.name: f for f in dataclasses.fields(load(VERBS[verb][0]))}
    for action in sub._actions:
        if action.dest not in fields or not action.option_strings or action.default is None:
            continue
        assert "(default: " in (action.help or ""), f"hsrl {verb} {action.option_strings[0]} hides its default"
        if isinstance(action.default, bool):
            assert re.search(r"\(default: (on|off)", action.help) or "(default: on;" in action.help, action.help


def _readme_commands() -> list[str]:
    """Every `hsrl ...` command of the README's ```bash blocks (continuation lines joined, comments cut)."""
    return hsrl_commands(README.read_text())


def test_readme_commands_parse_with_their_verbs_parsers():
    """The README's commands are ones the CLI takes: each parses with its verb's parser (flags exist, values have
    the right types, required arguments are there). `...` stands for flags left out and is dropped."""
    commands = _readme_commands()
    assert len(commands) >= 20
    verbs_seen = set()
    for command in commands:
        argv = [a for a in shlex.split(command)[1:] if a != "..."]
        verb = argv[0]
        assert verb in VERBS, command
        verbs_seen.add(verb)
        try:
            build_parser(verb).parse_args(argv)
        except SystemExit as exit_:
            raise AssertionError(f"README command does not parse: {command}") from exit_
    assert {"collect", "label", "extract", "train-awr", "eval", "serve", "online"} <= verbs_seen


def test_awr_weight_ess_says_when_the_weighting_does_nothing():
    """weight_ess is 1 when every advantage is equal (behaviour cloning) and drops when they spread; the note
    that flags it appears exactly then."""
    import jax.numpy as jnp

    from hsrl.rl.awr import Batch, awr_loss
    from hsrl.rl.metrics import METRICS, weighting_note

    def apply_fn(params, obs, hidden):  # a value of 0 everywhere: the advantage is the return
        return jnp.zeros((len(obs), 3)), jnp.zeros(len(obs))

    obs, action = jnp.zeros((64, 2)), jnp.zeros(64, jnp.int32)
    same = Batch(obs, action, jnp.full(64, 0.5), None)
    spread = Batch(obs, action, jnp.asarray(np.linspace(-20, 20, 64), jnp.float32), None)
    _, m_same = awr_loss(None, apply_fn, same, beta=10.0, max_weight=20.0)
    _, m_spread = awr_loss(None, apply_fn, spread, beta=1.0, max_weight=20.0)
    assert float(m_same["weight_ess"]) == pytest.approx(1.0, abs=1e-6)
    assert 0 < float(m_spread["weight_ess"]) < 0.5
    assert "weight_ess" in METRICS
    note = weighting_note({k: float(v) for k, v in m_same.items()})
    assert note is not None and "behaviour cloning" in note
    assert weighting_note({k: float(v) for k, v in m_spread.items()}) is None
    assert weighting_note({"weight_ess": None}) is None


def test_plot_leaves_out_flat_zero_achievements_and_flags_behaviour_cloning(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "wall_time": 0.0, "actor_loss": 1.0 / s, "weight_ess": 0.999, "advantage_std": 0.1,
              "achievements/collect_wood": 0.0, "achievements/place_table": 0.1 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert "achievements_place_table.png" in names and "achievements_collect_wood.png" not in names
    assert "left out 1 achievement curves that stay at 0 in every run: collect_wood" in out
    assert "behaviour cloning" in out


def test_an_unknown_flag_is_named_with_the_verbs_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "run", "--ablations", "real"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: hsrl eval" in err
    assert "hsrl eval: error: unrecognized arguments: --ablations real" in err
    with pytest.raises(SystemExit):
        main(["--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_extract_of_unlabelled_data_is_one_line_before_any_output(raw, tmp_path, capsys):
    assert main(["extract", str(raw), str(tmp_path / "out"), "--layer", "2"]) == 2
    assert "is not labelled" in _one_line_error(capsys, "extract") and not (tmp_path / "out").exists()


# ---- the first hour's tracebacks, each one line, exit 2, before any work or folder -----------------------------------


@pytest.mark.parametrize("verb", ["label", "online", "serve"])
def test_a_layer_the_model_does_not_have_is_one_line_before_any_work(verb, raw, tmp_path, capsys):
    args = {"label": [str(raw), str(tmp_path / "out")], "online": ["--out", str(tmp_path / "out")],
            "serve": ["--port", "0"]}[verb]
    start = time.perf_counter()
    assert main([verb, *args, "--layer", "99"]) == 2
    assert time.perf_counter() - start < 10
    err = _one_line_error(capsys, verb)
    assert "--layer 99 is out of range for minilm (6 blocks; valid: -7..6" in err, err
    assert not (tmp_path / "out").exists()


def test_the_registry_model_that_is_not_here_is_not_called_an_unknown_name(raw, tmp_path, capsys):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("Qwen/Qwen3-4B-Thinking-2507", "config.json"), str):
        pytest.skip("the model is in this machine's hub cache")
    assert main(["label", str(raw), str(tmp_path / "out"), "--model", "qwen3-4b-thinking"]) == 2
    err = _one_line_error(capsys, "label")
    assert "not a registry name" not in err and "registry name qwen3-4b-thinking stands for the hub id " \
        "Qwen/Qwen3-4B-Thinking-2507" in err, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def two_episodes(raw, tmp_path_factory):
    """`raw` with (random) hidden states: labelled, but two running episodes only (2 envs, no episode ended)."""
    import shutil

    from hsrl.data import list_chunks, read_chunk
    from hsrl.data.chunks import update_chunk

    out = tmp_path_factory.mktemp("two_episodes")
    rng = np.random.default_rng(0)
    for path in list_chunks(raw):
        shutil.copy(path, out / path.name)
        chunk = read_chunk(out / path.name, ["done"])
        update_chunk(out / path.name, {"hidden_state": rng.standard_normal((len(chunk["done"]), 8)).astype(np.float32),
                                       "done": np.zeros_like(chunk["done"])})
    return out


def test_probe_of_too_few_episodes_or_pixel_data_is_one_line_before_writing(two_episodes, classic_pixel_dataset,
                                                                           tmp_path, capsys):
    assert main(["probe", str(two_episodes), "--out", str(tmp_path / "out")]) == 2
    assert "too few episodes to split by episode: 2" in _one_line_error(capsys, "probe")
    assert main(["probe", str(classic_pixel_dataset), "--out", str(tmp_path / "out")]) == 2
    assert "probe decodes symbolic observations; this is pixels data" in _one_line_error(capsys, "probe")
    assert not (tmp_path / "out").exists()


def test_quickstart_checks_its_model_and_output_before_any_work(tmp_path, capsys, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    monkeypatch.chdir(tmp_path)
    models = ["nobody/no-such-model"]
    if not isinstance(try_to_load_from_cache("Qwen/Qwen3-4B-Thinking-2507", "config.json"), str):
        models.append("Qwen/Qwen3-4B-Thinking-2507")
    for model in models:
        start = time.perf_counter()
        assert main(["quickstart", "--model", model, "--out", str(tmp_path / "qs")]) == 2
        assert time.perf_counter() - start < 10
        assert f"--model {model}: " in _one_line_error(capsys, "quickstart")
    (tmp_path / "file").write_text("mine")
    assert main(["quickstart", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in _one_line_error(capsys, "quickstart")
    assert (tmp_path / "file").read_text() == "mine"
    assert main(["quickstart", "--envs", "0"]) == 2
    _one_line_error(capsys, "quickstart")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "no folder is made before the checks pass"


def test_experiment_of_unlabelled_data_makes_no_folder(raw, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "--offline", str(raw), "--seeds", "1"]) == 2  # default --out runs/experiment
    assert "missing" in _one_line_error(capsys, "experiment")
    assert list(tmp_path.iterdir()) == [], "nothing (runs/.../worker.txt) is made before the data check passes"


@pytest.mark.parametrize("verb, resumes", [("envs", False), ("label", True)])
def test_ctrl_c_is_one_line_with_exit_130(verb, resumes, raw, tmp_path, capsys, monkeypatch):
    import hsrl.data.label
    import hsrl.env.cli

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(hsrl.env.cli, "run_envs", interrupted)
    monkeypatch.setattr(hsrl.data.label, "run_label", interrupted)
    args = {"envs": [], "label": [str(raw), str(tmp_path / "out")]}[verb]
    assert main([verb, *args]) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"hsrl {verb}: interrupted; rerun the same command") and err.count("\n") == 1, err
    assert ("resume" in err) == resumes


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hsrl {version('hsrl')}"
