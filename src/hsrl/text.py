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
- Inventory lists only what is held, in the order of the observation (full
  Craftax: counts, books, pickaxe, sword, bow, potions, armour, as Craftax's
  ``render_craftax_text`` lists them): counts as
  ``name count`` (Craftax's text names: ``torch``, ``arrow``, ``book``,
  ``red_potion``; Classic's inventory field names, tools included:
  ``wood_pickaxe 1``), Craftax's tool and armour levels by material
  (``stone_pickaxe``, ``diamond_sword``, ``bow``, ``iron_helmet``,
  ``diamond_boots``) with ``with fire enchantment`` / ``with ice enchantment``
  when enchanted. ``Inventory: empty`` when nothing is held. Tool, armour and
  enchantment levels outside Craftax's range raise ValueError.
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

# Inventory entries that are counts, in the vector's order (Craftax: as render_craftax_text names
# them; Classic: its Inventory fields, tools included).
_CRAFTAX_COUNTS = (
    "wood", "stone", "coal", "iron", "diamond", "sapphire", "ruby", "sapling", "torch", "arrow", "book",
    "red_potion", "green_potion", "blue_potion", "pink_potion", "cyan_potion", "yellow_potion",
)
_CLASSIC_COUNTS = (
    "wood", "stone", "coal", "iron", "diamond", "sapling",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)
_TOOL_MATERIALS = ("wood", "stone", "iron", "diamond")  # Craftax pickaxe / sword level 1..4
_ARMOUR_MATERIALS = ("iron", "diamond")  # armour level 1..2
_ARMOUR_PIECES = ("helmet", "chestplate", "leggings", "boots")
_ENCHANTMENTS = ("", " with fire enchantment", " with ice enchantment")  # enchantment 0..2
_SPELLS = ("none", "fireball", "iceball", "fireball, iceball")  # fireball learned + 2 * iceball learned

_YES_NO = np.array(["no", "yes"], dtype=object)
_DAY_NIGHT = np.array(["day", "night"], dtype=object)
_SEP = np.array(["", ", "], dtype=object)
_EMPTY = np.array(["", "empty"], dtype=object)

# Numbers are looked up in tables of strings; values outside them are formatted one by one.
_MAX_COUNT = 1000
_INT_LO, _INT_HI = -1000, 10000
_CENT_LO, _CENT_HI = -5000, 5000  # hundredths: -50.00 .. 49.99


@dataclass(frozen=True)
class _Layout:
    """Where everything lies in one variant's symbolic vector, and the string tables to render it."""

    variant: str
    env_name: str
    size: int  # length of the symbolic vector
    rows: int
    cols: int
    channels: int  # per tile
    num_blocks: int
    num_items: int  # 1 in Classic (no items: the item code is always 0)
    num_mobs: int
    has_items: bool
    has_light: bool
    # (channels, 7) float: per tile block index, block sum, item index, item sum, mob index sum, mob count, lit
    decode: np.ndarray
    tile_names: np.ndarray  # ((mob + 1) * num_items + item) * num_blocks + block; then "dark"; then ""
    mob_and: np.ndarray  # "<mob> and " per mob channel
    background: np.ndarray  # bool per block
    interesting_prefix: np.ndarray  # "\n<row>, <col>: " per tile; then ""
    full_prefix: np.ndarray  # "\n<row>: " at the start of a row, else " | "
    full_header: str
    directions: np.ndarray  # direction names by one-hot index; then "none" (all zero)
    count_names: np.ndarray  # inventory count entries: "<name> "
    count_table: np.ndarray  # (num count entries, _MAX_COUNT): "<name> <count>"
    block_names: tuple[str, ...] = ()
    mob_names: tuple[str, ...] = ()

    @property
    def map_size(self) -> int:
        return self.rows * self.cols * self.channels

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

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
    """Read the variant's enums and view from Craftax; build the name tables (once per variant)."""
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

        def mob_class(names, kind):
            assert len(names) <= _MOB_TYPES_PER_CLASS
            return list(names) + [f"{kind}_{i}" for i in range(len(names), _MOB_TYPES_PER_CLASS)]

        mobs = (
            mob_class(_CRAFTAX_MELEE, "melee_mob")
            + mob_class(_CRAFTAX_PASSIVE, "passive_mob")
            + mob_class(_CRAFTAX_RANGED, "ranged_mob")
            + mob_class(projectiles, "projectile")
            + mob_class(["player_" + name for name in projectiles], "player_projectile")
        )
    nb, ni, nm = len(blocks), len(items), len(mobs)
    has_items = has_light = not classic
    channels = nb + (ni if has_items else 0) + nm + (1 if has_light else 0)
    scalars = 22 if classic else 51
    size = rows * cols * channels + scalars
    if (size,) != info.symbolic_obs_shape:  # Craftax changed its layout: fail loudly, never misread
        raise RuntimeError(f"{info.name}: decoded layout has {size} floats, Craftax says {info.symbolic_obs_shape}")

    decode = np.zeros((channels, 7), dtype=np.float32)
    decode[:nb, 0], decode[:nb, 1] = np.arange(nb), 1
    mob_start = nb + (ni if has_items else 0)
    if has_items:
        decode[nb:mob_start, 2], decode[nb:mob_start, 3] = np.arange(ni), 1
    decode[mob_start : mob_start + nm, 4], decode[mob_start : mob_start + nm, 5] = np.arange(nm), 1
    if has_light:
        decode[-1, 6] = 1

    tile_names = [
        " on ".join(part for part in (mob, item, block) if part)
        for mob in [""] + mobs
        for item in items
        for block in blocks
    ] + [DARK, ""]
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    rr, cc = rr - rows // 2, cc - cols // 2
    full_header = (
        f"Map (every tile, one line per row from row {-(rows // 2)} (up) to {rows // 2} (down); "
        f"each line starts with its row offset, then cols {-(cols // 2)} (left) to {cols // 2} (right) "
        'separated by " | "):'
    )
    counts = _CLASSIC_COUNTS if classic else _CRAFTAX_COUNTS
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
        interesting_prefix=np.array([f"\n{r}, {c}: " for r, c in zip(rr, cc)] + [""], dtype=object),
        full_prefix=np.array([f"\n{r}: " if c == -(cols // 2) else " | " for r, c in zip(rr, cc)], dtype=object),
        full_header=full_header,
        # player_direction 1..4 is Action LEFT, RIGHT, UP, DOWN; the vector holds one_hot(direction - 1)
        directions=np.array(_enum_names(const.Action)[1:5] + ["none"], dtype=object),
        count_names=np.array([f"{name} " for name in counts], dtype=object),
        count_table=np.array([[f"{name} {v}" for v in range(_MAX_COUNT)] for name in counts], dtype=object),
        block_names=tuple(blocks),
        mob_names=tuple(mobs),
    )


@lru_cache(maxsize=None)
def _craftax_item_tables() -> dict[str, np.ndarray]:
    """Full Craftax's tools and armour by level (and enchantment); '' where nothing is held."""

    def by_level(kind, materials, enchanted=True):
        return np.array(
            [[""] * len(_ENCHANTMENTS)]
            + [[f"{m}{kind}{e}" if enchanted else f"{m}{kind}" for e in _ENCHANTMENTS] for m in materials],
            dtype=object,
        )

    return {
        "pickaxe": by_level("_pickaxe", _TOOL_MATERIALS, enchanted=False)[:, 0],
        "sword": by_level("_sword", _TOOL_MATERIALS),
        "bow": by_level("bow", [""]),
        "armour": np.stack([by_level(f"_{piece}", _ARMOUR_MATERIALS) for piece in _ARMOUR_PIECES]),
    }


@lru_cache(maxsize=None)
def _int_table() -> np.ndarray:
    return np.array([str(i) for i in range(_INT_LO, _INT_HI)], dtype=object)


def _trim(hundredths: float) -> str:
    return f"{hundredths / 100:.2f}".rstrip("0").rstrip(".")


@lru_cache(maxsize=None)
def _cent_table() -> np.ndarray:
    return np.array([_trim(q) for q in range(_CENT_LO, _CENT_HI)], dtype=object)


def _int_str(values: np.ndarray) -> np.ndarray:
    """Whole numbers (as floats, any shape) -> object array of their decimal strings."""
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
        out[idx] = [_trim(v) for v in q[idx].tolist()]
    return out


def _counts(values: np.ndarray, lay: _Layout) -> np.ndarray:
    """(B, K) counts (as floats) -> (B, K) object "<name> <count>"."""
    q = np.rint(values)
    inside = (q >= 0) & (q < _MAX_COUNT)
    out = lay.count_table[np.arange(q.shape[1]), np.where(inside, q, 0).astype(np.intp)]
    if not inside.all():
        b, k = np.nonzero(~inside)
        out[b, k] = [f"{lay.count_names[j]}{v:.0f}" for j, v in zip(k.tolist(), q[b, k].tolist())]
    return out


def _levels(values: np.ndarray, n: int, what: str) -> np.ndarray:
    """Categorical levels (as floats) -> ints in 0..n-1; anything else is not a Craftax observation."""
    q = np.rint(values)
    bad = (q < 0) | (q >= n)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ValueError(f"expected {what} in 0..{n - 1}, got {q[tuple(where)]:g} at observation {where[0]}")
    return q.astype(np.intp)


def _inventory(entries: np.ndarray, held: np.ndarray) -> list:
    """(B, K) entry strings and held flags -> columns: ', '-separated held entries, or 'empty'."""
    before = (np.cumsum(held, axis=1) - held) > 0
    out = np.empty((held.shape[0], 2 * held.shape[1] + 1), dtype=object)
    out[:, 0:-1:2] = _SEP[(held & before).view(np.int8)]
    out[:, 1:-1:2] = np.where(held, entries, "")
    out[:, -1] = _EMPTY[(~held.any(axis=1)).view(np.int8)]
    return ["\nInventory: ", out]


def _direction(onehot: np.ndarray, lay: _Layout) -> np.ndarray:
    held = onehot > 0.5
    return lay.directions[np.where(held.any(axis=1), np.argmax(held, axis=1), len(lay.directions) - 1)]


def _flag(values: np.ndarray) -> np.ndarray:
    return _YES_NO[(values > 0.5).view(np.int8)]


_INTRINSICS = {
    "classic": ("health", "food", "drink", "energy"),
    "craftax": ("health", "food", "drink", "energy", "mana", "xp", "dexterity", "strength", "intelligence"),
}


def _scalar_fields(s: np.ndarray, variant: str) -> dict[str, np.ndarray]:
    """The numbers after the map: inventory counts (B, K), intrinsics (B, k) in game units, the facing
    one-hot (B, 4), the light level (B,)."""
    if variant == "classic":
        return {"counts": np.rint(s[:, 0:12] * 10), "intrinsics": s[:, 12:16] * 10, "direction": s[:, 16:20],
                "light": s[:, 20]}
    # Counts: wood .. arrows as sqrt(n) / 10, books / 2, potions as sqrt(n) / 10.
    counts = np.rint(np.concatenate([np.square(s[:, 0:10] * 10), s[:, 10:11] * 2, np.square(s[:, 16:22] * 10)], 1))
    return {"counts": counts, "intrinsics": s[:, 22:31] * 10, "direction": s[:, 31:35], "light": s[:, 43]}


def _footer_classic(s: np.ndarray, lay: _Layout) -> list:
    f = _scalar_fields(s, "classic")
    counts = f["counts"]
    ints = _int_str(f["intrinsics"])  # health, food, drink, energy
    light = f["light"]
    return _inventory(_counts(counts, lay), counts != 0) + [
        "\nHealth: ", ints[:, 0], ", Food: ", ints[:, 1], ", Drink: ", ints[:, 2], ", Energy: ", ints[:, 3],
        "\nFacing: ", _direction(f["direction"], lay),
        "\nTime: ", _DAY_NIGHT[(light < 0.5).view(np.int8)], ", light level ", _dec_str(light),
        "\nSleeping: ", _flag(s[:, 21]),
    ]  # fmt: skip


def _footer_craftax(s: np.ndarray, lay: _Layout) -> list:
    tables = _craftax_item_tables()
    batch = s.shape[0]
    f = _scalar_fields(s, "craftax")
    counts = f["counts"]
    pickaxe = _levels(s[:, 11] * 4, 5, "pickaxe level")
    sword = _levels(s[:, 12] * 4, 5, "sword level")
    sword_ench = _levels(s[:, 13], 3, "sword enchantment")
    bow_ench = _levels(s[:, 14], 3, "bow enchantment")
    bow = _levels(s[:, 15], 2, "bow")
    armour = _levels(s[:, 35:39] * 2, 3, "armour level")
    armour_ench = _levels(s[:, 39:43], 3, "armour enchantment")
    count_entries = _counts(counts, lay)
    entries = np.empty((batch, 24), dtype=object)  # counts 0..10, pickaxe, sword, bow, potions, armour
    entries[:, 0:11] = count_entries[:, 0:11]
    entries[:, 11] = tables["pickaxe"][pickaxe]
    entries[:, 12] = tables["sword"][sword, sword_ench]
    entries[:, 13] = tables["bow"][bow, bow_ench]
    entries[:, 14:20] = count_entries[:, 11:17]
    entries[:, 20:24] = tables["armour"][np.arange(4), armour, armour_ench]
    held = np.empty((batch, 24), dtype=bool)
    held[:, 0:11], held[:, 14:20] = counts[:, 0:11] != 0, counts[:, 11:17] != 0
    held[:, 11], held[:, 12], held[:, 13], held[:, 20:24] = pickaxe != 0, sword != 0, bow != 0, armour != 0

    intrinsics = f["intrinsics"]  # health, food, drink, energy, mana, xp, dexterity, strength, intelligence
    ints = _int_str(np.concatenate([intrinsics[:, 1:], s[:, 48:49] * 10], axis=1))  # ... and floor
    light, sleeping, resting, fireball, iceball, _, ladder, boss = s[:, 43:51].T
    spells = (fireball > 0.5).view(np.int8) + 2 * (iceball > 0.5).view(np.int8)
    return _inventory(entries, held) + [
        "\nHealth: ", _dec_str(intrinsics[:, 0]), ", Food: ", ints[:, 0], ", Drink: ", ints[:, 1],
        ", Energy: ", ints[:, 2],
        "\nMana: ", ints[:, 3], ", XP: ", ints[:, 4], ", Dexterity: ", ints[:, 5], ", Strength: ", ints[:, 6],
        ", Intelligence: ", ints[:, 7],
        "\nFacing: ", _direction(f["direction"], lay),
        "\nTime: ", _DAY_NIGHT[(light < 0.5).view(np.int8)], ", light level ", _dec_str(light),
        "\nSleeping: ", _flag(sleeping), ", Resting: ", _flag(resting),
        "\nSpells learned: ", np.array(_SPELLS, dtype=object)[spells],
        "\nFloor: ", ints[:, 8], ", Ladder open: ", _flag(ladder), ", Boss vulnerable: ", _flag(boss),
    ]  # fmt: skip


def _nonfinite_error(x: np.ndarray) -> ValueError:
    b, i = np.argwhere(~np.isfinite(x))[0]
    return ValueError(f"expected finite values, got {x[b, i]} at observation {b}, index {i}")


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
    return x


def _decode_tiles(x: np.ndarray, lay: _Layout):
    """Per tile: block, item, mob channel sum, mob count and lit flags of checked observations (B, D), with
    the tile map (B, tiles, channels) and the scalars after it. Raises on non-finite values and on lit
    tiles whose block (and item) channels are not one-hot."""
    batch, tiles = x.shape[0], lay.tiles
    tile_map = x[:, : lay.map_size].reshape(batch, tiles, lay.channels)
    scalars = x[:, lay.map_size :]

    # One small matmul per observation decodes every tile; NaN and inf anywhere in a tile show up here.
    with np.errstate(invalid="ignore", over="ignore"):
        dec = tile_map @ lay.decode.astype(x.dtype)
    if not (np.isfinite(dec).all() and np.isfinite(scalars).all()):
        raise _nonfinite_error(x)
    block, block_sum, item, item_sum, mob_sum, mob_count = np.rint(np.moveaxis(dec[..., :6], -1, 0)).astype(np.intp)
    lit = dec[..., 6] > 0.5 if lay.has_light else np.ones((batch, tiles), dtype=bool)
    bad = lit & (block_sum != 1)
    if lay.has_items:
        bad |= lit & (item_sum != 1)
    if bad.any():
        b, t = np.argwhere(bad)[0]
        what = "block and item channels" if lay.has_items else "block channels"
        got = f"{block_sum[b, t]}" + (f" and {item_sum[b, t]}" if lay.has_items else "")
        raise ValueError(
            f"expected one-hot {what} on every lit tile of a {lay.env_name} observation, "
            f"got sums {got} at observation {b}, tile {t}"
        )
    if lay.has_light:
        block = np.where(lit, block, 0)
        item = np.where(lit, item, 0)
    return tile_map, scalars, block, item, mob_sum, mob_count, lit


def symbolic_map_size(variant: str) -> int:
    """How many of the variant's symbolic floats are the map (view rows x cols x channels, all 0 or 1); the rest
    are its scalars (inventory, intrinsics, direction, ...)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return _layout(variant).map_size


def render_text(symbolic_obs_batch, variant: str, view: str = "interesting") -> list[str]:
    """Render symbolic Craftax observations as text (the format is in the module docstring).

    `symbolic_obs_batch`: float array (B, D), or one observation (D,), where D is the length of
    the variant's symbolic vector. `variant`: 'craftax' or 'classic'. `view`: 'interesting'
    (background tiles left out) or 'full' (every tile, as a grid). Returns B strings. Raises
    ValueError on anything that is not a batch of the variant's symbolic observations.
    """
    x = _check(symbolic_obs_batch, variant, view)
    lay = _layout(variant)
    batch, tiles = x.shape[0], lay.tiles
    if batch == 0:
        return []
    tile_map, scalars, block, item, mob_sum, mob_count, lit = _decode_tiles(x, lay)

    # A tile with one mob has its channel in mob_sum. A tile with several (rare: a projectile over
    # a mob) is named by its last mob channel, and the others go in front as "<mob> and ".
    mob = np.where(mob_count == 1, mob_sum, -1)
    multi = np.nonzero(mob_count > 1)
    if multi[0].size:
        mob_start = lay.num_blocks + (lay.num_items if lay.has_items else 0)
        here = tile_map[multi[0], multi[1], mob_start : mob_start + lay.num_mobs] > 0.5
        last = lay.num_mobs - 1 - np.argmax(here[:, ::-1], axis=1)
        mob[multi] = last
        others = np.where(here & (np.arange(lay.num_mobs) != last[:, None]), lay.mob_and[None, :], "")
        extra = np.array(["".join(row) for row in others.tolist()], dtype=object)

    code = ((mob + 1) * lay.num_items + item) * lay.num_blocks + block
    if lay.has_light:
        code = np.where(lit, code, lay.dark_code)
    footer = (_footer_classic if variant == "classic" else _footer_craftax)(scalars, lay)
    width = 1 + 2 * tiles + sum(1 if isinstance(c, str) or c.ndim == 1 else c.shape[1] for c in footer)
    rows = np.empty((batch, width), dtype=object)
    map_pieces = rows[:, 1 : 1 + 2 * tiles].reshape(batch, tiles, 2)  # a view: filled in place
    if view == "interesting":
        shown = ~lay.background[block] | (item > 0) | (mob >= 0)
        if lay.has_light:
            shown |= ~lit
        map_pieces[..., 0] = lay.interesting_prefix[np.where(shown, np.arange(tiles), tiles)]
        map_pieces[..., 1] = lay.tile_names[np.where(shown, code, lay.empty_code)]
        rows[:, 0] = np.where(shown.any(axis=1), MAP_HEADER, MAP_HEADER + "\nnone")
    else:
        map_pieces[..., 0] = lay.full_prefix
        map_pieces[..., 1] = lay.tile_names[code]
        rows[:, 0] = lay.full_header
    if multi[0].size:  # shown in both views: every tile with a mob is
        map_pieces[multi[0], multi[1], 1] = extra + map_pieces[multi[0], multi[1], 1]
    col = 1 + 2 * tiles
    for piece in footer:
        if isinstance(piece, str) or piece.ndim == 1:
            rows[:, col] = piece
            col += 1
        else:
            rows[:, col : col + piece.shape[1]] = piece
            col += piece.shape[1]
    return ["".join(row) for row in rows.tolist()]


def decode_symbolic(symbolic_obs_batch, variant: str) -> dict:
    """The numbers `render_text` renders, decoded by the same code, for programs (e.g. `hsrl probe`).

    Returns a dict of arrays over the batch B (view rows x cols, player at the centre) and their names:
      block      (B, rows, cols) int block index, -1 on tiles that are not lit (Craftax)   block_names
      mobs       (B, rows, cols, M) bool: mob channel present                             mob_names
      inventory  (B, K) counts                                                            inventory_names
      intrinsics (B, k) health, food, drink, energy (Craftax: and mana .. intelligence)   intrinsic_names
      direction  (B,) int index into direction_names ("none" when the one-hot is empty)
      light      (B,) light level; night = light < 0.5 (the text's "Time: night")
    Raises ValueError on anything that is not a batch of the variant's symbolic observations.
    """
    x = _check(symbolic_obs_batch, variant, "interesting")
    lay = _layout(variant)
    tile_map, scalars, block, _, _, _, lit = _decode_tiles(x, lay)
    mob_start = lay.num_blocks + (lay.num_items if lay.has_items else 0)
    shape = (x.shape[0], lay.rows, lay.cols)
    f = _scalar_fields(scalars, variant)
    held = f["direction"] > 0.5
    return {
        "block": np.where(lit, block, -1).reshape(shape), "block_names": lay.block_names,
        "mobs": (tile_map[..., mob_start : mob_start + lay.num_mobs] > 0.5).reshape(shape + (lay.num_mobs,)),
        "mob_names": lay.mob_names,
        "inventory": f["counts"], "inventory_names": tuple(n.strip() for n in lay.count_names),
        "intrinsics": f["intrinsics"], "intrinsic_names": _INTRINSICS[variant],
        "direction": np.where(held.any(axis=1), np.argmax(held, axis=1), len(lay.directions) - 1),
        "direction_names": tuple(lay.directions), "light": f["light"], "night": f["light"] < 0.5,
    }
