"""Symbolic Craftax observations -> text, batched and vectorised in numpy.

One renderer serves both games: ``variant="craftax"`` decodes the symbolic
vector of ``Craftax-Symbolic-v1`` (8268 floats), ``variant="classic"`` the one
of ``Craftax-Classic-Symbolic-v1`` (1345 floats). The layout is the one written
by Craftax's own ``render_craftax_symbolic`` (``craftax/craftax/renderer.py`` and
``craftax/craftax_classic/renderer.py``)::

    map, view rows x cols x channels, flattened row-major; per tile:
        craftax: block one-hot (37) | item one-hot (5) | mobs (5 classes x 8 types) | lit (1)
                 (tiles that are not lit have every channel zero)
        classic: block one-hot (17) | mobs (zombie, cow, skeleton, arrow)
    then
        craftax: inventory (16: sqrt(count)/10 for wood .. arrows, books/2, pickaxe/4,
                 sword/4, sword enchantment, bow enchantment, bow) | potions (6, sqrt/10) |
                 intrinsics (9, /10) | direction one-hot (4) | armour (4, /2) |
                 armour enchantments (4) | light level, sleeping, resting, fireball learned,
                 iceball learned, floor/10, ladder open, boss vulnerable
        classic: inventory (12, /10) | intrinsics (4, /10) | direction one-hot (4) |
                 light level | sleeping

Text format (``view="interesting"``, the default), one ``Key: value`` line each,
lines marked [craftax] only for full Craftax::

    Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):
    -4, 5: dark
    -1, 0: tree
    0, 2: cow on grass
    1, -1: zombie and arrow on grass
    2, -3: ladder_down on path
    Inventory: wood 3, sapling 1, wood_pickaxe, iron_sword with fire enchantment
    Health: 9, Food: 7, Drink: 6, Energy: 8
    Mana: 5, XP: 0, Dexterity: 1, Strength: 1, Intelligence: 1        [craftax]
    Facing: up
    Time: day, light level 0.85
    Sleeping: no, Resting: no                                         (classic: Sleeping: no)
    Spells learned: none                                              [craftax]
    Floor: 0, Ladder open: no, Boss vulnerable: no                    [craftax]

- The player is at ``0, 0``, the centre of the view (9 x 11 tiles in Craftax,
  7 x 9 in Classic). Map lines are sorted by row, then column. A tile is listed
  when its block is not background (``BACKGROUND_BLOCKS``: grass, sand, path and
  the darkness block; fire_grass and ice_grass, the floors of the fire and ice
  realms, in Craftax), when an item or a mob is on it, or when it is dark (not
  lit, so the observation holds nothing about it; Craftax only). ``none`` stands
  alone on the line after the header when no tile is listed.
- A tile reads ``[mob and ...] on [item] on block``. Names are Craftax's own:
  block and item enum names lowercased (``crafting_table``, ``ladder_down``);
  mobs as Craftax's ``render_craftax_text`` names them, lowercased, spaces as
  underscores (``gnome_warrior``, ``fire_elemental``); mob projectiles by their
  ``ProjectileType`` (``arrow``, ``fireball``; Craftax's second arrow/fireball/
  iceball types read the same), the player's own ones prefixed ``player_``
  (``player_arrow``); Classic's mobs are ``zombie``, ``cow``, ``skeleton``, ``arrow``.
- Inventory lists only what is held, in the observation's order: counts as
  ``name count`` (Craftax's text names: ``torch``, ``arrow``, ``book``,
  ``red_potion``; Classic's inventory field names, tools included:
  ``wood_pickaxe 1``), Craftax's tool and armour levels by material
  (``stone_pickaxe``, ``diamond_sword``, ``bow``, ``iron_helmet``,
  ``diamond_boots``) with ``with fire enchantment`` / ``with ice enchantment``
  when enchanted. ``Inventory: empty`` when nothing is held.
- Numbers: integers as integers; health (fractional after damage in Craftax)
  and the light level with at most two decimals, trailing zeros dropped.
  ``Time`` is ``night`` when the light level is below 0.5 (where Craftax's
  pixel renderer starts darkening the view), else ``day``.
- ``view="full"`` replaces the map lines by the whole view, one line per row::

    Map (every tile, one line per row from row -4 (up) to 4 (down); each line starts with its row offset, then cols -5 (left) to 5 (right) separated by " | "):
    -4: dark | dark | stone | ... | tree
    ...

Every text ends without a trailing newline. Rendering is deterministic: the same
observation gives the same text, byte for byte. ``RENDERER_VERSION`` changes
whenever the text of any observation would change.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RENDERER_VERSION = 1

COORDINATE_HELP = (
    "Map tiles are given as `row, col` offsets from you (you are at 0, 0): "
    "negative row is up, positive row is down, negative col is left, positive col is right."
)

VARIANTS = {"craftax": "Craftax-Symbolic-v1", "classic": "Craftax-Classic-Symbolic-v1"}
VIEWS = ("interesting", "full")

BACKGROUND_BLOCKS = {
    "classic": ("grass", "sand", "path"),
    "craftax": ("grass", "sand", "path", "darkness", "fire_grass", "ice_grass"),
}

MAP_HEADER = "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):"
DARK = "dark"

# Mob channels. Craftax: 5 classes x 8 type ids, in the order render_craftax_symbolic adds them
# (melee, passive, ranged, mob projectiles, player projectiles); names as render_craftax_text
# prints them. Classic: one channel per mob kind, in the order its renderer adds them.
_MOB_TYPES_PER_CLASS = 8
_CRAFTAX_MELEE = ("zombie", "gnome_warrior", "orc_soldier", "lizard", "knight", "troll", "pigman", "frost_troll")
_CRAFTAX_PASSIVE = ("cow", "bat", "snail")
_CRAFTAX_RANGED = (
    "skeleton", "gnome_archer", "orc_mage", "kobold", "archer", "deep_thing", "fire_elemental", "ice_elemental"
)
_CLASSIC_MOBS = ("zombie", "cow", "skeleton", "arrow")

# Craftax inventory entries that are counts, in the vector's order, as render_craftax_text names them.
_CRAFTAX_COUNTS = ("wood", "stone", "coal", "iron", "diamond", "sapphire", "ruby", "sapling", "torch", "arrow")
_CRAFTAX_POTIONS = ("red_potion", "green_potion", "blue_potion", "pink_potion", "cyan_potion", "yellow_potion")
_TOOL_MATERIALS = ("", "wood", "stone", "iron", "diamond")  # pickaxe / sword level 1..4
_ARMOUR_MATERIALS = ("", "iron", "diamond")  # armour level 1..2
_ARMOUR_PIECES = ("helmet", "chestplate", "leggings", "boots")
_ENCHANTMENTS = ("", " with fire enchantment", " with ice enchantment")
_CLASSIC_INVENTORY = (
    "wood", "stone", "coal", "iron", "diamond", "sapling",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)

_YES_NO = np.array(["no", "yes"], dtype=object)
_SEP = np.array(["", ", "], dtype=object)

# Number strings are looked up in tables; values outside them are formatted one by one (never seen in play).
_INT_LO, _INT_HI = -1000, 10000
_CENT_LO, _CENT_HI = -5000, 5000  # hundredths, i.e. -50.00 .. 49.99


@dataclass(frozen=True)
class _Layout:
    """Where everything lies in one variant's symbolic vector, and the name tables to render it."""

    variant: str
    env_name: str
    size: int  # length of the symbolic vector
    rows: int
    cols: int
    channels: int  # per tile
    num_blocks: int
    num_items: int  # 1 in Classic (no items): item code always 0
    num_mobs: int
    has_items: bool
    has_light: bool
    decode: np.ndarray  # (channels, 6): block index, block sum, item index, item sum, mob index sum, mob count
    tile_names: np.ndarray  # object, index ((mob + 1) * num_items + item) * num_blocks + block, then dark, then ""
    mob_and: np.ndarray  # object, "<mob> and " per mob channel
    background: np.ndarray  # bool per block
    interesting_prefix: np.ndarray  # object per tile (+ "" at the end): "\n<row>, <col>: "
    full_prefix: np.ndarray  # object per tile: "\n<row>: " at the start of a row, else " | "
    full_header: str
    directions: np.ndarray  # object: direction names (one-hot index), then "none" for all-zero

    @property
    def map_size(self) -> int:
        return self.rows * self.cols * self.channels

    @property
    def dark_code(self) -> int:
        return len(self.tile_names) - 2

    @property
    def empty_code(self) -> int:
        return len(self.tile_names) - 1


def _enum_names(enum) -> list[str]:
    members = sorted(enum, key=lambda m: m.value)
    assert [m.value for m in members] == list(range(len(members))), f"{enum} is not contiguous"
    return [m.name.lower() for m in members]


@lru_cache(maxsize=None)
def _layout(variant: str) -> _Layout:
    from hsrl.env.catalog import craftax_constants, env_info

    classic = variant == "classic"
    const = craftax_constants(classic)
    info = env_info(VARIANTS[variant])
    rows, cols = info.view_shape
    blocks = _enum_names(const.BlockType)
    if classic:
        items = [""]
        mobs = list(_CLASSIC_MOBS)
    else:
        items = ["" if name == "none" else name for name in _enum_names(const.ItemType)]
        projectiles = [name.rstrip("2") for name in _enum_names(const.ProjectileType)]

        def cls(names, kind):
            assert len(names) <= _MOB_TYPES_PER_CLASS
            return list(names) + [f"{kind}_{i}" for i in range(len(names), _MOB_TYPES_PER_CLASS)]

        mobs = (
            cls(_CRAFTAX_MELEE, "melee_mob")
            + cls(_CRAFTAX_PASSIVE, "passive_mob")
            + cls(_CRAFTAX_RANGED, "ranged_mob")
            + cls(projectiles, "projectile")
            + cls(["player_" + name for name in projectiles], "player_projectile")
        )
    nb, ni, nm = len(blocks), len(items), len(mobs)
    has_items, has_light = not classic, not classic
    channels = nb + (ni if has_items else 0) + nm + (1 if has_light else 0)
    scalars = 22 if classic else 51
    size = rows * cols * channels + scalars
    if (size,) != info.symbolic_obs_shape:  # Craftax changed its layout: fail loudly, never misread
        raise RuntimeError(f"{info.name}: decoded layout has {size} floats, Craftax says {info.symbolic_obs_shape}")

    decode = np.zeros((channels, 6), dtype=np.float32)
    decode[:nb, 0] = np.arange(nb)
    decode[:nb, 1] = 1
    mob_start = nb
    if has_items:
        decode[nb : nb + ni, 2] = np.arange(ni)
        decode[nb : nb + ni, 3] = 1
        mob_start = nb + ni
    decode[mob_start : mob_start + nm, 4] = np.arange(nm)
    decode[mob_start : mob_start + nm, 5] = 1

    tile_names = [
        " on ".join(part for part in (mob, item, block) if part)
        for mob in [""] + mobs
        for item in items
        for block in blocks
    ] + [DARK, ""]
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    rr, cc = rr - rows // 2, cc - cols // 2
    interesting_prefix = [f"\n{r}, {c}: " for r, c in zip(rr, cc)] + [""]
    full_prefix = [f"\n{r}: " if c == -(cols // 2) else " | " for r, c in zip(rr, cc)]
    full_header = (
        f"Map (every tile, one line per row from row {-(rows // 2)} (up) to {rows // 2} (down); "
        f"each line starts with its row offset, then cols {-(cols // 2)} (left) to {cols // 2} (right) "
        'separated by " | "):'
    )
    actions = _enum_names(const.Action)
    return _Layout(
        variant=variant,
        env_name=info.name,
        size=size,
        rows=rows,
        cols=cols,
        channels=channels,
        num_blocks=nb,
        num_items=ni,
        num_mobs=nm,
        has_items=has_items,
        has_light=has_light,
        decode=decode,
        tile_names=np.array(tile_names, dtype=object),
        mob_and=np.array([f"{m} and " for m in mobs], dtype=object),
        background=np.isin(blocks, BACKGROUND_BLOCKS[variant]),
        interesting_prefix=np.array(interesting_prefix, dtype=object),
        full_prefix=np.array(full_prefix, dtype=object),
        full_header=full_header,
        directions=np.array(actions[1:5] + ["none"], dtype=object),  # player_direction 1..4 = left, right, up, down
    )


@lru_cache(maxsize=None)
def _int_table() -> np.ndarray:
    return np.array([str(i) for i in range(_INT_LO, _INT_HI)], dtype=object)


def _trim(q: int) -> str:
    return f"{q / 100:.2f}".rstrip("0").rstrip(".")


@lru_cache(maxsize=None)
def _cent_table() -> np.ndarray:
    return np.array([_trim(q) for q in range(_CENT_LO, _CENT_HI)], dtype=object)


def _int_str(values: np.ndarray) -> np.ndarray:
    """Integers (given as floats) -> object array of their decimal strings."""
    q = np.rint(values)
    inside = (q >= _INT_LO) & (q < _INT_HI)
    out = _int_table()[np.where(inside, q - _INT_LO, 0).astype(np.intp)]
    if not inside.all():
        idx = np.nonzero(~inside)
        out[idx] = [f"{v:.0f}" for v in q[idx].tolist()]
    return out


def _dec_str(values: np.ndarray) -> np.ndarray:
    """Floats -> object array of strings with at most two decimals, trailing zeros dropped."""
    q = np.rint(np.asarray(values, dtype=np.float64) * 100)
    inside = (q >= _CENT_LO) & (q < _CENT_HI)
    out = _cent_table()[np.where(inside, q - _CENT_LO, 0).astype(np.intp)]
    if not inside.all():
        idx = np.nonzero(~inside)
        out[idx] = [_trim(v) if abs(v) < 1e15 else f"{v / 100:g}" for v in q[idx].tolist()]
    return out


def _named(entries: np.ndarray, held: np.ndarray) -> np.ndarray:
    """(B, K) entry strings, (B, K) bool -> (B,) ', '-joined held entries, or 'empty'."""
    entries = np.where(held, entries, "")
    before = (np.cumsum(held, axis=1) - held) > 0
    out = np.empty((held.shape[0], 2 * held.shape[1] + 1), dtype=object)
    out[:, 0:-1:2] = _SEP[(held & before).astype(np.intp)]
    out[:, 1:-1:2] = entries
    out[:, -1] = np.where(held.any(axis=1), "", "empty")
    return np.array(["".join(row) for row in out.tolist()], dtype=object)


def _check(obs, variant: str, view: str) -> np.ndarray:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    x = np.asarray(obs)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected a float array of symbolic observations, got dtype {x.dtype}")
    size = _layout(variant).size
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected shape (batch, {size}) or ({size},) for variant {variant!r}, got {x.shape}")
    if x.shape[1] != size:
        other = [f"{v!r} ({VARIANTS[v]})" for v in VARIANTS if v != variant and _layout(v).size == x.shape[1]]
        hint = f"; that is the length of {other[0]}" if other else ""
        raise ValueError(
            f"expected symbolic observations of length {size} for variant {variant!r} "
            f"({VARIANTS[variant]}), got length {x.shape[1]}{hint}"
        )
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float32)
    if not np.isfinite(x.sum()) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"expected finite values, got {x[tuple(bad)]} at observation {bad[0]}, index {bad[1]}")
    return x


def render_text(symbolic_obs_batch, variant: str, view: str = "interesting") -> list[str]:
    """Render symbolic Craftax observations as text (format: see the module docstring).

    `symbolic_obs_batch`: float array (B, D), or one observation (D,); D is the length of the
    variant's symbolic vector. `variant`: 'craftax' or 'classic'. `view`: 'interesting'
    (background tiles left out) or 'full' (every tile, a grid). Returns B strings.
    """
    x = _check(symbolic_obs_batch, variant, view)
    lay = _layout(variant)
    batch, tiles = x.shape[0], lay.rows * lay.cols
    if batch == 0:
        return []
    tile_map = x[:, : lay.map_size].reshape(batch, tiles, lay.channels)

    # Per tile, one small matmul: block index and sum, item index and sum, mob index sum and count.
    dec = np.rint(tile_map @ lay.decode.astype(x.dtype)).astype(np.intp)
    block, block_sum, item, item_sum, mob_sum, mob_count = np.moveaxis(dec, -1, 0)
    lit = tile_map[..., -1] > 0.5 if lay.has_light else np.ones((batch, tiles), dtype=bool)
    bad = lit & ((block_sum != 1) | ((item_sum != 1) if lay.has_items else False))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(
            f"expected one-hot block{' and item' if lay.has_items else ''} channels on every lit tile of a "
            f"{lay.env_name} observation, got sums {block_sum[b, t]}"
            f"{f' and {item_sum[b, t]}' if lay.has_items else ''} at observation {b}, tile {t}"
        )
    block = np.where(lit, block, 0)
    item = np.where(lit, item, 0)

    # Mobs: a tile with one mob has its index in mob_sum. A tile with several (rare: a projectile
    # over a mob) is named by its last mob channel, the others go in front as "<mob> and ".
    mob = np.where(mob_count == 1, mob_sum, -1)
    multi = np.nonzero(mob_count > 1)
    if multi[0].size:
        mob_start = lay.channels - lay.num_mobs - (1 if lay.has_light else 0)
        here = tile_map[multi[0], multi[1], mob_start : mob_start + lay.num_mobs] > 0.5
        last = lay.num_mobs - 1 - np.argmax(here[:, ::-1], axis=1)
        mob[multi] = last
        others = np.where(here & (np.arange(lay.num_mobs) != last[:, None]), lay.mob_and[None, :], "")
        extra = np.array(["".join(row) for row in others.tolist()], dtype=object)

    code = ((mob + 1) * lay.num_items + item) * lay.num_blocks + block
    code = np.where(lit, code, lay.dark_code)
    pieces = np.empty((batch, tiles, 2), dtype=object)
    if view == "interesting":
        shown = ~lit | ~lay.background[block] | (item > 0) | (mob >= 0)
        pieces[..., 0] = lay.interesting_prefix[np.where(shown, np.arange(tiles), tiles)]
        pieces[..., 1] = lay.tile_names[np.where(shown, code, lay.empty_code)]
        header = np.where(shown.any(axis=1), MAP_HEADER, MAP_HEADER + "\nnone").astype(object)
    else:
        pieces[..., 0] = lay.full_prefix[None, :]
        pieces[..., 1] = lay.tile_names[code]
        header = np.full(batch, lay.full_header, dtype=object)
    if multi[0].size:  # every multi-mob tile is shown in both views
        pieces[multi[0], multi[1], 1] = extra + pieces[multi[0], multi[1], 1]

    footer = _footer_classic(x[:, lay.map_size :], lay) if variant == "classic" else _footer_craftax(
        x[:, lay.map_size :], lay
    )
    rows = np.concatenate([header[:, None], pieces.reshape(batch, -1), footer[:, None]], axis=1)
    return ["".join(row) for row in rows.tolist()]


def _common_footer(lay, inventory, health, food, drink, energy, direction_onehot, light, sleeping, *, fractional):
    health_str = _dec_str(health) if fractional else _int_str(health)
    held = np.abs(direction_onehot) > 0.5
    direction = np.where(held.any(axis=1), np.argmax(held, axis=1), len(lay.directions) - 1)
    return (
        "\nInventory: " + inventory
        + "\nHealth: " + health_str
        + ", Food: " + _int_str(food)
        + ", Drink: " + _int_str(drink)
        + ", Energy: " + _int_str(energy)
    ), (
        "\nFacing: " + lay.directions[direction]
        + "\nTime: " + np.where(light < 0.5, "night", "day").astype(object)
        + ", light level " + _dec_str(light)
        + "\nSleeping: " + _YES_NO[(sleeping > 0.5).astype(np.intp)]
    )


def _footer_classic(s: np.ndarray, lay: _Layout) -> np.ndarray:
    counts = np.rint(s[:, 0:12] * 10)
    names = np.array([n + " " for n in _CLASSIC_INVENTORY], dtype=object)
    inventory = _named(names[None, :] + _int_str(counts), counts != 0)
    intr = s[:, 12:16] * 10
    first, second = _common_footer(
        lay, inventory, *intr.T, s[:, 16:20], s[:, 20], s[:, 21], fractional=False
    )
    return first + second


def _footer_craftax(s: np.ndarray, lay: _Layout) -> np.ndarray:
    batch = s.shape[0]
    counts = np.rint(np.square(s[:, 0:10] * 10))
    books = np.rint(s[:, 10] * 2)
    pickaxe = np.rint(s[:, 11] * 4).astype(np.intp)
    sword = np.rint(s[:, 12] * 4).astype(np.intp)
    sword_ench, bow_ench, bow = (np.rint(s[:, i]).astype(np.intp) for i in (13, 14, 15))
    potions = np.rint(np.square(s[:, 16:22] * 10))
    intr = s[:, 22:31] * 10
    direction = s[:, 31:35]
    armour = np.rint(s[:, 35:39] * 2).astype(np.intp)
    armour_ench = np.rint(s[:, 39:43]).astype(np.intp)
    light, sleeping, resting, fireball, iceball, floor, ladder, boss = s[:, 43:51].T

    def table(names, level):  # names by level; levels outside the table are shown as numbers
        names = np.asarray(names, dtype=object)
        inside = (level >= 0) & (level < len(names))
        out = names[np.where(inside, level, 0)]
        if not inside.all():
            out = np.where(inside, out, "level " + _int_str(level.astype(np.float64)))
        return out

    tool = lambda kind, level: table([""] + [f"{m}_{kind}" for m in _TOOL_MATERIALS[1:]], level)  # noqa: E731
    enchant = lambda level: table(_ENCHANTMENTS, level)  # noqa: E731
    count_names = np.array([n + " " for n in _CRAFTAX_COUNTS + ("book",)], dtype=object)
    potion_names = np.array([n + " " for n in _CRAFTAX_POTIONS], dtype=object)
    armour_names = [
        table([""] + [f"{m}_{piece}" for m in _ARMOUR_MATERIALS[1:]], armour[:, i]) + enchant(armour_ench[:, i])
        for i, piece in enumerate(_ARMOUR_PIECES)
    ]
    entries = np.concatenate(
        [
            count_names[None, :] + _int_str(np.concatenate([counts, books[:, None]], axis=1)),
            tool("pickaxe", pickaxe)[:, None],
            (tool("sword", sword) + enchant(sword_ench))[:, None],
            ("bow" + enchant(bow_ench))[:, None],
            potion_names[None, :] + _int_str(potions),
            np.stack(armour_names, axis=1),
        ],
        axis=1,
    )
    held = np.concatenate(
        [
            counts != 0,
            books[:, None] != 0,
            (pickaxe != 0)[:, None],
            (sword != 0)[:, None],
            (bow != 0)[:, None],
            potions != 0,
            armour != 0,
        ],
        axis=1,
    )
    inventory = _named(entries, held)
    first, second = _common_footer(
        lay, inventory, *intr[:, 0:4].T, direction, light, sleeping, fractional=True
    )
    spells = np.array(["none", "fireball", "iceball", "fireball, iceball"], dtype=object)
    learned = (fireball > 0.5).astype(np.intp) + 2 * (iceball > 0.5).astype(np.intp)
    assert first.shape == (batch,)
    return (
        first
        + "\nMana: " + _int_str(intr[:, 4])
        + ", XP: " + _int_str(intr[:, 5])
        + ", Dexterity: " + _int_str(intr[:, 6])
        + ", Strength: " + _int_str(intr[:, 7])
        + ", Intelligence: " + _int_str(intr[:, 8])
        + second
        + ", Resting: " + _YES_NO[(resting > 0.5).astype(np.intp)]
        + "\nSpells learned: " + spells[learned]
        + "\nFloor: " + _int_str(floor * 10)
        + ", Ladder open: " + _YES_NO[(ladder > 0.5).astype(np.intp)]
        + ", Boss vulnerable: " + _YES_NO[(boss > 0.5).astype(np.intp)]
    )
