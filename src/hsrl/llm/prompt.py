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

Any change to the text of a template (here or in `fewshot.py`) must bump its entry in TEMPLATE_VERSIONS.
"""

from dataclasses import dataclass
from functools import lru_cache

from hsrl.llm.fewshot import EXAMPLES

TEMPLATE_VERSIONS = {"chat": 1, "short": 1}

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
