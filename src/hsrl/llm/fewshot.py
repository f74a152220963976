"""The few-shot examples of the 'chat' prompt: one set per game variant, in the text renderer's format.

Each example is (observation text, answer). An answer says what the player sees, what to do next and ends with
`Action: <name>`, a name from the variant's action list (tests check it). Changing any text here changes the prompt:
bump `hsrl.llm.prompt.TEMPLATE_VERSIONS["chat"]` (a test pins the prompt's hash to make that hard to forget).
"""

from hsrl.text import MAP_HEADER

CLASSIC_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        f"""{MAP_HEADER}
-2, 1: tree
-1, 0: tree
0, 3: cow on grass
3, -2: water
Inventory: sapling 1
Health: 9, Food: 8, Drink: 8, Energy: 9
Facing: up
Time: day, light level 1
Sleeping: no""",
        "I see a tree directly above me, which I am facing, another tree nearby, a cow to the right and water "
        "below. I have no wood yet, so I should collect wood from the tree I face. Action: do",
    ),
    (
        f"""{MAP_HEADER}
-3, 0: stone
0, -1: crafting_table
1, 2: tree
Inventory: wood 4, sapling 1
Health: 9, Food: 6, Drink: 7, Energy: 8
Facing: left
Time: day, light level 0.9
Sleeping: no""",
        "A crafting table is right next to me and I carry 4 wood; stone lies a few tiles up. With a table nearby "
        "I can make a wood pickaxe, which I need to mine stone. Action: make_wood_pickaxe",
    ),
    (
        f"""{MAP_HEADER}
-1, 3: cow on grass
0, -4: water
2, 1: zombie on grass
Inventory: wood 2, stone 3, wood_pickaxe 1, wood_sword 1
Health: 4, Food: 2, Drink: 5, Energy: 6
Facing: right
Time: night, light level 0.3
Sleeping: no""",
        "It is night, a zombie is close below me and my health is low at 4 with food at 2. I should avoid the "
        "zombie and reach the cow up and to the right to eat; first I move up, away from the zombie. Action: up",
    ),
)

CRAFTAX_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        f"""{MAP_HEADER}
-1, 0: tree
0, 2: cow on grass
2, -3: water
Inventory: wood 3, sapling 1
Health: 9, Food: 7, Drink: 6, Energy: 8
Mana: 5, XP: 0, Dexterity: 1, Strength: 1, Intelligence: 1
Facing: up
Time: day, light level 0.85
Sleeping: no, Resting: no
Spells learned: none
Floor: 0, Ladder open: yes, Boss vulnerable: no""",
        "I face a tree just above me; a cow is two tiles to the right and water is down-left. I have 3 wood and "
        "need more for a table and tools, so I keep collecting wood. Action: do",
    ),
    (
        f"""{MAP_HEADER}
-4, -5: dark
-2, -2: iron
-1, -3: stone
0, 1: ladder_down on path
1, -1: coal
3, 0: furnace
Inventory: wood 5, stone 12, coal 2, stone_pickaxe, stone_sword
Health: 8.5, Food: 6, Drink: 5, Energy: 7
Mana: 7, XP: 1, Dexterity: 1, Strength: 1, Intelligence: 1
Facing: right
Time: day, light level 1
Sleeping: no, Resting: no
Spells learned: none
Floor: 1, Ladder open: yes, Boss vulnerable: no""",
        "I see iron up-left, coal next to me down-left, a furnace below and the open ladder down to my right. I "
        "have a stone pickaxe, so I should mine the iron before descending; I start by moving up towards it. "
        "Action: up",
    ),
    (
        f"""{MAP_HEADER}
-1, 0: zombie on grass
2, 2: zombie on grass
Inventory: wood 1, stone 4, stone_sword
Health: 3, Food: 5, Drink: 4, Energy: 2
Mana: 2, XP: 2, Dexterity: 1, Strength: 1, Intelligence: 1
Facing: up
Time: night, light level 0.2
Sleeping: no, Resting: no
Spells learned: none
Floor: 0, Ladder open: yes, Boss vulnerable: no""",
        "A zombie stands right above me and I am facing it, another one is down-right; my health is 3 and "
        "energy 2 at night. I must fight the first one off before I can rest or block myself in with stone. Action: do",
    ),
)

EXAMPLES = {"classic": CLASSIC_EXAMPLES, "craftax": CRAFTAX_EXAMPLES}
