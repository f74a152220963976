"""hsrl.text: symbolic observations -> text, checked against Craftax's own state and text renderer.

States come from random play (plus, for coverage, random inventories and, in full Craftax, a
teleport to every floor below the overworld followed by more random play). One jitted rollout per
game for the whole module; JAX's persistent cache makes reruns cheap.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from hsrl.jaxcache import enable_compilation_cache
from hsrl.text import BACKGROUND_BLOCKS, COORDINATE_HELP, MAP_HEADER, RENDERER_VERSION, render_text

CLASSIC, CRAFTAX = "Craftax-Classic-Symbolic-v1", "Craftax-Symbolic-v1"
NUM_ENVS, STEPS = 8, 40

# Names the text must use, written out here independently of hsrl.text.
CRAFTAX_MOBS = (
    ["zombie", "gnome_warrior", "orc_soldier", "lizard", "knight", "troll", "pigman", "frost_troll"],
    ["cow", "bat", "snail"],
    ["skeleton", "gnome_archer", "orc_mage", "kobold", "archer", "deep_thing", "fire_elemental", "ice_elemental"],
    ["arrow", "dagger", "fireball", "iceball", "arrow", "slimeball", "fireball", "iceball"],
    ["player_" + n for n in ["arrow", "dagger", "fireball", "iceball", "arrow", "slimeball", "fireball", "iceball"]],
)
CRAFTAX_MOB_FIELDS = ("melee_mobs", "passive_mobs", "ranged_mobs", "mob_projectiles", "player_projectiles")
CLASSIC_MOB_FIELDS = (("zombies", "zombie"), ("cows", "cow"), ("skeletons", "skeleton"), ("arrows", "arrow"))
ENCHANT = {0: "", 1: " with fire enchantment", 2: " with ice enchantment"}
TOOL = {1: "wood", 2: "stone", 3: "iron", 4: "diamond"}
ARMOUR = {1: "iron", 2: "diamond"}
POTIONS = ("red", "green", "blue", "pink", "cyan", "yellow")


# ---------------------------------------------------------------------------------------------
# Random play


def _rollout(name: str, randomise) -> tuple[np.ndarray, object]:
    """Obs (N, D) and the matching states (a pytree with leading N) from random play."""
    import jax

    from hsrl.env.catalog import craftax_env, env_info

    enable_compilation_cache()
    env, num_actions = craftax_env(name), env_info(name).num_actions
    params = env.default_params

    @jax.jit
    def segment(state, key):
        def body(state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (NUM_ENVS,), 0, num_actions)
            keys = jax.random.split(k_step, NUM_ENVS)
            _, state, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)
            return state, None

        state, _ = jax.lax.scan(body, state, jax.random.split(key, STEPS))
        return jax.vmap(env.get_obs)(state), state

    key = jax.random.PRNGKey(0)
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(key, NUM_ENVS), params)
    state = jax.device_get(state)  # numpy leaves: every segment call sees the same types, one compile
    obs_list, state_list = [], []
    for i in range(4):
        if i == 2:
            state = jax.device_get(jax.jit(randomise)(state, jax.random.PRNGKey(1)))
        obs, state = jax.device_get(segment(state, jax.random.PRNGKey(10 + i)))
        obs_list.append(obs)
        state_list.append(state)
    obs = np.concatenate(obs_list)
    states = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *state_list)
    return obs, states


def _randint(key, lo, hi, shape, like):
    import jax

    return jax.random.randint(key, shape, lo, hi).astype(like.dtype)


def _randomise_classic(state, key):
    import jax

    keys = iter(jax.random.split(key, 32))
    inv = state.inventory
    new_inv = inv.replace(
        **{f: _randint(next(keys), 0, 10, getattr(inv, f).shape, getattr(inv, f)) for f in _fields(inv)}
    )
    return state.replace(
        inventory=new_inv,
        player_health=_randint(next(keys), 1, 10, state.player_health.shape, state.player_health),
        player_food=_randint(next(keys), 0, 10, state.player_food.shape, state.player_food),
        player_drink=_randint(next(keys), 0, 10, state.player_drink.shape, state.player_drink),
        player_energy=_randint(next(keys), 0, 10, state.player_energy.shape, state.player_energy),
    )


def _randomise_craftax(state, key):
    """Random inventory and attributes; env i goes to floor i + 1 (at its up ladder)."""
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(key, 64))
    n = state.player_level.shape[0]

    def ri(lo, hi, like, shape=None):
        return _randint(next(keys), lo, hi, like.shape if shape is None else shape, like)

    inv = state.inventory
    counts = dict(wood=12, stone=12, coal=5, iron=5, diamond=4, sapling=3, arrows=30, torches=20, ruby=3, sapphire=3)
    new_inv = inv.replace(
        **{f: ri(0, hi, getattr(inv, f)) for f, hi in counts.items()},
        pickaxe=ri(0, 5, inv.pickaxe),
        sword=ri(0, 5, inv.sword),
        bow=ri(0, 2, inv.bow),
        books=ri(0, 3, inv.books),
        armour=ri(0, 3, inv.armour),
        potions=ri(0, 4, inv.potions),
    )
    level = ((jnp.arange(n) + 1) % 9).astype(state.player_level.dtype)
    health = jnp.round(jax.random.uniform(next(keys), (n,), minval=3.0, maxval=9.0) * 10) / 10
    return state.replace(
        inventory=new_inv,
        player_level=level,
        player_position=state.up_ladders[jnp.arange(n), level].astype(state.player_position.dtype),
        player_health=health.astype(state.player_health.dtype),
        player_mana=ri(0, 10, state.player_mana),
        player_xp=ri(0, 4, state.player_xp),
        player_dexterity=ri(1, 6, state.player_dexterity),
        player_strength=ri(1, 6, state.player_strength),
        player_intelligence=ri(1, 6, state.player_intelligence),
        learned_spells=ri(0, 2, state.learned_spells),
        sword_enchantment=ri(0, 3, state.sword_enchantment),
        bow_enchantment=ri(0, 3, state.bow_enchantment),
        armour_enchantments=ri(0, 3, state.armour_enchantments),
        monsters_killed=ri(0, 12, state.monsters_killed),
    )


@pytest.fixture(scope="module")
def classic_play():
    return _rollout(CLASSIC, _randomise_classic)


@pytest.fixture(scope="module")
def craftax_play():
    return _rollout(CRAFTAX, _randomise_craftax)


def _fields(obj) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _take(states, i):
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], states)


# ---------------------------------------------------------------------------------------------
# Parsing hsrl's text

TILE_LINE = re.compile(r"^(-?\d+), (-?\d+): (.+)$")
ROW_LINE = re.compile(r"^(-?\d+): (.+)$")


def _parse_tile(content: str, items: set[str]):
    """'zombie and arrow on torch on grass' -> (('zombie', 'arrow'), 'torch', 'grass'); 'dark' -> 'dark'."""
    if content == "dark":
        return "dark"
    parts = content.split(" on ")
    block, item, mobs = parts[-1], None, ()
    if len(parts) == 3:
        mobs, item = tuple(parts[0].split(" and ")), parts[1]
    elif len(parts) == 2:
        if parts[0] in items:
            item = parts[0]
        else:
            mobs = tuple(parts[0].split(" and "))
    assert len(parts) <= 3, content
    return mobs, item, block


def parse(text: str, items: set[str], cols: int | None = None) -> dict:
    lines = text.split("\n")
    out = {"tiles": {}}
    i = 1
    if lines[0] == MAP_HEADER:
        if lines[1] == "none":
            i = 2
        while m := TILE_LINE.match(lines[i]):
            key = (int(m[1]), int(m[2]))
            assert key not in out["tiles"]
            out["tiles"][key] = _parse_tile(m[3], items)
            i += 1
    else:
        assert lines[0].startswith("Map (every tile"), lines[0]
        while m := ROW_LINE.match(lines[i]):
            names = m[2].split(" | ")
            assert len(names) == cols
            for j, name in enumerate(names):
                out["tiles"][(int(m[1]), j - cols // 2)] = _parse_tile(name, items)
            i += 1
    inv = lines[i].removeprefix("Inventory: ")
    assert lines[i].startswith("Inventory: ")
    out["inventory"] = [] if inv == "empty" else inv.split(", ")
    for line in lines[i + 1 :]:
        key, value = line.split(": ", 1)
        if key in ("Spells learned", "Facing"):
            out[key] = value
        elif key == "Time":
            day, light = value.split(", light level ")
            out["Time"], out["light"] = day, float(light)
        else:
            for part in line.split(", "):
                k, v = part.split(": ")
                out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# What Craftax's state holds, computed from the state alone


def _place_mobs(grid, mobs, player, channel_of, view):
    """Craftax's own mob scatter: negative local indices wrap, out-of-range ones drop, masked set 0."""
    rows, cols = view
    for i in range(mobs.mask.shape[0]):
        local = np.asarray(mobs.position[i]) - np.asarray(player) + np.array([rows // 2, cols // 2])
        on_screen = bool((local >= 0).all() and (local < np.array(view)).all() and mobs.mask[i])
        r, c = int(local[0]), int(local[1])
        if -rows <= r < rows and -cols <= c < cols:
            grid[r, c, channel_of(i)] = on_screen


def expected_from_state(state, classic: bool) -> dict:
    from hsrl.env.catalog import craftax_constants

    const = craftax_constants(classic)
    blocks = [b.name.lower() for b in sorted(const.BlockType, key=lambda b: b.value)]
    view = const.OBS_DIM
    rows, cols = view
    level = None if classic else int(state.player_level)
    world = np.asarray(state.map if classic else state.map[level])
    pos = np.asarray(state.player_position)
    names = []
    mob_grid = np.zeros((rows, cols, 40), dtype=bool)
    if classic:
        for k, (field, name) in enumerate(CLASSIC_MOB_FIELDS):
            _place_mobs(mob_grid, getattr(state, field), pos, lambda i, k=k: k, view)
            names.append(name)
    else:
        for k, field in enumerate(CRAFTAX_MOB_FIELDS):
            mobs = getattr(state, field)
            mobs = type(mobs)(**{f: getattr(mobs, f)[level] for f in _fields(mobs)})
            _place_mobs(mob_grid, mobs, pos, lambda i, k=k, m=mobs: k * 8 + int(m.type_id[i]), view)
            names += CRAFTAX_MOBS[k] + ["?"] * (8 - len(CRAFTAX_MOBS[k]))
    tiles = {}
    for r in range(rows):
        for c in range(cols):
            y, x = pos[0] + r - rows // 2, pos[1] + c - cols // 2
            inside = 0 <= y < world.shape[0] and 0 <= x < world.shape[1]
            block = blocks[world[y, x]] if inside else "out_of_bounds"
            if not classic:
                lit = inside and state.light_map[level][y, x] > 0.05
                if not lit:
                    tiles[(r - rows // 2, c - cols // 2)] = "dark"
                    continue
            item = None
            if not classic and inside and state.item_map[level][y, x] != 0:
                item = const.ItemType(int(state.item_map[level][y, x])).name.lower()
            mobs = tuple(names[k] for k in np.nonzero(mob_grid[r, c])[0])
            tiles[(r - rows // 2, c - cols // 2)] = (mobs, item, block)
    inv = state.inventory
    if classic:
        inventory = [f"{f} {int(getattr(inv, f))}" for f in _fields(inv) if int(getattr(inv, f)) != 0]
    else:
        counts = [(n, getattr(inv, f)) for n, f in [
            ("wood", "wood"), ("stone", "stone"), ("coal", "coal"), ("iron", "iron"), ("diamond", "diamond"),
            ("sapphire", "sapphire"), ("ruby", "ruby"), ("sapling", "sapling"), ("torch", "torches"),
            ("arrow", "arrows"), ("book", "books"),
        ]]
        inventory = [f"{n} {int(v)}" for n, v in counts if int(v) != 0]
        if inv.pickaxe:
            inventory.append(f"{TOOL[int(inv.pickaxe)]}_pickaxe")
        if inv.sword:
            inventory.append(f"{TOOL[int(inv.sword)]}_sword{ENCHANT[int(state.sword_enchantment)]}")
        if inv.bow:
            inventory.append(f"bow{ENCHANT[int(state.bow_enchantment)]}")
        inventory += [f"{p}_potion {int(v)}" for p, v in zip(POTIONS, inv.potions) if v]
        for piece, a, e in zip(("helmet", "chestplate", "leggings", "boots"), inv.armour, state.armour_enchantments):
            if a:
                inventory.append(f"{ARMOUR[int(a)]}_{piece}{ENCHANT[int(e)]}")
    out = {
        "tiles": tiles,
        "inventory": inventory,
        "Health": float(state.player_health),
        "Food": int(state.player_food),
        "Drink": int(state.player_drink),
        "Energy": int(state.player_energy),
        "Facing": const.Action(int(state.player_direction)).name.lower(),
        "light": float(state.light_level),
        "Sleeping": bool(state.is_sleeping),
    }
    if not classic:
        melee_alive = state.melee_mobs.mask[level].sum() > 0
        ranged_alive = state.ranged_mobs.mask[level].sum() > 0
        out |= {
            "Mana": int(state.player_mana),
            "XP": int(state.player_xp),
            "Dexterity": int(state.player_dexterity),
            "Strength": int(state.player_strength),
            "Intelligence": int(state.player_intelligence),
            "Resting": bool(state.is_resting),
            "Spells learned": ", ".join(s for s, on in zip(("fireball", "iceball"), state.learned_spells) if on)
            or "none",
            "Floor": level,
            "Ladder open": bool(state.monsters_killed[level] >= 8),
            "Boss vulnerable": bool(
                not melee_alive and not ranged_alive and state.boss_timesteps_to_spawn_this_round <= 0
            ),
        }
    return out


YES = {"yes": True, "no": False}


def _check_against_state(text: str, state, classic: bool, view: str):
    from hsrl.env.catalog import craftax_constants

    const = craftax_constants(classic)
    items = set() if classic else {i.name.lower() for i in const.ItemType}
    got = parse(text, items, cols=const.OBS_DIM[1])
    want = expected_from_state(state, classic)
    background = set(BACKGROUND_BLOCKS["classic" if classic else "craftax"])
    if view == "interesting":
        want_tiles = {
            k: t for k, t in want["tiles"].items() if t == "dark" or t[0] or t[1] or t[2] not in background
        }
        assert list(got["tiles"]) == sorted(got["tiles"]), "map lines are sorted by row, then col"
    else:
        want_tiles = want["tiles"]
    assert got["tiles"] == want_tiles
    assert got["inventory"] == want["inventory"]
    assert float(got["Health"]) == pytest.approx(want["Health"], abs=0.006)
    full_only = ("Mana", "XP", "Dexterity", "Strength", "Intelligence", "Floor")
    for key in ("Food", "Drink", "Energy") + (() if classic else full_only):
        assert int(got[key]) == want[key], key
    assert got["Facing"] == want["Facing"]
    assert got["light"] == pytest.approx(want["light"], abs=0.006)
    assert got["Time"] == ("night" if want["light"] < 0.5 else "day")
    for key in ("Sleeping",) + (() if classic else ("Resting", "Ladder open", "Boss vulnerable")):
        assert YES[got[key]] == want[key], key
    if not classic:
        assert got["Spells learned"] == want["Spells learned"]


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("view", ["interesting", "full"])
def test_classic_text_holds_the_state(classic_play, view):
    obs, states = classic_play
    texts = render_text(obs, "classic", view=view)
    assert len(texts) == len(obs)
    for i, text in enumerate(texts):
        _check_against_state(text, _take(states, i), classic=True, view=view)


@pytest.mark.parametrize("view", ["interesting", "full"])
def test_craftax_text_holds_the_state(craftax_play, view):
    obs, states = craftax_play
    texts = render_text(obs, "craftax", view=view)
    assert len(texts) == len(obs)
    for i, text in enumerate(texts):
        _check_against_state(text, _take(states, i), classic=False, view=view)


def test_rollouts_cover_what_the_text_must_show(classic_play, craftax_play):
    """The state checks above mean something only if play reached mobs, items, darkness, floors, tools."""
    craftax = "\n".join(render_text(craftax_play[0], "craftax"))
    classic = "\n".join(render_text(classic_play[0], "classic"))
    for needle in (": dark\n", " on path", "ladder_", "_pickaxe", "_potion", "Floor: 3", "Floor: 8", "open: yes"):
        assert needle in craftax, needle
    mobs = "|".join(CRAFTAX_MOBS[0] + CRAFTAX_MOBS[1] + CRAFTAX_MOBS[2])
    assert re.search(rf": ({mobs}) on ", craftax)
    for needle in (": water", ": tree", " on grass", "Inventory: empty", "Inventory: wood"):
        assert needle in classic, needle
    assert re.search(r"_pickaxe [1-9]", classic)
    assert re.search(r": (zombie|cow|skeleton) on ", classic)


def _parse_craftax_text(text: str) -> dict:
    """Craftax's render_craftax_text: tiles keyed by our (row, col), names in our spelling."""
    map_part, rest = text.split("\n\nInventory:\n")
    tiles = {}
    for line in map_part.split("\n")[1:]:
        xy, content = line.split(": ", 1)
        col, row = map(int, xy.split(", "))  # Craftax writes column, then row
        if content == "Darkness":
            tiles[(row, col)] = "dark"
            continue
        parts = content.split(" on ")
        mob = None
        if parts[0][0].isupper():  # mob names are capitalised, items and blocks are not
            mob = parts.pop(0).lower().replace(" ", "_")
            if mob.endswith("_(player)"):
                mob = "player_" + mob.removesuffix("_(player)")
        tiles[(row, col)] = (mob, parts[0] if len(parts) == 2 else None, parts[-1])
    fields, inventory = {}, []
    for line in rest.strip().split("\n"):
        if ": " in line:
            key, value = line.split(": ", 1)
            fields[key] = value
            name = {"Torch": "torch", "Arrow": "arrow", "Book": "book"}.get(key, key.lower().replace(" ", "_"))
            if key in ("Wood", "Stone", "Coal", "Iron", "Diamond", "Sapphire", "Ruby", "Sapling", "Torch", "Arrow",
                       "Book") or key.endswith(" potion"):
                if int(value) != 0:
                    inventory.append((name, f"{name} {int(value)}"))
        else:  # "Iron Pickaxe", "Stone Sword with No enchantment", "Bow with Fire enchantment"
            entry = line.replace(" with No enchantment", "").replace(" enchantment", " enchantment")
            head, _, ench = entry.partition(" with ")
            entry = head.lower().replace(" ", "_") + (f" with {ench.lower()}" if ench else "")
            inventory.append((entry, entry))
    # Craftax lists potions after the tools, armour after the potions: the same order as hsrl.
    return {"tiles": tiles, "inventory": [e for _, e in inventory], "fields": fields}


def test_craftax_text_agrees_with_craftax_renderer(craftax_play):
    from craftax.craftax.constants import ItemType
    from craftax.craftax.renderer import render_craftax_text

    obs, states = craftax_play
    items = {i.name.lower() for i in ItemType}
    picks = np.linspace(0, len(obs) - 1, 6).astype(int)  # natural play and several floors
    ours = render_text(obs[picks], "craftax", view="full")
    for i, text in zip(picks, ours):
        theirs = _parse_craftax_text(render_craftax_text(_take(states, int(i))))
        got = parse(text, items, cols=11)
        assert set(got["tiles"]) == set(theirs["tiles"])
        for key, tile in got["tiles"].items():
            if tile == "dark":
                assert theirs["tiles"][key] == "dark", key
                continue
            mobs, item, block = tile
            assert theirs["tiles"][key] == (mobs[0] if mobs else None, item, block), key  # Craftax shows one mob
        assert got["inventory"] == theirs["inventory"]
        f = theirs["fields"]
        assert float(got["Health"]) == pytest.approx(float(f["Health"]), abs=0.006)
        for key in ("Food", "Drink", "Energy", "Mana", "XP", "Dexterity", "Strength", "Intelligence", "Floor"):
            assert int(got[key]) == int(f[key]), key
        assert got["Facing"] == f["Direction"]
        assert got["light"] == pytest.approx(float(f["Light"]), abs=0.006)
        bools = {"True": True, "False": False}
        assert YES[got["Sleeping"]] == bools[f["Is Sleeping"]]
        assert YES[got["Resting"]] == bools[f["Is Resting"]]
        assert YES[got["Ladder open"]] == bools[f["Ladder Open"]]
        assert YES[got["Boss vulnerable"]] == bools[f["Is Boss Vulnerable"]]
        spells = [s for s, k in (("fireball", "Learned Fireball"), ("iceball", "Learned Iceball")) if bools[f[k]]]
        assert got["Spells learned"] == (", ".join(spells) or "none")


def test_deterministic_and_batch_independent(craftax_play, classic_play):
    for variant, (obs, _) in (("craftax", craftax_play), ("classic", classic_play)):
        for view in ("interesting", "full"):
            first = render_text(obs, variant, view)
            assert render_text(obs.copy(), variant, view) == first
            assert render_text(obs.astype(np.float64), variant, view) == first
            assert [render_text(o, variant, view)[0] for o in obs[:5]] == first[:5]
            assert render_text(obs[::-1], variant, view) == first[::-1]


# ---------------------------------------------------------------------------------------------
# Hand-made observations: the exact format, byte for byte (no Craftax compile)


def _classic_obs(tiles: dict, inventory: dict, health=9, food=7, drink=6, energy=8, direction=3, light=0.85,
                 sleeping=False) -> np.ndarray:
    """A Classic symbolic vector: grass everywhere except `tiles` {(row, col): (block id, mob channel or None)}."""
    from craftax.craftax_classic.constants import BlockType

    rows, cols, nb = 7, 9, len(BlockType)
    grid = np.zeros((rows, cols, nb + 4), dtype=np.float32)
    grid[..., BlockType.GRASS.value] = 1
    for (r, c), (block, mob) in tiles.items():
        grid[r + 3, c + 4, :nb] = 0
        grid[r + 3, c + 4, block] = 1
        if mob is not None:
            grid[r + 3, c + 4, nb + mob] = 1
    names = ["wood", "stone", "coal", "iron", "diamond", "sapling", "wood_pickaxe", "stone_pickaxe",
             "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword"]
    inv = np.array([inventory.get(n, 0) for n in names], dtype=np.float16) / 10.0
    intr = np.array([health, food, drink, energy], dtype=np.float16) / 10.0
    return np.concatenate(
        [grid.ravel(), inv, intr, np.eye(4)[direction - 1], [light, float(sleeping)]]
    ).astype(np.float32)


def test_classic_format_exact():
    from craftax.craftax_classic.constants import BlockType as B

    obs = _classic_obs(
        {(-1, 0): (B.TREE.value, None), (0, 2): (B.GRASS.value, 1), (2, -3): (B.WATER.value, None),
         (-3, 4): (B.SAND.value, 0), (1, 1): (B.PATH.value, None)},
        {"wood": 3, "sapling": 1, "wood_pickaxe": 1},
    )
    expected = (
        "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):\n"
        "-3, 4: zombie on sand\n"
        "-1, 0: tree\n"
        "0, 2: cow on grass\n"
        "2, -3: water\n"
        "Inventory: wood 3, sapling 1, wood_pickaxe 1\n"
        "Health: 9, Food: 7, Drink: 6, Energy: 8\n"
        "Facing: up\n"
        "Time: day, light level 0.85\n"
        "Sleeping: no"
    )
    assert render_text(obs, "classic") == [expected]
    full = render_text(obs, "classic", view="full")[0]
    assert full.split("\n")[4] == "0: grass | grass | grass | grass | grass | grass | cow on grass | grass | grass"
    assert full.split("\n")[0].startswith("Map (every tile, one line per row from row -3 (up) to 3 (down)")
    empty = _classic_obs({}, {}, direction=1, light=0.25, sleeping=True)
    assert render_text(empty, "classic")[0] == (
        f"{MAP_HEADER}\nnone\nInventory: empty\nHealth: 9, Food: 7, Drink: 6, Energy: 8\n"
        "Facing: left\nTime: night, light level 0.25\nSleeping: yes"
    )


def test_craftax_format_exact():
    """A full-Craftax vector by hand: two mobs on one tile, an item, darkness, tools and attributes."""
    from craftax.craftax.constants import BlockType as B
    from craftax.craftax.constants import ItemType as I

    rows, cols, nb, ni = 9, 11, len(B), len(I)
    grid = np.zeros((rows, cols, nb + ni + 40 + 1), dtype=np.float32)
    grid[:, 5:, nb + ni + 40] = 1  # columns 0..5 lit, -5..-1 dark
    grid[:, 5:, B.PATH.value] = 1
    grid[:, 5:, nb + I.NONE.value] = 1
    grid[4, 7, [B.PATH.value, nb + I.NONE.value]] = 0
    grid[4, 7, [B.STONE.value, nb + I.TORCH.value]] = 1  # 0, 2: torch on stone
    grid[5, 5, nb + ni + 8] = 1  # 1, 0: cow ...
    grid[5, 5, nb + ni + 4 * 8 + 2] = 1  # ... and the player's fireball
    grid[0, 10, nb + ni + 1 * 8 + 1] = 1  # -4, 5: bat
    inventory = np.zeros(16)
    inventory[[0, 8]] = np.sqrt([3, 12]) / 10  # wood 3, torch 12
    inventory[11], inventory[12], inventory[13], inventory[15] = 2 / 4, 4 / 4, 1, 1  # stone pickaxe, diamond sword
    potions = np.sqrt([0, 2, 0, 0, 0, 0]) / 10
    intrinsics = np.array([7.3, 5, 4, 3, 6, 2, 1, 2, 3]) / 10
    armour, enchant = np.array([0, 1, 0, 2]) / 2, np.array([0, 0, 0, 2])
    special = [0.3, 0, 1, 1, 0, 0.2, 1, 0]
    obs = np.concatenate([grid.ravel(), inventory, potions, intrinsics, np.eye(4)[3], armour, enchant, special])
    obs = obs.astype(np.float32)
    dark = [f"{r}, {c}: dark" for r in range(-4, 5) for c in range(-5, 0)]
    by_row = {r: [line for line in dark if line.startswith(f"{r},")] for r in range(-4, 5)}
    by_row[-4].append("-4, 5: bat on path")
    by_row[0].append("0, 2: torch on stone")
    by_row[1].append("1, 0: cow and player_fireball on path")
    expected = "\n".join(
        [MAP_HEADER]
        + [line for r in range(-4, 5) for line in by_row[r]]
        + [
            "Inventory: wood 3, torch 12, stone_pickaxe, diamond_sword with fire enchantment, bow, green_potion 2, "
            "iron_chestplate, diamond_boots with ice enchantment",
            "Health: 7.3, Food: 5, Drink: 4, Energy: 3",
            "Mana: 6, XP: 2, Dexterity: 1, Strength: 2, Intelligence: 3",
            "Facing: down",
            "Time: night, light level 0.3",
            "Sleeping: no, Resting: yes",
            "Spells learned: fireball",
            "Floor: 2, Ladder open: yes, Boss vulnerable: no",
        ]
    )
    assert render_text(obs, "craftax") == [expected]
    assert render_text(obs[None], "craftax", view="full")[0].split("\n")[6] == (
        "1: dark | dark | dark | dark | dark | cow and player_fireball on path | path | path | path | path | path"
    )


# RENDERER_VERSION -> SHA-256 of the texts of `_version_probe()`. A renderer change that alters any text must bump
# RENDERER_VERSION (labelled data then records another spec) and add its digest here.
RENDERED_DIGESTS = {1: "cf71b8354bb4c1c9a443c39a2073ae618f11f23b5b355120b9758798adafcf63"}


def _version_probe() -> list[str]:
    from craftax.craftax_classic.constants import BlockType as B

    tiles = {(-1, 0): (B.TREE.value, None), (0, 2): (B.GRASS.value, 1), (2, -3): (B.WATER.value, None),
             (-3, 4): (B.SAND.value, 0), (1, 1): (B.PATH.value, None), (3, -4): (B.LAVA.value, 2)}
    obs = np.stack([_classic_obs(tiles, {"wood": 3, "sapling": 1, "wood_pickaxe": 1}),
                    _classic_obs({}, {}, health=1, food=0, direction=1, light=0.1, sleeping=True)])
    return render_text(obs, "classic") + render_text(obs, "classic", view="full")


def test_renderer_version_follows_its_output_and_help_reaches_the_prompt():
    import hashlib

    from hsrl.llm.prompt import system_prompt
    from hsrl.llm.spec import ExtractionSpec

    digest = hashlib.sha256("\x00".join(_version_probe()).encode()).hexdigest()
    assert RENDERED_DIGESTS.get(RENDERER_VERSION) == digest, (
        f"the renderer's texts changed (digest {digest}): bump RENDERER_VERSION and record the digest")
    assert ExtractionSpec(model="minilm").renderer_version == str(RENDERER_VERSION)  # labelled data records it
    assert "0, 0" in COORDINATE_HELP and "negative row is up" in COORDINATE_HELP
    assert COORDINATE_HELP.count(". ") == 0  # one sentence
    assert COORDINATE_HELP in system_prompt("classic")


# ---------------------------------------------------------------------------------------------
# Bad input


def _good():
    return _classic_obs({}, {})


@pytest.mark.parametrize(
    "obs, variant, view, message",
    [
        (lambda: _good()[:-1], "classic", "interesting", "length 1345 .* got length 1344"),
        (lambda: _good(), "craftax", "interesting", r"length 8268 for variant 'craftax'.*got length 1345.*'classic'"),
        (lambda: np.where(np.arange(1345) == 7, np.nan, _good()), "classic", "interesting", "finite.*nan"),
        (lambda: np.where(np.arange(1345) == 9, np.inf, _good()), "classic", "interesting", "finite.*inf"),
        (lambda: _good().astype(np.int32), "classic", "interesting", "float.*int32"),
        (lambda: _good() > 0, "classic", "interesting", "float.*bool"),
        (lambda: _good()[None, None], "classic", "interesting", r"shape \(batch, 1345\).*\(1, 1, 1345\)"),
        (lambda: np.zeros(1345, np.float32), "classic", "interesting", "one-hot block"),
        (lambda: _good(), "crafter", "interesting", "variant must be one of"),
        (lambda: _good(), "classic", "grid", "view must be one of"),
    ],
)
def test_bad_input_raises(obs, variant, view, message):
    with pytest.raises(ValueError, match=message):
        render_text(obs(), variant, view)


def test_single_vector_and_empty_batch():
    assert len(render_text(_good(), "classic")) == 1
    assert render_text(np.zeros((0, 1345), np.float32), "classic") == []
