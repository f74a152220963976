"""`hsrl eval`: run a trained policy in its env and report returns, achievements and Craftax score,
with ablations that show whether the policy really uses the hidden state.

Hidden states come from `hsrl.rl.live` exactly as in online training (`LiveHidden` with a `ServerSource`
for `--server URL`, spec checked against the checkpoint's before anything runs, else an `ExtractorSource`
computing them in-process). They refresh every `--skip-n` steps and at once when an episode resets
(default skip-n: the checkpoint's online setting, else 1 = every step, as offline data were labelled).

Ablations act on what the network reads (its normalised hidden input):
  real      the policy's own hidden states
  zero      all zeros (the raw state set to the normalisation mean)
  shuffled  at each refresh, every environment gets another environment's real state
  constant  one state for all, from a fixed text (`--constant-text`); for specs that read images and for
            control policies, the first observation of environment 0 (a fixed frame, with its text for image+text)
  text:FILE one ablation per non-blank line of FILE, named `text:FILE:LINE`: one state for all, the line's text put
            in the observation's place by the same prompt program and extractor as the real states (no history, no
            future); `text:FILE:LINE` alone evaluates that line (`parse_ablations`). For specs that read text.
Cross-source evaluation (`--states-from SPEC --cross-source`): the policy reads states of another spec than it was
trained on (e.g. a policy trained on hindsight labels, whose states cannot be computed while playing, evaluated with
forecast states), normalised by its training statistics; refused without --cross-source where the specs differ, and
the report names both sources and their difference (`state_sources`).
A control policy (`hsrl experiment`'s control arm) reads a fixed random projection of its observation
(`hsrl.data.projection`) in place of an LLM's state, refreshed on the same schedule.
Every ablation replays the same environment seeds, so the rows differ only by the hidden states.
Episodes: every environment plays a fixed quota of `--episodes` (split as evenly as possible, as Stable-Baselines3's
`evaluate_policy`), each to its end, and the scores are over exactly those (`QuotaEpisodes`); keeping the first N
episodes to finish would over-sample short episodes, which in Craftax have low returns. eval.json's
`episode_selection` records the rule and the quotas.
A policy trained on hidden states without an extraction spec (imported from another tool by `hsrl import`: the
states are foreign) names no spec to compute live states by: `--spec` must name it (the JSON of
`hsrl.llm.ExtractionSpec`, or a file holding it), else eval refuses before any work. A `--spec` beside a
checkpoint's own spec must agree with it (or `--allow-spec-mismatch`).
A recurrent policy (`--policy gru`) carries its GRU state through each segment and from one segment to the
next, zeroed where an episode starts, as in training. A gated policy's (`--fusion gated`) learned gate is reported
beside the ablations (`gate` and `gate_travel` in eval.json, a sentence in eval.md): one that stayed near 0 says the
policy does not need its hidden state only where its run could have moved it (`gate_travel`, the summed learning rate
of its logit, at least 6); otherwise the sentence says it could not have moved and does not read it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hsrl.atomic import write_text_atomic
from hsrl.env import craftax_score, make_env
from hsrl.errors import InputError
from hsrl.redact import public_config
from hsrl.llm.flags import CacheFlags
from hsrl.rl.live import ExtractorSource, History, LiveHidden, Runner, ServerSource, refresh

ABLATIONS = ("real", "zero", "shuffled", "constant")
TEXT_ABLATION = "text:"  # `text:FILE`: one ablation per line of FILE (`parse_ablations`)
DEFAULT_CONSTANT_TEXT = "You are in a Craftax world. Nothing is known about your surroundings."


def parse_ablations(value: str, flag: str = "--ablation") -> dict[str, str | None]:
    """The ablations a comma-separated list names, in order: each of `ABLATIONS` (-> None), and for each
    `text:FILE` one ablation per non-blank line of FILE (UTF-8), named `text:FILE:LINE` (LINE counted from 1 in the
    file) -> the line's text; `text:FILE:LINE` names that line alone (what an experiment passes on to each run).
    `InputError` (one line) for an unknown name, a missing or unreadable file, a file without text or an empty
    line."""
    out: dict[str, str | None] = {}
    for item in (a.strip() for a in value.split(",")):
        if not item:
            continue
        if item.startswith(TEXT_ABLATION):
            out.update(_text_lines(item[len(TEXT_ABLATION):], flag))
        elif item in ABLATIONS:
            out[item] = None
        else:
            raise InputError(f"{flag} {value!r}: {item!r} is not an ablation; expected a comma-separated list of "
                             f"{', '.join(ABLATIONS)} and text:FILE (one ablation per line of FILE)")
    if not out:
        raise InputError(f"{flag} {value!r}: expected a comma-separated list of {', '.join(ABLATIONS)} and text:FILE")
    return out


def _text_lines(name: str, flag: str) -> dict[str, str]:
    """{`text:FILE:LINE`: text} of `text:FILE` (every non-blank line) or `text:FILE:LINE` (that line)."""
    path, line = name, None
    if not Path(name).is_file():
        head, _, tail = name.rpartition(":")
        if not (head and tail.isdigit() and Path(head).is_file()):
            raise InputError(f"{flag} text:{name}: no such file (text:FILE evaluates the state of each line of FILE)")
        path, line = head, int(tail)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{flag} text:{path}: cannot read it as UTF-8 text ({err})") from None
    texts = {f"{TEXT_ABLATION}{path}:{i}": text for i, text in enumerate(lines, 1) if text.strip()}
    if line is not None:
        label = f"{TEXT_ABLATION}{path}:{line}"
        if label not in texts:
            raise InputError(f"{flag} {label}: {path} has no text on line {line} ({len(lines)} lines)")
        return {label: texts[label]}
    if not texts:
        raise InputError(f"{flag} text:{path}: the file holds no text (one text per line, each its own ablation)")
    return texts


def text_ablation_states(spec_json: str | None, texts: dict[str, str], where: str, device: str | None = None
                         ) -> dict[str, np.ndarray]:
    """{name: raw (H,) state} of text ablations without a live source (offline evaluation on stored states): each text
    in the observation's place by the prompt program and model of `spec_json`, the spec of the stored states (no
    history, no future, as `LiveHidden.text_states`). `InputError` for states without a spec, a control's projection
    or a spec that reads images."""
    from hsrl.data.projection import is_projection_spec
    from hsrl.llm.spec import ExtractionSpec

    if not texts:
        return {}
    if spec_json is None or is_projection_spec(spec_json):
        raise InputError(f"{where}: text ablations compute a text's state by the states' extraction spec, and these "
                         f"states have " + ("a control's projection" if spec_json else "none"))
    spec = ExtractionSpec.from_json(spec_json)
    if spec.reads_images:
        raise InputError(f"{where}: its model reads images; text ablations need a spec that reads text only")
    from hsrl.llm import make_extractor

    states = make_extractor(spec, device=device).extract(list(texts.values())).hidden_state
    return dict(zip(texts, states.astype(np.float32)))


def read_spec_json(value: str, flag: str) -> str:
    """The extraction spec a flag names, as canonical JSON: the JSON itself, a file holding it, or a labelled
    dataset folder or chunk file (the spec in its metadata). `InputError` (one line) otherwise."""
    from hsrl.llm.spec import ExtractionSpec

    text, path = value, Path(value)
    if not value.lstrip().startswith("{"):
        if path.is_dir() or path.suffix == ".npz":
            from hsrl.data import DataFileError, list_chunks, read_meta

            try:
                first = path if path.is_file() else list_chunks(path)[0]
                text = read_meta(first).spec_json
            except (DataFileError, OSError) as err:
                raise InputError(f"{flag} {value!r}: {err}") from None
            if text is None:
                raise InputError(f"{flag} {value!r}: the data is not labelled (no extraction spec in {first.name})")
        elif path.is_file():
            text = path.read_text()
        else:
            raise InputError(f"{flag} {value!r}: neither JSON, a JSON file nor a labelled dataset")
    try:
        return ExtractionSpec.from_json(text).to_json()
    except (ValueError, TypeError) as err:
        raise InputError(f"{flag}: not an extraction spec ({err})") from None


def state_sources(trained: str | None, evaluated: str | None, trained_from: str, evaluated_from: str) -> dict:
    """Where a policy's training states and its evaluation states come from (eval.json's `states`): each one's spec
    hash and summary (`spec_summary`) and origin, the fields in which they differ with both values, and
    `cross_source` (they differ)."""
    from hsrl.llm.spec import difference_detail, spec_differences, spec_hash, spec_summary

    differ = spec_differences(trained, evaluated)
    return {"cross_source": bool(differ),
            "trained": {"from": trained_from, "spec_hash": None if trained is None else spec_hash(trained),
                        "summary": spec_summary(trained)},
            "evaluated": {"from": evaluated_from, "spec_hash": None if evaluated is None else spec_hash(evaluated),
                          "summary": spec_summary(evaluated)},
            "differ": differ, "detail": difference_detail(trained, evaluated, differ)}


def sources_sentence(sources: dict) -> str:
    """eval.md's line naming the training and evaluation sources of the hidden states and how they differ."""
    trained, evaluated = sources["trained"], sources["evaluated"]
    if not sources["cross_source"]:
        return (f"States: {evaluated['from']} gives the spec the policy was trained on ({trained['summary']}): not a "
                f"cross-source evaluation.")
    return (f"Cross-source evaluation: the policy was trained on states of {trained['summary']} (from "
            f"{trained['from']}) and is evaluated with states of {evaluated['summary']} (from {evaluated['from']}), "
            f"normalised by its training statistics; train/eval spec difference: {sources['detail']}.")


@dataclass(frozen=True)
class EvalConfig(CacheFlags):
    """Evaluate a checkpoint with hidden-state ablations; writes JSON, a markdown table and a PNG chart."""

    checkpoint: str = field(metadata={"positional": True, "help": "run folder, checkpoints folder or checkpoint file"})
    episodes: int = field(default=10, metadata={
        "help": "episodes per ablation: a fixed quota per environment, split as evenly as possible (environment i "
                "plays (episodes + i) // envs, as SB3's evaluate_policy), each played to its end; the summary is over "
                "exactly these (not the first to finish, which would over-sample short episodes)"})
    envs: int = field(default=8, metadata={
        "help": "parallel environments (at most --episodes are run: one with a quota of 0 would add nothing)"})
    server: str | None = field(default=None, metadata={"help": "hidden-state server URL (default: compute in-process)"})
    token: str | None = field(default=None, metadata={"help": "bearer token of the server (or env HSRL_SERVE_TOKEN)"})
    ablation: str = field(default=",".join(ABLATIONS), metadata={
        "help": "comma-separated: real,zero,shuffled,constant and text:FILE (one ablation per non-blank line of FILE, "
                "named text:FILE:LINE: the line's text in the observation's place, through the same prompt program and "
                "model as the real states; text:FILE:LINE for one line)"})
    constant_text: str = field(default=DEFAULT_CONSTANT_TEXT, metadata={"help": "text whose state the constant ablation uses (specs that read images use environment 0's first frame)"})
    skip_n: int | None = field(default=None, metadata={"help": "LLM refresh period (default: the checkpoint's, else 1)"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "cut episodes at this length (default: Craftax's 10000)"})
    max_steps: int = field(default=20_000, metadata={
        "help": "give up after this many steps per environment (each plays its quota of episodes one after another)"})
    greedy: bool = field(default=False, metadata={"help": "take the most likely action instead of sampling"})
    video: bool = field(default=False, metadata={"help": "save environment 0's first episode per ablation as a GIF"})
    allow_spec_mismatch: bool = field(default=False, metadata={"help": "run even if the server's spec differs"})
    spec: str | None = field(default=None, metadata={
        "help": "the extraction spec of the policy's hidden states, as JSON or a JSON file (hsrl.llm.ExtractionSpec; "
                "default: the checkpoint's): needed for a policy trained on imported hidden states, which carry none"})
    states_from: str | None = field(default=None, metadata={
        "help": "evaluate with the hidden states of this extraction spec instead of the training one: JSON, a JSON "
                "file, or a labelled dataset (its spec), e.g. forecast states for a policy trained on hindsight "
                "labels; where it differs from the training spec it needs --cross-source", "metavar": "SPEC"})
    cross_source: bool = field(default=False, metadata={
        "help": "allow --states-from to differ from the spec the policy was trained on (a cross-source evaluation: "
                "eval.json and eval.md name both sources and the fields that differ)", "flag_only": True})
    device: str | None = field(default=None, metadata={"help": "LLM device for in-process extraction"})
    seed: int = field(default=0, metadata={"help": "environment and sampling seed"})
    out: str | None = field(default=None, metadata={"help": "output folder (default: RUN/eval inside the evaluated "
                                                            "run, so evaluating two runs never mixes them)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self) -> None:
        """Every flag before any work: counts, ablations, the checkpoint, the device, and the server (one /health
        request with a short timeout)."""
        from hsrl.llm.models import check_device
        from hsrl.rl.checkpoint import resolve_checkpoint

        for name in ("episodes", "envs", "max_steps", "skip_n", "max_episode_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        self.ablations()
        resolve_checkpoint(self.checkpoint)  # FileNotFoundError naming the path
        check_device(self.device)
        if self.server:
            from hsrl.serve.client import HiddenStateClient

            with HiddenStateClient(self.server, token=self.token) as client:
                client.check_reachable()
        from hsrl.rl.checkpoint import read_checkpoint_meta
        from hsrl.rl.networks import NetworkConfig

        meta = read_checkpoint_meta(self.checkpoint)
        if NetworkConfig.from_dict(meta["network"]).uses_hidden:
            live = self.live_spec_json(meta.get("spec_json"), meta["path"])
            if self.ablation_texts():
                self.check_text_ablations(live, meta["path"])
        elif self.states_from is not None or self.cross_source:
            raise InputError(f"{meta['path']} reads no hidden state (a baseline): --states-from and --cross-source "
                             f"do not apply")

    def check_text_ablations(self, spec_json: str | None, where) -> None:
        """Text ablations put a text in the observation's place: the live spec must read text (not a control
        policy's projection, not images alone)."""
        from hsrl.data.projection import is_projection_spec
        from hsrl.llm.spec import ExtractionSpec

        if is_projection_spec(spec_json):
            raise InputError(f"{where} is a control policy (a random projection of the observation, no LLM): it has "
                             f"no state for a text, so text ablations do not apply")
        if ExtractionSpec.from_json(spec_json).reads_images:
            raise InputError(f"{where}: its model reads images; text ablations give a text in the observation's "
                             f"place and need a spec that reads text only (input 'text')")

    def live_spec_json(self, checkpoint_spec: str | None, where) -> str | None:
        """The spec live hidden states are computed by: the checkpoint's, `--spec`, or `--states-from`. A checkpoint
        without one (trained on imported, foreign states) needs `--spec`; a `--spec` that differs from the
        checkpoint's is refused naming the fields unless --allow-spec-mismatch; a `--states-from` that differs is a
        cross-source evaluation, refused naming the fields unless --cross-source. A checkpoint trained on states
        that cannot be computed live (imported text, hindsight labels) needs `--states-from`. Control policies keep
        their projection."""
        from hsrl.data.projection import is_projection_spec
        from hsrl.llm.spec import check_live_text, difference_detail, spec_differences

        if is_projection_spec(checkpoint_spec):
            if self.states_from is not None or self.cross_source:
                raise InputError(f"{where} is a control policy (it reads a random projection of the observation, not "
                                 f"an LLM's state): --states-from and --cross-source do not apply")
            return checkpoint_spec
        if self.states_from is not None:
            if self.spec is not None:
                raise InputError("--spec and --states-from: give one (--states-from names the states to evaluate "
                                 "with; --spec the spec of a policy trained on states that carry none)")
            if checkpoint_spec is None:
                raise InputError(f"{where} was trained on hidden states without an extraction spec, so no difference "
                                 f"to --states-from can be named: give their spec with --spec")
            named = read_spec_json(self.states_from, "--states-from")
            check_live_text(named, "--states-from")
            differ = spec_differences(checkpoint_spec, named)
            if differ and not self.cross_source:
                raise InputError(f"--states-from {self.states_from}: these states are not of the spec {where} was "
                                 f"trained on (fields that differ: {difference_detail(checkpoint_spec, named, differ)})"
                                 f"; evaluating a policy with states of another source is a cross-source evaluation: "
                                 f"pass --cross-source to run it")
            return named
        if self.cross_source:
            raise InputError("--cross-source goes with --states-from SPEC, the states to evaluate with")
        check_live_text(checkpoint_spec, str(where))  # live states render with hsrl.text, and know no future
        named = None
        if self.spec is not None:
            named = read_spec_json(self.spec, "--spec")
            check_live_text(named, "--spec")
        if checkpoint_spec is None:
            if named is None:
                raise InputError(f"{where} was trained on hidden states without an extraction spec (foreign states, "
                                 f"imported by `hsrl import` from another tool), so nothing says how to compute them "
                                 f"live: name the spec that made them with --spec (JSON or a file of "
                                 f"hsrl.llm.ExtractionSpec: model, layer, tokens, pooling, ...)")
            return named
        if named is not None:
            differ = spec_differences(checkpoint_spec, named)
            if differ and not self.allow_spec_mismatch:
                raise InputError(f"--spec differs from the spec {where} was trained on in {', '.join(differ)} "
                                 f"(override: --allow-spec-mismatch)")
            return named
        return checkpoint_spec

    def out_dir(self) -> Path:
        """--out, or RUN/eval of the evaluated run (the run folder of the checkpoint)."""
        if self.out is not None:
            return Path(self.out)
        from hsrl.rl.checkpoint import CHECKPOINT_DIR, resolve_checkpoint

        folder = resolve_checkpoint(self.checkpoint).parent
        return (folder.parent if folder.name == CHECKPOINT_DIR else folder) / "eval"

    def ablations(self) -> tuple[str, ...]:
        """The ablations asked, in order, text:FILE expanded to one per line (`parse_ablations`)."""
        return tuple(parse_ablations(self.ablation))

    def ablation_texts(self) -> dict[str, str]:
        """{name: text} of the text ablations asked (`parse_ablations`)."""
        return {name: text for name, text in parse_ablations(self.ablation).items() if text is not None}


class AblatedHidden:
    """Host callback: the hidden states an ablation hands the policy for the environments asked for.
    `text_states`: the raw state of each text ablation (`text:FILE:LINE`), handed to every environment."""

    def __init__(self, live: LiveHidden, ablation: str, stats, constant_state: np.ndarray | None, seed: int,
                 text_states=None):
        self.live, self.ablation, self.stats = live, ablation, stats
        self.constant_state = constant_state
        self.text_states = dict(text_states or {})
        self.rng = np.random.default_rng(seed)
        self.reads_images, self.hidden_size = live.reads_images, live.hidden_size

    def __call__(self, sym: np.ndarray, mask: np.ndarray, pixels: np.ndarray | None = None,
                 history=None) -> np.ndarray:
        n, h = len(mask), self.hidden_size
        more = {} if history is None else {"history": history}  # the runner carries history only for such specs
        if self.ablation == "real":
            return self.live(sym, mask, pixels, **more)
        if self.ablation == "zero":
            return np.broadcast_to(self.stats.mean, (n, h)).astype(np.float32)
        if self.ablation == "constant":
            return np.broadcast_to(self.constant_state, (n, h)).astype(np.float32)
        if self.ablation in self.text_states:
            return np.broadcast_to(self.text_states[self.ablation], (n, h)).astype(np.float32)
        if self.ablation != "shuffled":
            raise ValueError(f"ablation {self.ablation!r}: not one of {', '.join(ABLATIONS)} or a text ablation given "
                             f"its state")
        # shuffled: all real states, then a derangement
        entries = () if history is None else (self.live.entries(history, np.arange(n)),)
        states = self.live.states(np.asarray(sym), pixels, *entries)
        perm = (np.arange(n) + self.rng.integers(1, n)) % n if n > 1 else np.arange(n)
        return states[perm].astype(np.float32)


def make_segment(env, policy, hidden_fn, skip_n: int, length: int, greedy: bool, frames: bool):
    """Jitted `(runner) -> (runner, outputs)` over `length` steps; the LLM is called through `hidden_fn`
    (`refresh` of `hsrl.rl.live`; None for a policy that reads no hidden state)."""
    uses_hidden = hidden_fn is not None
    render = _pixel_renderer(env) if frames else None

    def step(carry, _):
        runner, (memory, start) = carry
        runner = refresh(runner, hidden_fn, skip_n)
        key, k_act, k_env = jax.random.split(runner.key, 3)
        memory, logits, _ = policy.forward(memory, start, runner.obs, runner.hidden if uses_hidden else None)
        action = jnp.argmax(logits, -1) if greedy else jax.random.categorical(k_act, logits)
        obs, env_state, reward, done, info = env.step(k_env, runner.env_state, action)
        out = {"done": done, "action": action, "episode_return": info["episode_return"],
               "episode_length": info["episode_length"], "achievements": info["achievements"]}
        if render is not None:
            out["frame"] = render(jax.tree.map(lambda x: x[0], env_state.env_state))
        return (runner.advance(env, env_state, obs, info, done, key, action), (memory, done)), out

    # carry: (Runner, (policy memory, episode-start marks)); the memory is a placeholder for feed-forward policies
    return jax.jit(lambda carry: jax.lax.scan(step, carry, None, length=length))


def _pixel_renderer(env):
    info = env.info
    if info.classic:
        from craftax.craftax_classic.constants import BLOCK_PIXEL_SIZE_AGENT
        from craftax.craftax_classic.renderer import make_craftax_pixel_renderer
    else:
        from craftax.craftax.constants import BLOCK_PIXEL_SIZE_AGENT
        from craftax.craftax.renderer import make_craftax_pixel_renderer
    render = make_craftax_pixel_renderer(BLOCK_PIXEL_SIZE_AGENT)
    return lambda state: jnp.clip(render(state), 0, 255).astype(jnp.uint8)


SEGMENT_STEPS = 64
EPISODE_RULE = "fixed quota per environment (as SB3's evaluate_policy), each episode played to its end"
HALVES_RULE = "episode j of environment i in half (i + j) % 2 (j counted from 0 within the environment's quota)"


def episode_quotas(episodes: int, envs: int) -> np.ndarray:
    """How many episodes each of `envs` environments plays so that they add up to `episodes`, split as evenly as
    possible as Stable-Baselines3's `evaluate_policy` does: environment i plays (episodes + i) // envs (the last
    episodes % envs environments one more; 0 for the first envs - episodes when there are more environments than
    episodes)."""
    if episodes < 0 or envs < 1:
        raise ValueError(f"episode_quotas: episodes must be >= 0 and envs >= 1, got {episodes} and {envs}")
    return (episodes + np.arange(envs)) // envs


class QuotaEpisodes:
    """Per environment, its first `quota[i]` finished episodes, gathered segment by segment from (T, E) outputs.

    Why a quota: keeping the first N episodes to finish over all environments (time-major finishing order) keeps
    more episodes of the environments whose episodes end early and drops the long episodes still running when the
    N-th one ends, so it over-samples short episodes (in Craftax: the agents that die early, with low returns).
    With a fixed quota per environment, fixed before anything runs, each environment's j-th episode is in the
    sample whatever its length, and every episode is played to its end: the mean over the kept episodes is an
    unbiased estimate of the mean over episodes. Episodes an environment finishes beyond its quota are ignored.

    Halves (`episodes()["half"]`): episode j of environment i goes to half (i + j) % 2. The split depends only on
    (environment, index within its quota), never on when an episode finished or how long it lasted, so each half is
    itself a fixed-quota sample (unbiased, episodes independent of the other half's); within an environment its
    episodes alternate between the halves (1st, 3rd... in one, 2nd, 4th... in the other), and environments with one
    episode alternate, so the halves' sizes differ by at most one.
    """

    def __init__(self, quota):
        self.quota = np.asarray(quota, np.int64)
        if self.quota.ndim != 1 or (self.quota < 0).any():
            raise ValueError(f"QuotaEpisodes: quota must be one non-negative count per environment, got {quota}")
        self.finished = np.zeros_like(self.quota)  # episodes finished per environment, kept or not
        self._env: list[np.ndarray] = []
        self._index: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {}

    def add(self, done, outputs: dict) -> None:
        """One segment: `done` (T, E), True where an episode ends at that step; `outputs` name -> (T, E, ...) arrays
        of per-step values (read where done: the finished episode's return, length, achievements)."""
        done = np.asarray(done, bool)
        if done.ndim != 2 or done.shape[1] != len(self.quota):
            raise ValueError(f"QuotaEpisodes.add: done must be (T, {len(self.quota)}), got {done.shape}")
        index = self.finished + np.cumsum(done, 0) - 1  # where done: the episode's index within its environment
        t, e = np.nonzero(done & (index < self.quota))
        self._env.append(e)
        self._index.append(index[t, e])
        for name, value in outputs.items():
            value = np.asarray(value)
            if value.shape[:2] != done.shape:
                raise ValueError(f"QuotaEpisodes.add: {name} is {value.shape}, expected (T, E) = {done.shape} first")
            self._values.setdefault(name, []).append(value[t, e])
        self.finished += done.sum(0)

    @property
    def kept(self) -> int:
        """Episodes kept so far (at most sum(quota))."""
        return int(np.minimum(self.finished, self.quota).sum())

    @property
    def complete(self) -> bool:
        """Every environment has finished its quota."""
        return bool((self.finished >= self.quota).all())

    def episodes(self) -> dict[str, np.ndarray]:
        """The kept episodes, ordered by (environment, index within it): each output named in `add`, plus `env`,
        `index` and `half` (0 or 1, see the class)."""
        env = np.concatenate(self._env) if self._env else np.zeros(0, np.int64)
        index = np.concatenate(self._index) if self._index else np.zeros(0, np.int64)
        order = np.lexsort((index, env))
        out = {name: np.concatenate(parts)[order] for name, parts in self._values.items()}
        out.update(env=env[order], index=index[order], half=(env[order] + index[order]) % 2)
        return out


def initial_carry(env, policy, uses_hidden: bool, seed: int, history: int = 0):
    """The segment's first carry: every environment reset by `seed` (the same for every ablation), fresh (its state
    is computed before it acts), with no previous observations (`history`: how many the runner carries)."""
    key = jax.random.PRNGKey(seed)
    k_reset, k_run = jax.random.split(key)
    obs, env_state, info = jax.jit(env.reset)(k_reset)
    sym = info["symbolic_obs"]
    E = env.num_envs
    H = policy.network.hidden_size if uses_hidden else 1
    hidden = jnp.full((E, H), jnp.nan) if uses_hidden else jnp.zeros((E, 1))
    runner = Runner(env_state, obs, sym, hidden, jnp.ones(E, bool), jnp.zeros((), jnp.int32), k_run,
                    History.empty(sym, history))
    return runner, (policy.initial_carry(E), jnp.ones(E, bool))


def evaluate_ablation(env, policy, segment, uses_hidden: bool, config: EvalConfig, ablation: str, out: Path,
                      on_episodes=lambda n: None, history: int = 0, carry=None) -> dict:
    """Every environment plays its quota of `config.episodes` (`episode_quotas`: split as evenly as possible over
    env.num_envs) to its end; the summary is over exactly those episodes (`QuotaEpisodes`: not the first ones to
    finish, which would over-sample short episodes), with scores on two disjoint halves of them. RuntimeError when
    --max-steps steps per environment pass before every quota is met.
    history: previous observations per prompt (the spec's), carried by the runner; carry: the segment's first
    carry (default: `initial_carry` by config.seed)."""
    if carry is None:
        carry = initial_carry(env, policy, uses_hidden, config.seed, history)
    quota = episode_quotas(config.episodes, env.num_envs)
    chosen = QuotaEpisodes(quota)
    frames = []
    steps = 0
    while not chosen.complete and steps < config.max_steps:
        carry, outs = segment(carry)
        outs = jax.device_get(outs)
        done = np.asarray(outs["done"], bool)
        chosen.add(done, {k: outs[k] for k in ("episode_return", "episode_length", "achievements")})
        if config.video and "frame" in outs and not (frames and frames[-1] is None):  # environment 0's first episode
            first_done = np.flatnonzero(done[:, 0])
            stop = first_done[0] + 1 if len(first_done) else len(done)
            frames += list(outs["frame"][:stop])
            if len(first_done):
                frames.append(None)  # episode over
        steps += len(done)
        on_episodes(chosen.kept)
    if not chosen.complete:
        each = f"{quota.min()}" if quota.min() == quota.max() else f"{quota.min()}-{quota.max()}"
        raise RuntimeError(f"{ablation}: only {chosen.kept} of {config.episodes} episodes finished in "
                           f"{config.max_steps} steps per environment (each of {len(quota)} environments plays {each} "
                           f"to its end); raise --max-steps or set --max-episode-steps")
    kept = chosen.episodes()
    n = len(kept["env"])
    returns, ach = kept["episode_return"].astype(np.float64), kept["achievements"].astype(bool)
    rates = ach.mean(0) * 100
    if config.video and frames:
        safe = re.sub(r"[^\w.-]", "_", ablation)  # text:FILE:LINE holds a path
        _save_gif([f for f in frames if f is not None], out / f"episode_{safe}.gif")
    result = {"ablation": ablation, "episodes": n, "return_mean": float(np.mean(returns)),
              "return_std": float(np.std(returns)), "length_mean": float(np.mean(kept["episode_length"])),
              "craftax_score": craftax_score(rates),
              "achievements": {name: float(r) for name, r in zip(env.info.achievement_names, rates)}}
    if n >= 2:  # the same scores on two disjoint halves (QuotaEpisodes' rule): how much evaluation noise moves them
        halves = [kept["half"] == h for h in (0, 1)]
        result["halves"] = {"return_mean": [float(np.mean(returns[h])) for h in halves],
                            "craftax_score": [craftax_score(ach[h].mean(0) * 100) for h in halves]}
    return result


def _save_gif(frames, path: Path) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, [np.asarray(f) for f in frames], duration=0.1)


def gate_sentence(gate: float | None, travel: float | None = None) -> str | None:
    """What a gated policy's learned gate says (None for a policy without one): read only where its run could have
    moved it (`travel`, the summed learning rate of its logit: `hsrl.rl.networks.gate_could_open`), else said so."""
    from hsrl.rl.networks import GATE_LOGIT_INIT, gate_could_open

    if gate is None:
        return None
    what = (f"Gate (--fusion gated): {gate:.4f}, sigmoid of the learned gate that scales the hidden state's projection "
            f"(it starts closed at 0.0025)")
    need = abs(GATE_LOGIT_INIT)
    if travel is None:
        return (f"{what}; not read: the checkpoint does not record how far training could move the gate (its summed "
                f"learning rate), so whether it could have moved at these settings is unknown.")
    if not gate_could_open(travel):
        return (f"{what}; not read: its logit could move at most {travel:.3g} over the run (its summed learning rate) "
                f"and needs {need:g} to reach 0.5, so it could not have moved at these settings; its value says "
                f"nothing about whether the policy needs the state.")
    return (f"{what}; its logit could move up to {travel:.3g} over the run (it needs {need:g} to reach 0.5), so a "
            f"gate that stayed near 0 is the policy saying it does not need the state.")


def episode_selection(episodes: int, envs: int) -> dict:
    """How `evaluate` chooses the episodes it scores (eval.json's `episode_selection`): `envs` environments (never
    more than `episodes`), each playing its quota to its end."""
    return {"rule": EPISODE_RULE, "environments": envs, "quota_per_env": episode_quotas(episodes, envs).tolist(),
            "beyond_quota": "ignored", "halves": HALVES_RULE}


def selection_sentence(selection: dict) -> str:
    """eval.md's line on how the episodes were chosen."""
    quota = selection["quota_per_env"]
    each = f"{min(quota)}" if min(quota) == max(quota) else f"{min(quota)}-{max(quota)}"
    return (f"Episodes: a fixed quota per environment ({each} in each of {selection['environments']}, as SB3's "
            f"evaluate_policy), each played to its end; not the first to finish, which would over-sample short "
            f"episodes.")


def _markdown(results: list[dict], names, gate: float | None = None, selection: dict | None = None,
              gate_travel: float | None = None, sources: dict | None = None) -> str:
    lines = [sources_sentence(sources), ""] if sources is not None else []
    lines += ["| ablation | episodes | return (mean ± std) | length | Craftax score |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['ablation']} | {r['episodes']} | {r['return_mean']:.2f} ± {r['return_std']:.2f} | "
                     f"{r['length_mean']:.0f} | {r['craftax_score']:.2f} |")
    texts = [r for r in results if "text" in r]
    if texts:
        lines += ["", "Text ablations: each text's state, put in the observation's place by the same prompt program "
                      "and model as the real states, handed to every environment:", ""]
        lines += [f"- {r['ablation']}: {_quoted(r['text'])}" for r in texts]
    if selection is not None:
        lines += ["", selection_sentence(selection)]
    lines += ["", "Success rate per achievement (%):", "",
              "| achievement | " + " | ".join(r["ablation"] for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for name in names:
        if any(r["achievements"][name] > 0 for r in results):
            lines.append(f"| {name} | " + " | ".join(f"{r['achievements'][name]:.0f}" for r in results) + " |")
    if gate is not None:
        lines += ["", gate_sentence(gate, gate_travel)]
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    """A chart's label of an ablation: a text ablation by its file's name (not its folder) and line."""
    if not name.startswith(TEXT_ABLATION):
        return name
    path, _, line = name[len(TEXT_ABLATION):].rpartition(":")
    return f"{TEXT_ABLATION}{Path(path).name}:{line}"


def _quoted(text: str, limit: int = 120) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_short(r["ablation"]) for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(names, [r["return_mean"] for r in results], yerr=[r["return_std"] for r in results], capsize=4,
          color="#4c72b0")
    a.set_title("episode return (error bar: ±1 std over episodes)", fontsize=9)
    a.set_ylabel("return")
    b.bar(names, [r["craftax_score"] for r in results], color="#dd8452")
    b.set_title("Craftax score", fontsize=9)
    b.set_ylabel("score (0-100)")
    for ax in (a, b):
        ax.grid(axis="y", alpha=0.3)
        if len(names) > 4:
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"hidden-state ablations ({results[0]['episodes']} episodes each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(config: EvalConfig) -> dict:
    import os

    from tqdm.auto import tqdm

    from hsrl.rl.checkpoint import load_policy

    config.check()
    ablations = config.ablations()
    policy = load_policy(config.checkpoint)
    train = (policy.meta or {}).get("train_config") or {}
    skip_n = config.skip_n or int(train.get("skip_n", train.get("hidden_skip_n", 1)))  # online's, or AWR's
    envs = min(config.envs, config.episodes)  # more environments than episodes would have quota 0: not run
    env = make_env(policy.env_name, envs, with_symbolic=True, max_timesteps=config.max_episode_steps)
    if tuple(env.info.obs_shape) != tuple(policy.network.obs_shape):
        raise InputError(f"the checkpoint's network reads {policy.network.obs_shape}, {policy.env_name} gives "
                         f"{env.info.obs_shape}")
    live = None
    if policy.uses_hidden:
        from hsrl.data.projection import ObservationProjection, ProjectionSource, is_projection_spec

        spec_json = config.live_spec_json(policy.spec_json, config.checkpoint)  # checked by config.check() too
        if is_projection_spec(policy.spec_json):  # a control policy: its input is computed from the observation
            if config.server:
                raise InputError(f"{config.checkpoint} is a control policy (it reads a random projection of the "
                                 "observation, not an LLM's state): evaluate it without --server")
            source = ProjectionSource(ObservationProjection.from_spec_json(policy.spec_json))
        elif config.server:
            from hsrl.serve.client import HiddenStateClient

            client = HiddenStateClient(config.server, token=config.token or os.environ.get("HSRL_SERVE_TOKEN"))
            client.check_spec(spec_json, allow=config.allow_spec_mismatch)  # before anything runs
            source = ServerSource(client)
            policy.check_compatible(hidden_size=source.hidden_size, what=f"the server {config.server}")
        else:
            from hsrl.llm import ExtractionSpec, make_extractor

            from hsrl.llm.models import check_model_available

            spec = ExtractionSpec.from_json(spec_json)
            check_model_available(spec.model)  # the checkpoint's model, here: one line at once when it is not
            source = ExtractorSource(make_extractor(spec, cache=config.state_cache(), device=config.device))
            flag = "--states-from" if config.states_from is not None else "--spec" if config.spec is not None else None
            if flag is not None:  # a spec the user named: its model and layer must give the trained width
                policy.check_compatible(hidden_size=source.hidden_size, what=f"{flag} ({spec.model})")
        live = LiveHidden(env.info.variant, policy.hidden_stats, source)
    else:
        ablations = ("real",)  # a baseline reads no hidden state: nothing to ablate
    texts = config.ablation_texts() if live is not None else {}
    text_states = {}
    if texts:  # each text's state, by the live spec's prompt program and model (checked to read text)
        config.check_text_ablations(live.spec_json, config.checkpoint)
        text_states = dict(zip(texts, live.text_states(list(texts.values()))))
    constant = None
    if live is not None and "constant" in ablations:
        if live.reads_images or live.reads_observations:  # environment 0's first observation (evaluation seed)
            obs0, _, info0 = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(config.seed))[0])
            constant = live.states(np.asarray(info0["symbolic_obs"])[:1], np.asarray(obs0)[:1])[0]
        else:
            constant = live.text_states([config.constant_text])[0]
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=config.episodes * len(ablations), unit="episode", desc="eval", disable=not config.progress)
    results = []
    # one compiled segment serves every ablation: the host callback switches what it hands back
    fn = (AblatedHidden(live, "real", policy.hidden_stats, constant, config.seed, text_states)
          if live is not None else None)
    segment = make_segment(env, policy, fn, skip_n, SEGMENT_STEPS, config.greedy, config.video)
    for i, name in enumerate(ablations):
        bar.set_postfix(ablation=name)
        if fn is not None:
            fn.ablation = name
            fn.rng = np.random.default_rng(config.seed)
        t0 = time.perf_counter()
        base = config.episodes * i
        r = evaluate_ablation(env, policy, segment, fn is not None, config, name, out,
                              on_episodes=lambda n, base=base: bar.update(base + n - bar.n),
                              history=live.history if live is not None else 0)
        r["seconds"] = time.perf_counter() - t0
        if name in texts:
            r["text"] = texts[name]
        results.append(r)
    bar.close()
    report = {"checkpoint": str(config.checkpoint), "env": policy.env_name, "uses_hidden": policy.uses_hidden,
              "spec_hash": (policy.meta or {}).get("spec_hash"), "skip_n": skip_n, "gate": policy.gate,
              "gate_travel": policy.gate_travel, "config": public_config(config),
              "episode_selection": episode_selection(config.episodes, envs), "results": results}
    if config.states_from is not None and live is not None:  # which states were trained on, which evaluated with
        named = "JSON" if config.states_from.lstrip().startswith("{") else config.states_from
        report["states"] = state_sources(policy.spec_json, live.spec_json, f"checkpoint {config.checkpoint}",
                                         f"--states-from {named}")
    write_text_atomic(out / "eval.json", json.dumps(report, indent=1))
    write_text_atomic(out / "eval.md", _markdown(results, env.info.achievement_names, policy.gate,
                                                 report["episode_selection"], policy.gate_travel,
                                                 report.get("states")))
    _chart(results, out / "ablations.png")
    return report


def run_eval(config: EvalConfig) -> int:
    report = evaluate(config)
    print(_markdown(report["results"], [], report.get("gate"), report.get("episode_selection"),
                    report.get("gate_travel"), report.get("states"))[: -1])
    print(f"wrote {config.out_dir()}/eval.json, eval.md, ablations.png")
    return 0
