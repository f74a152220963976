"""The prompt builder of every backend: system prompt (rules, coordinates, actions, few-shot examples) + the current observation.

Two templates:

- 'chat': a system message with the game's rules, the text renderer's coordinate convention, the action list
  (generated from the env's actions), the achievements and the few-shot examples, then a user message holding the
  observation and the question. With a tokenizer that has a chat template, the messages go through
  `apply_chat_template(..., add_generation_prompt=True)`, so the prompt ends with the assistant's generation prompt.
  Thinking models: the template's thinking block is left as the template makes it. Qwen3-Thinking-2507's
  generation prompt opens `<think>\\n` itself, so generated tokens are the model's reasoning (then `</think>` and the
  answer if the token budget allows) and prompt-only 'last' pooling reads the state of the prompt's last token, the
  '\\n' after `<think>` (tested with a Qwen-style tokenizer, where `<think>` is a token of its own). Hybrid
  templates (Qwen3 with `enable_thinking`) get their default (thinking on). Few-shot examples live in the system
  message, not as earlier chat turns, because chat templates rewrite earlier assistant turns (Qwen3 drops their
  reasoning). Without a chat template the same text is laid out plainly, ending in "Answer:".
- 'short': the observation and a one-line instruction, for encoder models and small context windows.

Every prompt is `prefix + observation + tail`: the prefix (everything before the observation) is identical for all
samples, which is what the backend's shared-prefix cache reuses. The observation is inserted verbatim. Causal models
tokenize prefix and `observation + tail` separately and concatenate the ids (the boundary is the same for every
sample, with or without the prefix cache); encoder models tokenize the whole prompt at once.

Vision-language models (`spec.input` 'image' or 'image+text', `build_vision_template`) get the same two templates
with the image in the user message: 'chat' has a system message with the same rules, actions and achievements (but
no few-shot examples, which are text observations) and says that observations are images; the user message is the
image, then for 'image+text' the text observation, then the question. The tokenizer's chat template renders the image
as its placeholder (Qwen-VL: `<|vision_start|><|image_pad|><|vision_end|>`), which the backend expands to one token
per image patch group; `PromptTemplate.image_token` names it.

Prompt programs (`PromptProgram`, `prompt_program(spec)`): what a sample's prompt holds besides the fixed prefix.

- History (`spec.history` = K > 0): the observation slot holds the K previous observations of the same episode, oldest
  first, each with the action taken after it (`history_text`), then "Current observation:" and the observation. At
  an episode's start there are fewer (stated in the prompt); none at its first step. The history is per-sample text,
  after the prefix, so the shared-prefix cache is kept. With K = 0 the slot is the observation alone, as before.
- Future (`spec.future` = K > 0, hindsight labels, offline only): the `{future}` placeholder holds the next K
  observations of the same episode in the data, in order, each with the action taken after it (`future_text`); fewer
  where the episode ends or the data stops (the end of the recording or a gap), which the prompt states. The steps
  are found by `hsrl.data.label.row_future`. No live verb can fill it (the future is not known while playing:
  `hsrl.llm.spec.check_live_text`).
- Placeholder templates ('forecast', shipped in `templates/forecast.txt`, 'hindsight', shipped in
  `templates/hindsight.txt`, and 'custom', a user's `--prompt-template FILE`): text with named placeholders
  (`PLACEHOLDERS`) laid out as one user message (through the tokenizer's chat template where it has one, else
  plainly). `{observation}` is required; `{history}` is required with K > 0 (empty with K = 0, else a block ending in
  a blank line); `{future}` is required with future K > 0 and refused without it; unknown placeholders are refused
  (`parse_template`). The text from the first per-sample placeholder (observation, history, future) to the last is the
  per-sample slot; what comes before is the shared prefix, what comes after the tail. The template's text and its
  hash travel in the spec (`template_text`, `template_hash`), so a labelled file or checkpoint says which prompt made
  it and rebuilds it without the file.

'mean' pooling in prompt-only mode pools the per-sample slot: the observation and, with history or future, those.

Any change to the text of a template (here, in `fewshot.py` or `templates/`) must bump its entry in TEMPLATE_VERSIONS.
"""

import hashlib
import string
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from typing import NamedTuple, Sequence

from hsrl.llm.fewshot import EXAMPLES

TEMPLATE_VERSIONS = {"chat": 1, "short": 1, "forecast": 1, "hindsight": 1}
BUILTIN_TEMPLATES = ("chat", "short")  # built in code; 'forecast', 'hindsight' and 'custom' are placeholder templates
PLACEHOLDER_TEMPLATES = ("forecast", "hindsight", "custom")
SHIPPED_TEMPLATES = ("forecast", "hindsight")  # placeholder templates whose text ships in templates/NAME.txt

QUESTION = "What do you see, what should you do next, and which action do you take?"
SHORT_INSTRUCTION = "What should the player do next in this Craftax game?"

_PLACEHOLDER = "\x00HSRL_OBSERVATION\x00"

_ENV_NAMES = {"classic": "Craftax-Classic-Symbolic-v1", "craftax": "Craftax-Symbolic-v1"}

_RULES = {
    "classic": """\
You are playing Craftax-Classic, a 2D survival and crafting game seen from above on a grid (a version of Crafter).
Survive and unlock as many achievements as you can.
- Health, food, drink and energy go from 0 to 9. Food, drink and energy fall over time; when one of them is 0 you \
lose health, otherwise health slowly recovers. Eat a cow (hit it with do) or a ripe plant for food, drink water \
(face it and do) for drink, and sleep to restore energy.
- Moving into a free tile moves you there; moving towards a blocked tile turns you to face it. `do` acts on the \
tile you face: collect a material, hit a creature, eat, drink.
- Tools: collect wood from trees; a crafting table costs wood; next to a table make a wood pickaxe and sword from \
wood. Stone needs a wood pickaxe, coal and iron need a stone pickaxe, diamonds need an iron pickaxe. A furnace \
costs stone and must be placed near a table; iron tools need a table and a furnace nearby plus wood, coal and iron.
- Saplings come from grass; place them on grass and eat the plant once it is ripe.
- Zombies appear on grass, many more at night; skeletons live in the dark tunnels and shoot arrows. Sleeping in the \
open at night is dangerous: enclose yourself with stone first.""",
    "craftax": """\
You are playing Craftax, a 2D survival, crafting and dungeon game seen from above on a grid (an extension of \
Crafter). Survive, go deeper and unlock as many achievements as you can.
- Health, food, drink and energy fall or recover over time; when food, drink or energy is 0 you lose health. Eat \
cows, bats, snails or ripe plants, drink water or potions, and sleep or rest to restore energy.
- Moving into a free tile moves you there; moving towards a blocked tile turns you to face it. `do` acts on the \
tile you face: collect a material, hit a creature, eat, drink, open a chest.
- Tools: collect wood from trees; a crafting table costs wood; next to a table make pickaxes and swords. Stone needs \
a wood pickaxe, coal and iron need a stone pickaxe, diamonds need an iron pickaxe. Iron and diamond tools and armour \
need a table and a furnace nearby. Arrows shoot from a bow; torches light dark floors.
- The world has nine floors joined by ladders. On each floor below the surface, defeat enough creatures to open the \
ladder down; the first visit to a floor gives XP, which levels up dexterity, strength or intelligence. Mana powers \
spells (fireball, iceball) learnt from books; gems and mana enchant swords and armour.
- Monsters grow stronger on deeper floors; zombies roam the surface at night. Do not sleep in the open.""",
}


def _actions_and_achievements(variant: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from hsrl.env.catalog import env_info

    info = env_info(_ENV_NAMES[variant])
    return info.action_names, info.achievement_names


@lru_cache(maxsize=None)
def system_prompt(variant: str) -> str:
    """The 'chat' template's system message for a game variant ('classic' or 'craftax')."""
    from hsrl.text import COORDINATE_HELP

    if variant not in _RULES:
        raise ValueError(f"unknown game variant {variant!r}; expected one of {', '.join(_RULES)}")
    actions, achievements = _actions_and_achievements(variant)
    examples = "\n\n".join(
        f"Example {i}\nObservation:\n{obs}\nAnswer: {answer}" for i, (obs, answer) in enumerate(EXAMPLES[variant], 1)
    )
    return (
        f"{_RULES[variant]}\n\n"
        f"Observations are text. {COORDINATE_HELP}\n\n"
        f"Actions (answer with exactly one of these names): {', '.join(actions)}.\n\n"
        f"Achievements: {', '.join(achievements)}.\n\n"
        f"Answer in a few sentences: what you see, what to do next, then `Action: <name>`.\n\n"
        f"{examples}"
    )


def vision_system_prompt(variant: str, with_text: bool) -> str:
    """The 'chat' template's system message for vision-language models (observations are images, maybe plus text)."""
    from hsrl.text import COORDINATE_HELP

    if variant not in _RULES:
        raise ValueError(f"unknown game variant {variant!r}; expected one of {', '.join(_RULES)}")
    actions, achievements = _actions_and_achievements(variant)
    seen = ("Observations are images of the game: the map around the player, who stands at the centre, with the "
            "inventory and the health, food, drink and energy levels drawn below it.")
    if with_text:
        seen += f" Each image comes with the same observation as text. {COORDINATE_HELP}"
    return (
        f"{_RULES[variant]}\n\n"
        f"{seen}\n\n"
        f"Actions (answer with exactly one of these names): {', '.join(actions)}.\n\n"
        f"Achievements: {', '.join(achievements)}.\n\n"
        f"Answer in a few sentences: what you see, what to do next, then `Action: <name>`."
    )


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with a hole for the observation: prompt = prefix + observation + tail."""

    name: str  # 'chat' or 'short'
    version: int
    prefix: str  # identical for every sample: what the shared-prefix cache holds
    tail: str  # after the observation, up to the end of the prompt (incl. the generation prompt)
    chat: bool  # True when built with the tokenizer's chat template (its special tokens are in the text)
    image_token: str | None = None  # vision templates: the image placeholder token, once in the prefix

    def render(self, observation: str) -> str:
        return self.prefix + observation + self.tail

    def suffix(self, observation: str) -> str:
        """The per-sample part of the prompt."""
        return observation + self.tail

    def observation_span(self, observation: str) -> tuple[int, int]:
        """Character span of the observation in `render(observation)`."""
        return len(self.prefix), len(self.prefix) + len(observation)


def build_template(template: str, variant: str, tokenizer=None) -> PromptTemplate:
    """The prompt template 'chat' or 'short' for a game variant, with `tokenizer`'s chat template if it has one."""
    if template == "short":
        return PromptTemplate("short", TEMPLATE_VERSIONS["short"], "", "\n" + SHORT_INSTRUCTION, chat=False)
    if template != "chat":
        raise ValueError(f"unknown prompt template {template!r}; expected 'chat' or 'short'")
    system = system_prompt(variant)
    user = f"{_PLACEHOLDER}\n\n{QUESTION}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=False,
            add_generation_prompt=True,
        )
        chat = True
    else:
        text = f"{system}\n\nObservation:\n{user}\nAnswer:"
        chat = False
    if text.count(_PLACEHOLDER) != 1:
        raise ValueError("the chat template did not keep the observation placeholder exactly once")
    prefix, tail = text.split(_PLACEHOLDER)
    return PromptTemplate("chat", TEMPLATE_VERSIONS["chat"], prefix, tail, chat)


def build_vision_template(template: str, variant: str, input: str, tokenizer, image_token: str) -> PromptTemplate:
    """The 'chat' or 'short' template for a vision-language model reading `input` ('image' or 'image+text').

    The user message is the image, then the text observation ('image+text'), then the question; the tokenizer's chat
    template renders it (a vision-language model always has one). For input 'image' there is no text observation:
    the whole prompt is the prefix and `render('')` gives it.
    """
    if input not in ("image", "image+text"):
        raise ValueError(f"input={input!r}: a vision template reads 'image' or 'image+text'")
    if template not in TEMPLATE_VERSIONS:
        raise ValueError(f"unknown prompt template {template!r}; expected 'chat' or 'short'")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this vision-language model's tokenizer has no chat template to place the image with")
    question = QUESTION if template == "chat" else SHORT_INSTRUCTION
    text = f"{_PLACEHOLDER}\n\n{question}" if input == "image+text" else question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if template == "chat":
        messages.insert(0, {"role": "system", "content": vision_system_prompt(variant, input == "image+text")})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(image_token) != 1:
        raise ValueError(f"the chat template rendered the image placeholder {image_token!r} "
                         f"{rendered.count(image_token)} times; expected once")
    if input == "image":
        prefix, tail = rendered, ""
    else:
        if rendered.count(_PLACEHOLDER) != 1:
            raise ValueError("the chat template did not keep the observation placeholder exactly once")
        prefix, tail = rendered.split(_PLACEHOLDER)
        if image_token not in prefix:
            raise ValueError("the chat template put the text observation before the image")
    return PromptTemplate(template, TEMPLATE_VERSIONS[template], prefix, tail, chat=True, image_token=image_token)


def build_prompts(observations: list[str], template: str, variant: str, tokenizer=None) -> list[str]:
    """Full prompt strings (for inspection, logging and backends that take text)."""
    t = build_template(template, variant, tokenizer)
    return [t.render(o) for o in observations]


# ---- prompt programs: history and placeholder templates --------------------------------------------------------------

PLACEHOLDERS = {
    "observation": "the current observation as text (required)",
    "history": "the K previous observations of the episode with the action taken after each, oldest first "
               "(--history K; required when K > 0, empty when K = 0)",
    "future": "hindsight (offline labels only): the next K observations of the episode in the data, in order, with "
              "the action taken after each (--future K; required when K > 0, refused when K = 0)",
    "actions": "the game's action names, comma-separated",
    "achievements": "the game's achievement names, comma-separated",
    "rules": "the game's rules and how observations are written (the coordinate convention)",
}
SAMPLE_PLACEHOLDERS = ("observation", "history", "future")  # filled per sample; the others are the same for all
CURRENT_HEADER = "Current observation:\n"
HISTORY_LIMIT = 64  # most previous observations a prompt may hold
FUTURE_LIMIT = 64  # most next observations a hindsight prompt may hold


class TemplateError(ValueError):
    """A placeholder template that cannot be used (unknown or missing placeholder, a lone brace): one line."""


def template_hash(text: str) -> str:
    """The short content hash of a template's text, as recorded in the spec: first 12 hex of SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shipped_template(name: str) -> str:
    """The text of a template shipped with hsrl (`hsrl/llm/templates/NAME.txt`), e.g. 'forecast'."""
    return resources.files("hsrl.llm").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")


Segment = tuple[str, str]  # ("text", literal) or ("field", placeholder name)


def parse_template(text: str, history: int = 0, future: int = 0) -> list[Segment]:
    """A placeholder template's segments; `TemplateError` (one line, naming the line) for a placeholder that is not
    one of `PLACEHOLDERS`, one with a format spec or conversion, a lone brace (write `{{` or `}}` for a literal one),
    no `{observation}` (or more than one), no `{history}` when `history` > 0, or `{future}` without `future` > 0 (or
    no `{future}` with it)."""
    segments: list[Segment] = []
    seen = ""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:  # "Single '}' encountered in format string", "unmatched '{' in format spec", ...
        raise TemplateError(f"{err} (write {{{{ or }}}} for a literal brace)") from None
    for literal, name, spec, conversion in parsed:
        if literal:
            segments.append(("text", literal))
        seen += literal
        if name is None:
            continue
        line = seen.count("\n") + 1
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in PLACEHOLDERS:
            raise TemplateError(f"unknown placeholder {shown} (line {line}); known: {', '.join(PLACEHOLDERS)} "
                                f"(write {{{{ or }}}} for a literal brace)")
        if spec or conversion:
            raise TemplateError(f"placeholder {shown} (line {line}): write it as {{{name}}}, without a format")
        segments.append(("field", name))
        seen += shown
    fields = [v for kind, v in segments if kind == "field"]
    if fields.count("observation") != 1:
        raise TemplateError(f"the template must hold {{observation}} exactly once (it holds it "
                            f"{fields.count('observation')} times)")
    if fields.count("history") > 1:
        raise TemplateError(f"the template holds {{history}} {fields.count('history')} times; at most once")
    if history > 0 and "history" not in fields:
        raise TemplateError(f"the template has no {{history}} placeholder, but the prompt shows {history} previous "
                            f"observations (--history {history}): add {{history}} or use --history 0")
    if fields.count("future") > 1:
        raise TemplateError(f"the template holds {{future}} {fields.count('future')} times; at most once")
    if future > 0 and "future" not in fields:
        raise TemplateError(f"the template has no {{future}} placeholder, but the prompt shows the next {future} "
                            f"observations (--future {future}): add {{future}} or drop --future")
    if future == 0 and "future" in fields:
        raise TemplateError("the template holds {future}, the next steps of the data (hindsight labels), but no "
                            "number of steps is given: `hsrl label --future K` (offline only; the future is not "
                            "known while playing)")
    return segments


def history_text(entries: Sequence[tuple[str, int]], k: int, action_names: Sequence[str]) -> str:
    """The history block: the previous observations of the episode (oldest first) with the action taken after
    each, headed by how many there are of the K asked; '' when K = 0. Ends with a blank line."""
    if k == 0:
        if len(entries):
            raise ValueError(f"{len(entries)} previous observations given, but the prompt shows none (history 0)")
        return ""
    n = len(entries)
    if n > k:
        raise ValueError(f"{n} previous observations given; the prompt shows at most {k}")
    if n == 0:
        return "Earlier observations of this episode: none (the episode starts with the current observation).\n\n"
    head = f"Earlier observations of this episode, oldest first ({n} of the last {k} step{'s' if k > 1 else ''}"
    if n < k:
        head += f"; the episode started {n} step{'s' if n > 1 else ''} before the current observation"
    parts = [head + "):"]
    for j, (text, action) in enumerate(entries):
        action = int(action)
        if not 0 <= action < len(action_names):
            raise ValueError(f"action {action} of a previous observation is not one of the game's "
                             f"{len(action_names)} actions")
        ago = n - j
        parts.append(f"{ago} step{'s' if ago > 1 else ''} ago:\n{text}\nAction taken: {action_names[action]}")
    return "\n\n".join(parts) + "\n\n"


class Future(NamedTuple):
    """One sample's next steps in the data (hindsight): what `{future}` shows."""

    entries: tuple[tuple[str, int], ...] = ()  # (observation text, action taken after it), in order, at most K
    ended: bool = False  # the episode ends with the last step shown (with the current step when none is shown)


def future_text(future: Future | None, k: int, action_names: Sequence[str]) -> str:
    """The future block: the next observations of the episode in the data (oldest first) with the action taken
    after each, headed by how many there are of the K asked and, when the episode ends within them or the data stops
    before K, which; '' when K = 0. Ends with a blank line. None: no next step known (as for a text ablation)."""
    future = Future() if future is None else Future(tuple(future[0]), bool(future[1]))
    n = len(future.entries)
    if k == 0:
        if n:
            raise ValueError(f"{n} next observations given, but the prompt shows none (future 0)")
        return ""
    if n > k:
        raise ValueError(f"{n} next observations given; the prompt shows at most {k}")
    head = "Next steps of this episode in the recorded data (hindsight)"
    if n == 0:
        why = ("the episode ends with the current step" if future.ended else
               "the data stops at the current step: the end of the recording or a gap")
        return f"{head}: none ({why}).\n\n"
    head += f", in order ({n} of the next {k} step{'s' if k > 1 else ''}"
    if future.ended:
        head += "; the episode ends with the last of them"
    elif n < k:
        head += "; the data stops after them: the end of the recording or a gap"
    parts = [head + "):"]
    for j, (text, action) in enumerate(future.entries, 1):
        action = int(action)
        if not 0 <= action < len(action_names):
            raise ValueError(f"action {action} of a next observation is not one of the game's "
                             f"{len(action_names)} actions")
        parts.append(f"{j} step{'s' if j > 1 else ''} later:\n{text}\nAction taken: {action_names[action]}")
    return "\n\n".join(parts) + "\n\n"


@dataclass(frozen=True)
class PromptProgram:
    """What a prompt holds: the template (built-in 'chat' / 'short', or a placeholder template's text), how many
    previous observations each prompt shows and, for hindsight labels, how many next ones. One program fills every
    prompt, for label, serve, online and eval alike: `sample_texts` makes each sample's slot (history + observation
    (+ future)), `template(tokenizer)` the fixed prefix and tail.
    """

    name: str  # 'chat', 'short', 'forecast', 'hindsight' or 'custom'
    version: int | None
    variant: str
    history: int = 0
    text: str | None = None  # placeholder templates: the template's text
    future: int = 0  # next observations each prompt shows (hindsight labels; a placeholder template's {future})

    def __post_init__(self):
        if self.variant not in _RULES:
            raise ValueError(f"unknown game variant {self.variant!r}; expected one of {', '.join(_RULES)}")
        if (self.text is None) != (self.name in BUILTIN_TEMPLATES):
            raise ValueError(f"template {self.name!r}: " + ("a placeholder template needs its text"
                                                            if self.text is None else "a built-in template has no text"))
        if not 0 <= self.history <= HISTORY_LIMIT:
            raise ValueError(f"history={self.history}; expected 0..{HISTORY_LIMIT}")
        if not 0 <= self.future <= FUTURE_LIMIT:
            raise ValueError(f"future={self.future}; expected 0..{FUTURE_LIMIT}")
        if self.future and self.text is None:
            raise ValueError(f"future={self.future}: template {self.name!r} has no {{future}} placeholder; the next "
                             f"steps go into a placeholder template ('hindsight', or your own with {{future}})")
        if self.text is not None:
            parse_template(self.text, self.history, self.future)

    @cached_property
    def _segments(self) -> tuple[list[Segment], list[Segment], list[Segment]]:
        """(prefix, per-sample slot, tail) segments of a placeholder template."""
        segments = parse_template(self.text, self.history, self.future)
        sample = [i for i, (kind, v) in enumerate(segments) if kind == "field" and v in SAMPLE_PLACEHOLDERS]
        return segments[: sample[0]], segments[sample[0] : sample[-1] + 1], segments[sample[-1] + 1 :]

    @cached_property
    def action_names(self) -> tuple[str, ...]:
        return _actions_and_achievements(self.variant)[0]

    def _fixed(self, name: str) -> str:
        from hsrl.text import COORDINATE_HELP

        actions, achievements = _actions_and_achievements(self.variant)
        return {"actions": ", ".join(actions), "achievements": ", ".join(achievements),
                "rules": f"{_RULES[self.variant]}\n\nObservations are text. {COORDINATE_HELP}"}[name]

    def _fill(self, segments: list[Segment], sample: dict[str, str] | None = None) -> str:
        return "".join(v if kind == "text" else sample[v] if v in SAMPLE_PLACEHOLDERS else self._fixed(v)
                       for kind, v in segments)

    def sample_text(self, observation: str, entries: Sequence[tuple[str, int]] = (), future: Future | None = None
                    ) -> str:
        """One sample's slot: its previous observations and actions (oldest first, at most `history`), its
        observation and, with `future`, its next steps in the data (`Future`; None: none known). With history 0 and a
        built-in template: the observation itself."""
        block = history_text(entries, self.history, self.action_names if self.history else ())
        if self.text is None:
            if future is not None and len(future[0]):
                raise ValueError(f"next observations given, but template {self.name!r} shows none")
            return f"{block}{CURRENT_HEADER}{observation}" if self.history else observation
        after = future_text(future, self.future, self.action_names if self.future else ())
        return self._fill(self._segments[1], {"observation": observation, "history": block, "future": after})

    def sample_texts(self, observations: Sequence[str], history: Sequence[Sequence[tuple[str, int]]] | None = None,
                     future: Sequence[Future] | None = None) -> list[str]:
        """Every sample's slot; history: per sample its previous (observation text, action id) pairs, oldest first
        (None: none for any sample, as at an episode's first step); future: per sample its next steps in the data
        (`Future`; None: none known for any sample)."""
        observations = list(observations)
        if history is None:
            if self.text is None and self.history == 0 and future is None:
                return observations
            history = [()] * len(observations)
        if future is None:
            future = [None] * len(observations)
        if len(history) != len(observations) or len(future) != len(observations):
            raise ValueError(f"history for {len(history)} samples and future for {len(future)}, but "
                             f"{len(observations)} observations")
        return [self.sample_text(o, h, f) for o, h, f in zip(observations, history, future)]

    def template(self, tokenizer=None) -> PromptTemplate:
        """The fixed prefix and tail around the per-sample slot (with `tokenizer`'s chat template where it has one;
        a placeholder template is one user message)."""
        if self.text is None:
            return build_template(self.name, self.variant, tokenizer)
        before, _, after = self._segments
        user = self._fill(before) + _PLACEHOLDER + self._fill(after)
        chat = bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))
        if chat:
            user = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                 add_generation_prompt=True)
        if user.count(_PLACEHOLDER) != 1:
            raise ValueError("the chat template did not keep the observation placeholder exactly once")
        prefix, tail = user.split(_PLACEHOLDER)
        return PromptTemplate(self.name, self.version, prefix, tail, chat)

    def render(self, observation: str, entries: Sequence[tuple[str, int]] = (), tokenizer=None,
               future: Future | None = None) -> str:
        """The whole prompt of one sample, as the model reads it."""
        return self.template(tokenizer).render(self.sample_text(observation, entries, future))


def prompt_program(spec, default: str | None = None) -> PromptProgram:
    """The program a spec asks for (`spec.template`, `template_text`, `history`, `future`, `variant`); 'auto'
    resolves to `default` (the backend's choice by model kind)."""
    name = spec.template if spec.template != "auto" else default
    if name is None:
        raise ValueError("template 'auto' is resolved by the backend: pass the default template")
    version = spec.template_version if spec.template != "auto" else TEMPLATE_VERSIONS.get(name)
    return PromptProgram(name, version, spec.variant, int(getattr(spec, "history", 0)),
                         getattr(spec, "template_text", None), int(getattr(spec, "future", 0)))
