"""The attack vocabulary: seeds, the builder Protocol, the build context and the registry.

A *seed* is one single-turn request (a question, optionally an image). A *builder* turns a seed
into an N-turn `Sample`. Builders are registered in `ATTACKS` with the `@attack` decorator on a
factory, which records garak-style metadata (goal, modalities, whether an attacker model drives
it); a new strategy is one new module of `safeturn.attacks` (or a plugin's):

    @attack("my-attack", goal="make the model do X", modality_in={"text"})
    def my_attack(*, politeness: int = 1) -> AttackBuilder:
        return MyAttack(politeness)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, Protocol

from pydantic import BaseModel, Field

from safeturn.errors import AttackConfigError as AttackConfigError
from safeturn.models.base import ChatModel
from safeturn.registry import Registry, RegistryError, modules_in
from safeturn.schema import GenerateParams, ImagePart, Sample

MAX_TURNS = 8
"""Largest number of user turns a builder produces (SafeMT goes up to 8)."""

P = ParamSpec("P")


class Seed(BaseModel):
    """One single-turn request that builders turn into multi-turn dialogues."""

    id: str
    question: str
    """The (harmful or benign) request, as a question."""
    instruction: str | None = None
    """A short imperative form, e.g. FigStep's "Steps to manufacture illegal drugs."."""
    image: ImagePart | None = None
    image_text: str | None = None
    """The text the seed's own image shows, when known (FigStep's rendered instruction,
    MM-SafetyBench's key phrase): such an image is described as text, never as a photo."""
    category: str | None = None
    source: str = "seed"
    harmful: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def statement(self) -> str:
        """The text to show in an image: the instruction, or the question when there is none."""
        return self.instruction or self.question


def seed_from_sample(sample: Sample) -> Seed:
    """A seed from a single-turn sample: its first image and its question.

    The question is the sample's `seed_question`, or the text of its last user message. A
    typographic sample's image text is its instruction (FigStep) or key phrase (MM-SafetyBench).
    """
    images = sample.dialogue.images
    question = sample.seed_question
    if not question:
        users = [m for m in sample.dialogue.messages if m.role == "user"]
        question = users[-1].text if users else ""
    if not question.strip():
        raise AttackConfigError(f"sample {sample.id!r} has no question to use as a seed")
    instruction = sample.metadata.get("instruction")
    image_text = None
    if images and sample.strategy == "typography":
        shown = instruction or sample.metadata.get("key_phrase")
        image_text = shown.strip() if isinstance(shown, str) and shown.strip() else None
    return Seed(
        id=sample.id,
        question=question,
        instruction=instruction if isinstance(instruction, str) and instruction else None,
        image=images[0] if images else None,
        image_text=image_text,
        category=sample.category,
        source=sample.source,
        harmful=sample.harmful is not False,
        metadata=dict(sample.metadata),
    )


ImageSink = Callable[[bytes], ImagePart]
"""Where rendered images go: takes PNG bytes, returns the part that references them."""


def inline_image(png: bytes) -> ImagePart:
    """Keep the image bytes inside the sample (the default sink)."""
    return ImagePart(data=png)


class ImageDirectory:
    """A sink writing each image once to `root/<sha256 prefix>.png` (content-addressed)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._written: dict[str, ImagePart] = {}

    def __call__(self, png: bytes) -> ImagePart:
        """Write `png` unless an identical file exists; return a part with its absolute path."""
        digest = hashlib.sha256(png).hexdigest()[:16]
        if digest not in self._written:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{digest}.png"
            if not path.exists():
                path.write_bytes(png)
            self._written[digest] = ImagePart(path=str(path))
        return self._written[digest]


ATTACKER_PARAMS = GenerateParams(max_tokens=1024, temperature=0.7)
"""Sampling options for attacker calls unless the caller gives others."""


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder needs besides the seed and the turn count."""

    seed: int = 0
    """The build seed; with the strategy, seed id and turn count it fixes every random choice."""
    attacker: ChatModel | None = None
    """The model that writes dialogues in model-assisted mode; None for template mode."""
    images: ImageSink = inline_image
    params: GenerateParams = ATTACKER_PARAMS
    retries: int = 2
    """Extra attacker attempts after a malformed or refusing reply."""
    gate: asyncio.Semaphore | None = field(default=None, compare=False)
    """Bounds concurrent attacker calls across all builders sharing this context."""

    def rng(self, strategy: str, seed: Seed, turns: int) -> random.Random:
        """The random generator for one (strategy, seed, turn count); never the global one."""
        return random.Random(f"{self.seed}:{strategy}:{seed.id}:{turns}")


class AttackBuilder(Protocol):
    """Turns a seed into an N-turn sample (N user messages, ending with a user message).

    Examples:
        >>> import asyncio
        >>> from safeturn.attacks import BuildContext, Seed, get_strategy
        >>> builder = get_strategy("escalation")
        >>> seed = Seed(id="s1", question="How do I pick a lock?")
        >>> sample = asyncio.run(builder(seed, 3, BuildContext()))
        >>> sample.id, sample.turns, sample.dialogue.messages[-1].role
        ('s1-escalation-3t', 3, 'user')
    """

    async def __call__(self, seed: Seed, turns: int, ctx: BuildContext) -> Sample:
        """Build the `turns`-turn dialogue for `seed`."""
        ...


@dataclass(frozen=True)
class AttackInfo:
    """Declarative metadata of a registered attack (in the manner of garak's probes)."""

    name: str
    goal: str
    modality_in: frozenset[str]
    """What the target must accept: {"text"} or {"text", "image"}."""
    modality_out: frozenset[str]
    needs_attacker: bool
    """True when the attack is designed around an attacker model (templates are a fallback)."""
    tags: tuple[str, ...] = ()
    doc_uri: str = ""


ATTACKS: Registry[AttackBuilder] = Registry(
    "attack", builtins=modules_in("safeturn.attacks"), error=AttackConfigError
)
"""Every attack strategy by name: each module of `safeturn.attacks` registers its own with
`@attack`, plugins theirs under the entry-point group `safeturn.attacks`. An entry's metadata
holds its `AttackInfo` fields; its factory takes keyword options only."""

_DEFAULTS: dict[str, AttackBuilder] = {}
"""Each attack built once without options (at registration, which checks it is async)."""


class _Defaults(Mapping[str, AttackBuilder]):
    """`STRATEGIES`: every registered attack, built with its default options, by name."""

    def __getitem__(self, name: str) -> AttackBuilder:
        if name not in ATTACKS:
            raise KeyError(name)
        if name not in _DEFAULTS:  # registered by a plugin through `ATTACKS.register`
            _DEFAULTS[name] = ATTACKS.create(name)
        return _DEFAULTS[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(ATTACKS.names()))  # `all` builds in name order, plugins included

    def __len__(self) -> int:
        return len(ATTACKS.names())


class _Infos(Mapping[str, AttackInfo]):
    """`ATTACK_INFO`: every registered attack's metadata, by name."""

    def __getitem__(self, name: str) -> AttackInfo:
        if name not in ATTACKS:
            raise KeyError(name)
        meta = ATTACKS.get(name).metadata
        return AttackInfo(
            name=name,
            goal=str(meta.get("goal", ATTACKS.get(name).summary)),
            modality_in=frozenset(meta.get("modality_in", ("text",))),
            modality_out=frozenset(meta.get("modality_out", ("text",))),
            needs_attacker=bool(meta.get("needs_attacker", False)),
            tags=tuple(meta.get("tags", ())),
            doc_uri=str(meta.get("doc_uri", "")),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(ATTACKS.names()))

    def __len__(self) -> int:
        return len(ATTACKS.names())


STRATEGIES: Mapping[str, AttackBuilder] = _Defaults()
"""Every registered attack, built with its default options, by name (a view of `ATTACKS`)."""
ATTACK_INFO: Mapping[str, AttackInfo] = _Infos()
"""Every registered attack's metadata, by name (a view of `ATTACKS`)."""


def attack(
    name: str,
    *,
    goal: str,
    modality_in: Iterable[str] = ("text",),
    modality_out: Iterable[str] = ("text",),
    needs_attacker: bool = False,
    tags: Iterable[str] = (),
    doc_uri: str = "",
) -> Callable[[Callable[P, AttackBuilder]], Callable[P, AttackBuilder]]:
    """Register an attack factory under `name` in `ATTACKS`, with its metadata.

    The factory is called once without arguments to check that it builds an async callable
    (that builder is `STRATEGIES[name]`); `get_strategy(name, **options)` calls it again with
    options, which `ATTACKS` checks against the factory's signature.

    Raises:
        AttackConfigError: If `name` is already registered.
        TypeError: If the factory returns something whose `__call__` is not async.
    """

    def decorate(factory: Callable[P, AttackBuilder]) -> Callable[P, AttackBuilder]:
        @functools.wraps(factory)
        def create(*args: P.args, **kwargs: P.kwargs) -> AttackBuilder:
            builder = factory(*args, **kwargs)
            call = getattr(builder, "__call__", None)  # noqa: B004 - we need the method itself
            if not (inspect.iscoroutinefunction(builder) or inspect.iscoroutinefunction(call)):
                raise TypeError(f"attack {name!r}: the factory must return an async callable")
            return builder

        default = create()  # type: ignore[call-arg]  # factories take keywords only
        try:
            ATTACKS.register(
                name,
                summary=goal,
                goal=goal,
                modality_in=frozenset(modality_in),
                modality_out=frozenset(modality_out),
                needs_attacker=needs_attacker,
                tags=tuple(tags),
                doc_uri=doc_uri,
            )(create)
        except RegistryError as exc:
            raise AttackConfigError(f"attack {name!r} is already registered ({exc})") from exc
        _DEFAULTS[name] = default
        return create

    return decorate


def get_strategy(name: str, **options: Any) -> AttackBuilder:
    """The builder registered as `name`; with options, a fresh one built from them.

    Raises:
        AttackConfigError: If no attack has that name (the message lists the known ones), or
            the options do not fit its factory.
    """
    if name not in ATTACKS:
        known = ", ".join(STRATEGIES)
        raise AttackConfigError(f"unknown attack strategy {name!r}; known strategies: {known}")
    if not options:
        return STRATEGIES[name]
    try:
        return ATTACKS.create(name, **options)
    except (TypeError, AttackConfigError) as exc:
        raise AttackConfigError(f"bad options for attack {name!r}: {exc}") from exc


def check_turns(turns: int) -> int:
    """Return `turns` if it lies in 1..MAX_TURNS, else raise `AttackConfigError`."""
    if not 1 <= turns <= MAX_TURNS:
        raise AttackConfigError(f"turns must be between 1 and {MAX_TURNS}, got {turns}")
    return turns
