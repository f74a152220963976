"""What each Craftax variant is: names, actions, achievements and observation shapes, read from Craftax."""

from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from hsrl.errors import InputError

ENV_NAMES = (
    "Craftax-Symbolic-v1",
    "Craftax-Pixels-v1",
    "Craftax-Classic-Symbolic-v1",
    "Craftax-Classic-Pixels-v1",
)


@dataclass(frozen=True)
class EnvInfo:
    """Static facts about one Craftax environment, all read from Craftax itself."""

    name: str
    classic: bool
    pixels: bool
    action_names: tuple[str, ...]  # index = action id
    achievement_names: tuple[str, ...]  # index = position in state.achievements
    obs_shape: tuple[int, ...]  # what the env returns: (H, W, 3) pixels or the flat symbolic vector
    symbolic_obs_shape: tuple[int, ...]  # the symbolic vector of the same state (text is rendered from it)
    view_shape: tuple[int, int]  # rows, columns of the local map the player sees

    @property
    def variant(self) -> str:
        """Text-renderer variant: 'classic' or 'craftax'."""
        return "classic" if self.classic else "craftax"

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def num_achievements(self) -> int:
        return len(self.achievement_names)


def check_env_name(name: str) -> str:
    if name not in ENV_NAMES:
        raise InputError(f"unknown environment {name!r}; expected one of {', '.join(ENV_NAMES)}")
    return name


def _enum_names(enum: type[Enum]) -> tuple[str, ...]:
    members = sorted(enum, key=lambda m: m.value)
    assert [m.value for m in members] == list(range(len(members))), f"{enum} is not contiguous"
    return tuple(m.name.lower() for m in members)


def craftax_constants(classic: bool):
    """The Craftax constants module of a variant (Action, Achievement, BlockType, ...)."""
    if classic:
        from craftax.craftax_classic import constants
    else:
        from craftax.craftax import constants
    return constants


def craftax_env(name: str):
    """Craftax's own environment object, without auto-reset (hsrl resets itself, see batched.py)."""
    from craftax.craftax_env import make_craftax_env_from_name

    return make_craftax_env_from_name(check_env_name(name), auto_reset=False)


@lru_cache(maxsize=None)
def env_info(name: str) -> EnvInfo:
    check_env_name(name)
    classic = "Classic" in name
    pixels = "Pixels" in name
    const = craftax_constants(classic)
    env = craftax_env(name)
    symbolic = craftax_env(name.replace("Pixels", "Symbolic"))
    params = env.default_params
    return EnvInfo(
        name=name,
        classic=classic,
        pixels=pixels,
        action_names=_enum_names(const.Action),
        achievement_names=_enum_names(const.Achievement),
        obs_shape=tuple(int(d) for d in env.observation_space(params).shape),
        symbolic_obs_shape=tuple(int(d) for d in symbolic.observation_space(params).shape),
        view_shape=(int(const.OBS_DIM[0]), int(const.OBS_DIM[1])),
    )


@dataclass(frozen=True)
class EnvsConfig:
    """List the Craftax environments with their observation shapes, actions and achievements."""

    env: str | None = field(default=None, metadata={"help": "show one environment in full (default: a summary of all)"})

    def check(self) -> None:
        if self.env is not None:
            check_env_name(self.env)
