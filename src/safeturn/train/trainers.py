"""The trainer registry: each trainer is its config class and its train function.

A trainer module registers its train function where it defines it, naming its config class:

    @TRAINERS.register("sft", summary="...", config_file="configs/train/sft_cold_start.yaml",
                       config=SafeSFTConfig)
    def train_sft(config: SafeSFTConfig) -> SFTResult: ...

`safeturn train list` and `safeturn plugins` print the registry, the loop looks its trainer up
here, and another package adds a trainer through the `safeturn.trainers` entry-point group.
The built-in modules are imported on the first lookup, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel

from safeturn.errors import TrainConfigError
from safeturn.registry import Registry
from safeturn.train.config import YamlConfig

TRAINERS: Registry[BaseModel] = Registry(
    "trainer",
    builtins=(
        "safeturn.train.sft",
        "safeturn.train.grpo",
        "safeturn.train.rlaif",
        "safeturn.train.dream",
    ),
    error=TrainConfigError,
)
"""Trainer name → train function (taking its config, returning a pydantic result whose
`checkpoint` is the trained model); `metadata["config"]` is the config class and
`metadata["config_file"]` an example YAML under configs/."""


class Trainer(NamedTuple):
    """One registered trainer, as the loop and the CLI use it."""

    name: str
    config: type[YamlConfig]
    train: Callable[..., BaseModel]
    summary: str


def get_trainer(name: str) -> Trainer:
    """The trainer registered as `name`.

    Raises:
        TrainConfigError: No such trainer (the known ones are listed), or a member registered
            without its `config` class.
    """
    entry = TRAINERS.get(name)
    config: Any = entry.metadata.get("config")
    if not (isinstance(config, type) and issubclass(config, YamlConfig)):
        raise TrainConfigError(
            f"trainer {entry.name!r} ({entry.origin}) was registered without config=<its "
            "YamlConfig class>"
        )
    return Trainer(entry.name, config, entry.factory, entry.summary)
