"""The options every training command shares, and loading a trainer's config from them.

`--config`, `--model`, `--data`, `--out` and `--set KEY=VALUE` are the whole interface: `--set`
reaches every field of the trainer's config class (`safeturn.train.overrides`), so the
commands mirror no config field by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option(help="YAML of the trainer's config fields; --set and flags win")
]
ModelOpt = Annotated[
    str | None, typer.Option(help="local checkpoint dir, or `embedded` [default: embedded]")
]
OutOpt = Annotated[Path | None, typer.Option(help="where the trained model is saved")]
DataOpt = Annotated[Path | None, typer.Option(help="safeturn JSONL to train on")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-S",
        metavar="KEY=VALUE",
        help="any config field, e.g. learning_rate=1e-5, reward.beta=0.25, lora.r=8 (dotted "
        "keys for sections, values read as YAML); repeatable, applied after --config",
    ),
]


def load_config(name: str, path: Path | None, sets: list[str] | None, **overrides: Any) -> Any:
    """The registered trainer `name`'s config from a YAML file, `--set` items and flags.

    Raises:
        TrainConfigError: (or the trainer's own config error) An unknown trainer or field, or
            an invalid value; the message names it.
    """
    from safeturn.train.trainers import get_trainer

    return get_trainer(name).config.load(path, sets=sets or (), **overrides)
