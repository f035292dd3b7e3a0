"""Multi-turn attack builders (DESIGN §3).

Each strategy turns a single-turn `Seed` (question, optional image) into an N-turn `Sample`
for N in 1..8, from templates (offline, deterministic given the build seed) or written by an
attacker model (with template fallback). Strategies register themselves in `ATTACKS` with
`@attack`, one module each; the registry imports every module here when first asked.
"""

from __future__ import annotations

from safeturn.attacks._render import render_typographic
from safeturn.attacks.attacker import AttackerResult, ask_attacker
from safeturn.attacks.base import (
    ATTACK_INFO,
    ATTACKS,
    MAX_TURNS,
    STRATEGIES,
    AttackBuilder,
    AttackConfigError,
    AttackInfo,
    BuildContext,
    ImageDirectory,
    ImageSink,
    Seed,
    attack,
    get_strategy,
    inline_image,
    seed_from_sample,
)
from safeturn.attacks.builder import (
    DEFAULT_TURNS,
    build_attacks,
    build_attacks_sync,
    load_seeds_csv,
    localize_images,
    resolve_strategies,
    resolve_turns,
    summarize,
)
from safeturn.attacks.decomposition import ImageGenerator, diffusers_generator
from safeturn.jsonparse import extract_json

__all__ = [
    "ATTACKS",
    "ATTACK_INFO",
    "DEFAULT_TURNS",
    "MAX_TURNS",
    "STRATEGIES",
    "AttackBuilder",
    "AttackConfigError",
    "AttackInfo",
    "AttackerResult",
    "BuildContext",
    "ImageDirectory",
    "ImageGenerator",
    "ImageSink",
    "Seed",
    "ask_attacker",
    "attack",
    "build_attacks",
    "build_attacks_sync",
    "diffusers_generator",
    "extract_json",
    "get_strategy",
    "inline_image",
    "load_seeds_csv",
    "localize_images",
    "render_typographic",
    "resolve_strategies",
    "resolve_turns",
    "seed_from_sample",
    "summarize",
]
