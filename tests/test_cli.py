"""The command line: every verb's parser builds from its config, required flags are required by argparse,
user errors are one line and bugs keep their traceback."""

import dataclasses

import pytest

from hsrl.cli import VERBS, build_parser, load, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_builds_its_parser(verb, capsys):
    """`hsrl VERB --help` builds the parser from the verb's config (importing its run function too) and shows
    every field as a flag or positional argument."""
    config_target, run_target, summary = VERBS[verb]
    config_cls = load(config_target)
    assert dataclasses.is_dataclass(config_cls) and callable(load(run_target)) and summary
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(config_cls):
        name = field.name if field.metadata.get("positional") else "--" + field.name.replace("_", "-")
        assert name in text, f"hsrl {verb} --help does not show {name}"
    assert verb in build_parser().format_help()


def test_one_spelling_for_the_baseline_and_the_llm_seed():
    """--no-hidden is the baseline switch of every verb that has one; --seed is not the LLM's sampling seed."""
    for verb in ("online", "train-awr", "stats"):
        args = build_parser(verb).parse_args([verb, "--no-hidden"] + (["DATA", "--out", "o"] if verb == "train-awr"
                                                                     else ["DIR"] if verb == "stats" else []))
        assert args.hidden is False
    args = build_parser("online").parse_args(["online", "--seed", "1"])
    assert args.seed == 1 and args.llm_seed == 0
    config = load(VERBS["online"][0])(seed=1)
    assert config.extraction_spec("classic").seed == 0


def test_required_arguments_are_required_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["label", str(tmp_path)])
    assert exit_.value.code == 2 and "out_dir" in capsys.readouterr().err


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    assert main(["envs", "--env", "Craftax-Nope-v1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hsrl envs: error: unknown environment 'Craftax-Nope-v1'") and err.count("\n") == 1

    def broken(config):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr("hsrl.env.cli.run_envs", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["envs"])
