import hashlib
import re

import pytest

from hsrl.env.catalog import env_info
from hsrl.llm.fewshot import EXAMPLES
from hsrl.llm.prompt import QUESTION, SHORT_INSTRUCTION, TEMPLATE_VERSIONS, build_template, system_prompt
from hsrl.text import COORDINATE_HELP, MAP_HEADER
from tiny_qwen import train_tokenizer

ENV = {"classic": "Craftax-Classic-Symbolic-v1", "craftax": "Craftax-Symbolic-v1"}
VIEW = {"classic": (3, 4), "craftax": (4, 5)}  # max |row|, max |col| of the local view
FOOTER_KEYS = {
    "classic": ["Inventory", "Health", "Facing", "Time", "Sleeping"],
    "craftax": ["Inventory", "Health", "Mana", "Facing", "Time", "Sleeping", "Spells learned", "Floor"],
}
# sha256 of each template's text (plain layout) per variant. If you changed a prompt on purpose, bump its
# TEMPLATE_VERSIONS entry in hsrl/llm/prompt.py and pin the new hashes here.
PINNED = {
    ("chat", 1): {"classic": "985365cf6a72a5a6", "craftax": "4931baeb72951a0d"},
    ("short", 1): {"classic": "c553072af855d91e", "craftax": "c553072af855d91e"},
}


@pytest.mark.parametrize("variant", ["classic", "craftax"])
def test_system_prompt_lists_actions_coordinates_and_examples(variant):
    text = system_prompt(variant)
    info = env_info(ENV[variant])
    line = next(l for l in text.splitlines() if l.startswith("Actions"))
    assert line.endswith(", ".join(info.action_names) + ".")
    assert COORDINATE_HELP in text
    for obs, answer in EXAMPLES[variant]:
        assert obs in text and answer in text


@pytest.mark.parametrize("variant", ["classic", "craftax"])
def test_fewshot_examples_follow_the_renderer_format(variant):
    max_row, max_col = VIEW[variant]
    actions = env_info(ENV[variant]).action_names
    for obs, answer in EXAMPLES[variant]:
        lines = obs.split("\n")
        assert lines[0] == MAP_HEADER
        tiles = [l for l in lines[1:] if re.fullmatch(r"-?\d+, -?\d+: [a-z_ ]+", l)]
        cells = [tuple(int(v) for v in l.split(":")[0].split(", ")) for l in tiles]
        assert cells == sorted(cells), "map lines are sorted by row, then column"
        assert all(abs(r) <= max_row and abs(c) <= max_col for r, c in cells)
        assert [l.split(":")[0] for l in lines[1 + len(tiles) :]] == FOOTER_KEYS[variant]
        action = re.fullmatch(r".*Action: ([a-z_]+)", answer, flags=re.S)
        assert action and action.group(1) in actions


@pytest.mark.parametrize("template", ["chat", "short"])
@pytest.mark.parametrize("variant", ["classic", "craftax"])
def test_prompt_text_is_pinned_to_its_version(template, variant):
    t = build_template(template, variant, tokenizer=None)
    digest = hashlib.sha256((t.prefix + "\0" + t.tail).encode()).hexdigest()[:16]
    assert PINNED[(template, TEMPLATE_VERSIONS[template])][variant] == digest, (
        f"the {template!r} prompt changed: bump TEMPLATE_VERSIONS[{template!r}] and pin the new hash"
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["classic", "craftax"])
def test_fewshot_line_keys_match_a_rendered_observation(variant):
    """The examples' line structure equals that of a real observation rendered by hsrl.text (Craftax reset)."""
    import jax
    import numpy as np

    from hsrl.env.catalog import craftax_env
    from hsrl.text import render_text

    env = craftax_env(ENV[variant])
    obs, _ = env.reset(jax.random.PRNGKey(0), env.default_params)
    lines = render_text(np.asarray(obs), variant)[0].split("\n")
    assert lines[0] == MAP_HEADER
    footer = [l.split(":")[0] for l in lines if not re.fullmatch(r"-?\d+, -?\d+: .+", l)][1:]
    assert footer == FOOTER_KEYS[variant]


def test_chat_template_prefix_is_shared_and_ends_with_generation_prompt():
    tokenizer = train_tokenizer()
    t = build_template("chat", "classic", tokenizer)
    assert t.chat and t.prefix.startswith("<|im_start|>system\n") and system_prompt("classic") in t.prefix
    assert t.prefix.endswith("<|im_start|>user\n")
    assert t.tail == f"\n\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    obs = "Map (...):\n0, 1: tree"
    full = t.render(obs)
    assert full == tokenizer.apply_chat_template(
        [{"role": "system", "content": system_prompt("classic")}, {"role": "user", "content": f"{obs}\n\n{QUESTION}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    start, end = t.observation_span(obs)
    assert full[start:end] == obs


def test_plain_and_short_templates():
    plain = build_template("chat", "craftax", tokenizer=None)
    assert not plain.chat and plain.prefix.startswith(system_prompt("craftax"))
    assert plain.tail.endswith("Answer:")
    short = build_template("short", "classic")
    assert short.render("obs") == f"obs\n{SHORT_INSTRUCTION}"
    with pytest.raises(ValueError):
        build_template("long", "classic")


def test_prompt_only_last_reads_the_newline_after_think():
    """With a thinking generation prompt ('<think>\\n'), prompt-only 'last' pools the '\\n' token after '<think>'."""
    from hsrl.llm.tokens import encode_prompts, prefix_ids, prompt_only_ranges

    tokenizer = train_tokenizer()
    t = build_template("chat", "classic", tokenizer)
    rows, ranges = encode_prompts(tokenizer, t, prefix_ids(tokenizer, t, True), True, ["0, 1: tree"])
    (start, end), = prompt_only_ranges("last", [len(rows[0])], ranges)
    assert (start, end) == (len(rows[0]) - 1, len(rows[0]))
    assert tokenizer.decode(rows[0][start:end]) == "\n"
    assert tokenizer.decode(rows[0][start - 1:start]) == "<think>"
