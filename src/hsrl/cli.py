"""One command line, `hsrl VERB`, generated from each verb's config dataclass.

Each verb is a config dataclass (its fields are the flags; `metadata={"help": ...}` is the help text,
`metadata={"positional": True}` makes a positional argument) plus a function that runs it. Verbs are
imported only when used, so `hsrl --help` stays fast. A flag without a default is required by the parser.
A config's `check()` method, where it has one, validates every flag before the run function starts (no work
done, no folder made on a bad flag). A user's mistake (`hsrl.errors.UserError`, a missing or existing path) is printed as one line, exit code 2;
any other exception is a bug and keeps its traceback. Ctrl-C (KeyboardInterrupt) prints one line, exit code 130:
the verbs that resume (label, extract, collect, import, train-awr, online, experiment, quickstart) pick up where they
stopped when the same command is run again; `online` stopped by SIGTERM/SIGINT saves first and exits 75. `hsrl --version` prints the installed version.
"""

import argparse
import dataclasses
import importlib
import sys
import types
import typing

from hsrl.errors import Preempted, UserError

# verb -> ("module:ConfigClass", "module:run_function", "one-line summary"). The config lives with the code
# that runs the verb; a run function only reads it (and prints).
VERBS: dict[str, tuple[str, str, str]] = {
    "quickstart": ("hsrl.quickstart:QuickstartConfig", "hsrl.quickstart:run_quickstart",
                   "the whole pipeline at small scale, with a report"),
    "envs": ("hsrl.env.catalog:EnvsConfig", "hsrl.env.cli:run_envs",
             "list the Craftax environments with their actions and achievements"),
    "collect": ("hsrl.data.collect:CollectConfig", "hsrl.rl.cli:run_collect",
                "roll out a policy and write trajectory chunk files"),
    "label": ("hsrl.data.label:LabelConfig", "hsrl.data.label:run_label",
              "add LLM hidden states to a dataset (resumable)"),
    "extract": ("hsrl.data.label:ExtractConfig", "hsrl.data.label:run_extract",
                "re-extract hidden states of labelled data (other layer/pooling)"),
    "prompt": ("hsrl.data.show_prompt:PromptConfig", "hsrl.data.show_prompt:run_prompt",
               "print the exact prompt the model reads for a dataset row (or a text), with its token count"),
    "online": ("hsrl.rl.ppo:OnlineConfig", "hsrl.rl.ppo:run_online",
               "online PPO with live LLM hidden states (or --no-hidden)"),
    "eval": ("hsrl.evaluate:EvalConfig", "hsrl.evaluate:run_eval", "evaluate a policy with hidden-state ablations"),
    "import": ("hsrl.data.importer:ImportConfig", "hsrl.data.cli:run_import",
               "convert trajectory folders written by other tools (trajectories_batch_NNNNNN.npz) into chunks"),
    "returns": ("hsrl.data.returns:ReturnsConfig", "hsrl.data.cli:run_returns",
                "add discounted returns-to-go to a dataset folder's chunks"),
    "stats": ("hsrl.data.stats:StatsConfig", "hsrl.data.cli:run_stats",
              "dataset summary and hidden-state normalisation statistics"),
    "train-awr": ("hsrl.rl.awr:TrainAWRConfig", "hsrl.rl.cli:run_train_awr",
                  "train a policy offline with AWR, with or without hidden states (resumable)"),
    "plot": ("hsrl.rl.plot:PlotConfig", "hsrl.rl.cli:run_plot", "draw learning curves of training runs into PNG files"),
    "serve": ("hsrl.serve.server:ServeConfig", "hsrl.serve.cli:run_serve",
              "serve hidden states over HTTP, batching concurrent requests"),
    "make-model": ("hsrl.llm.make_model:MakeModelConfig", "hsrl.llm.make_model:run_make_model",
                   "write a reference model folder with random weights, real tokenizer and template"),
    "experiment": ("hsrl.experiment.config:ExperimentConfig", "hsrl.experiment.config:run_experiment_cli",
                   "K seeds of baseline and hidden-state arms, ablations, interval estimates (rliable)"),
    "probe": ("hsrl.probe:ProbeConfig", "hsrl.probe:run_probe",
              "linear probes: what the hidden states know about the observation"),
    "docs": ("hsrl.docs:DocsConfig", "hsrl.docs:run_docs",
             "build, check or serve the documentation site (generated reference pages included)"),
}


def load(target: str):
    """The object a "module:name" string names (imported now)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _flag_type(tp):
    """(argparse type, nargs) for a dataclass field annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0])
    if origin in (tuple, list):
        return _flag_type(args[0])[0], "+"
    return tp, None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        help_text = field.metadata.get("help", "")
        tp, nargs = _flag_type(hints[field.name])
        default = None if field.default is dataclasses.MISSING else field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if field.metadata.get("positional") and "nargs" in field.metadata:  # an optional positional (nargs "?")
            parser.add_argument(field.name, type=tp, nargs=field.metadata["nargs"], default=default, help=help_text)
            continue
        if "nargs" in field.metadata:  # optional-value flag, e.g. `--ray` or `--ray ADDRESS`
            parser.add_argument("--" + field.name.replace("_", "-"), type=tp, nargs=field.metadata["nargs"],
                                const=field.metadata.get("const"), default=default, help=help_text,
                                metavar=field.metadata.get("metavar"))
            continue
        if field.metadata.get("positional"):
            parser.add_argument(field.name, type=tp, nargs=nargs, help=help_text)
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.metadata.get("repeat"):  # e.g. `--offline A --offline B`: a tuple of every value given
            parser.add_argument(flag, type=tp, action="append", default=None, help=_with_default(help_text, default),
                                metavar=field.metadata.get("metavar"))
        elif field.metadata.get("flag_only"):  # e.g. `--no-cache`: a switch with no negated form
            parser.add_argument(flag, action="store_true", default=default, help=_with_default(help_text, default))
        elif tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=_with_default(help_text, default))
        else:
            parser.add_argument(
                flag, type=tp, nargs=nargs, default=default, required=default is None and not _optional(hints[field.name]),
                help=_with_default(help_text, default), metavar=field.metadata.get("metavar"),
            )


def _with_default(help_text: str, default) -> str:
    """The help text with its default, the same way for every flag: "(default: VALUE)", "(default: on)" or
    "(default: off)" for switches; a help text that already says its default (e.g. "(default: CUDA when
    available)") is left alone. Flags without a default value (None) say nothing unless their help does."""
    if default is None or "(default:" in help_text:
        return help_text
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    if isinstance(default, (tuple, list)):
        shown = " ".join(map(str, default))
    return f"{help_text} (default: {str(shown).replace('%', '%%')})"  # argparse %-formats help texts


def _optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def config_from_args(config_cls, namespace: argparse.Namespace):
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_cls)}
    for f in dataclasses.fields(config_cls):
        if isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return config_cls(**values)


def version() -> str:
    """hsrl's version, from the installed package's metadata (the source's `__version__` where it is not
    installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hsrl")
    except PackageNotFoundError:
        from hsrl import __version__

        return __version__


# Verbs whose rerun picks up finished work (saved batches, chunks, checkpoints, finished runs).
RESUMING = ("collect", "import", "label", "extract", "train-awr", "online", "experiment", "quickstart")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsrl",
        description="LLM hidden states as inputs to RL policies on Craftax. Run `hsrl VERB --help` for a verb's flags.",
    )
    parser.add_argument("--version", action="version", version=f"hsrl {version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (config_target, _, summary) in VERBS.items():
        if verb is not None and name != verb:
            sub.add_parser(name, help=summary)
            continue
        config_cls = load(config_target)
        p = sub.add_parser(
            name, help=summary, description=(config_cls.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_arguments(p, config_cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `hsrl VERB ...`; returns the exit code (2: a user's mistake, 130: interrupted with Ctrl-C, 75
    (`PREEMPTED_EXIT_CODE`): a run that saved its state on SIGTERM/SIGINT and resumes when rerun)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _main(argv, verb)
    except Preempted as stop:  # a run that saved its state on a signal: a job script requeues on this code
        print(f"hsrl {verb}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # one line, not a traceback: what was saved and how to go on
        name = f"hsrl {verb}" if verb in VERBS else "hsrl"
        again = ("rerun the same command to resume where it stopped" if verb in RESUMING
                 else "rerun the same command to start it again")
        print(f"{name}: interrupted; {again}", file=sys.stderr)
        return 130


def _main(argv: list[str], verb: str | None) -> int:
    parser = build_parser(verb if verb in VERBS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would name the top-level parser; the verb's usage says which flags there are
        verbs = next(a for a in parser._actions if a.dest == "verb").choices
        (verbs[args.verb] if args.verb else parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verb is None:
        parser.print_help()
        return 0
    config_target, run_target, _ = VERBS[args.verb]
    try:
        config = config_from_args(load(config_target), args)
        check = getattr(config, "check", None)
        if check is not None:  # every flag is validated before any work starts or any folder is made
            check()
        result = load(run_target)(config)
    except (UserError, FileNotFoundError, FileExistsError) as err:
        # A mistake in the input: one clear line. Anything else is a bug and keeps its traceback.
        print(f"hsrl {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
