"""Text observations shared by the LLM backend tests."""

HEADER = "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):"
OBS = [
    f"{HEADER}\n-1, 0: tree\nInventory: wood 3, sapling 1\nHealth: 9, Food: 7, Drink: 6, Energy: 8\nFacing: up\n"
    "Time: day, light level 0.85\nSleeping: no",
    f"{HEADER}\nnone\nInventory: empty\nHealth: 2, Food: 0, Drink: 1, Energy: 3\nFacing: down\nTime: night, light "
    "level 0.1\nSleeping: yes",
    f"{HEADER}\n" + "\n".join(f"{r}, {c}: stone" for r in range(-3, 4) for c in range(-4, 5)) + "\nInventory: stone 9\n"
    "Health: 9, Food: 9, Drink: 9, Energy: 9\nFacing: left\nTime: day, light level 1\nSleeping: no",
    f"{HEADER}\n0, 2: cow on grass",
]

# short texts for the vision-language model tests (text next to an image)
TEXTS = ["Map:\n-1, 0: tree\nInventory: wood 3", "Map:\nnone", "Map:\n0, 2: cow on grass\n1, 1: stone\n2, 2: iron\n"
         "Inventory: stone 2, coal 1\nHealth: 9, Food: 7"]
