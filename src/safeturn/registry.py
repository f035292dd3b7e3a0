"""One registry mechanism for every kind of thing safeturn can be extended with.

Backends, datasets, attacks, judges, pairwise judges, moderators and trainers each have one
`Registry`. A member registers itself with the registry's decorator, which records its name,
what a help table prints about it, free-form metadata (garak-style: goal, modalities, ...) and,
from the factory's signature, the creation options it accepts:

    @JUDGES.register("my-judge", summary="what it decides", example="my-judge:openai:URL#m",
                     argument="model spec")
    def my_judge(rest: str, **options: Any) -> Judge:
        ...

Spec strings are parsed here and nowhere else: `NAME`, `NAME:ARGUMENT` (split on the first
`:`, so an argument may itself hold `:` and `#`), and `NAME[OPTIONS]:ARGUMENT`, where the
bracketed options reach the factory at the head of its argument. A registry imports its
built-in modules the first time it is asked (so `import safeturn` stays light), then every
module that other packages declare under the entry-point group `safeturn.<kind>s`, which is how
plugins add members without touching this project.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from safeturn.errors import RegistryError as RegistryError

logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered member of a kind."""

    kind: str
    name: str
    factory: Callable[..., T]
    summary: str
    example: str
    argument: str | None
    """What follows `NAME:` in a spec (e.g. "model spec", "path"); None: the bare name only."""
    argument_required: bool
    metadata: Mapping[str, Any]
    origin: str
    """The module that registered it; a plugin's entry point shows here."""

    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword options the factory accepts (not its spec argument), by name."""
        params = list(inspect.signature(self.factory).parameters.values())
        if self.argument is not None and params:
            params = params[1:]
        return {
            p.name: p
            for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and not p.name.startswith("_")
        }

    def accepts_any_option(self) -> bool:
        """True when the factory takes `**options` and so checks its own."""
        return any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(self.factory).parameters.values()
        )


@dataclass(frozen=True)
class Created:
    """What a run records about a member it built, so it can say and rebuild what it used."""

    kind: str
    name: str
    spec: str
    options: dict[str, Any]
    origin: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (options that are not JSON scalars are shown by `repr`)."""
        shown = {
            k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
            for k, v in self.options.items()
        }
        return {
            "kind": self.kind,
            "name": self.name,
            "spec": self.spec,
            "options": shown,
            "origin": self.origin,
        }


@dataclass
class Registry(Generic[T]):
    """The members of one kind, looked up by the name at the head of a spec string.

    Args:
        kind: Singular noun used in messages and the entry-point group ("judge" →
            `safeturn.judges`).
        builtins: Modules whose import registers the built-in members.
        error: The exception raised for an unknown name or a malformed spec; each kind keeps
            the error class its callers already catch.
        normalize: Applied to a spec's name before lookup (e.g. `str.lower`).
    """

    kind: str
    builtins: Sequence[str] = ()
    error: type[Exception] = RegistryError
    normalize: Callable[[str], str] = str.strip
    _entries: dict[str, Entry[T]] = field(default_factory=dict, init=False, repr=False)
    _loaded: bool = field(default=False, init=False, repr=False)
    _failure: Exception | None = field(default=None, init=False, repr=False)

    @property
    def group(self) -> str:
        """The entry-point group plugins declare their modules under."""
        return f"safeturn.{self.kind.replace(' ', '_')}s"

    def register(
        self,
        name: str,
        *,
        summary: str,
        example: str | None = None,
        argument: str | None = None,
        argument_required: bool = True,
        **metadata: Any,
    ) -> Callable[[F], F]:
        """Decorate a factory to register it under `name`.

        A factory with an `argument` takes the text after `NAME:` as its first positional
        parameter; every other parameter is a creation option.
        """

        def decorate(factory: F) -> F:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} {name!r} is registered twice: by "
                    f"{self._entries[name].origin} and by {factory.__module__}"
                )
            self._entries[name] = Entry(
                kind=self.kind,
                name=name,
                factory=factory,
                summary=summary,
                example=example or name,
                argument=argument,
                argument_required=argument is not None and argument_required,
                metadata=dict(metadata),
                origin=factory.__module__,
            )
            return factory

        return decorate

    def entries(self) -> list[Entry[T]]:
        """Every member, built-ins first, in registration order."""
        self._load()
        return list(self._entries.values())

    def names(self) -> list[str]:
        """Every member's name."""
        return [e.name for e in self.entries()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self.entries())

    def get(self, name: str) -> Entry[T]:
        """The member named `name`, or the kind's error listing the known names."""
        self._load()
        key = self.normalize(name.strip())
        if key not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {self._known()}")
        return self._entries[key]

    def split(self, spec: str) -> tuple[Entry[T], str]:
        """`NAME[:ARGUMENT]` (or `NAME[OPTS]:ARGUMENT`) → (member, argument text).

        A bracketed option list stays at the head of the argument: `guard[refuse]:a+b` gives
        the `guard` member and `[refuse]:a+b`.
        """
        spec = spec.strip()
        head, rest = _head(spec)
        entry = self.get(head)
        if entry.argument is None and spec != head:
            raise self.error(f"{self.kind} {entry.name!r} takes no argument; got {spec!r}")
        if entry.argument_required and not rest:
            raise self.error(
                f"{self.kind} {entry.name!r} needs a {entry.argument} after '{entry.name}:', "
                f"e.g. {entry.example}"
            )
        return entry, rest

    def names_member(self, spec: str) -> bool:
        """Whether a spec starts with a registered name (read as `split` reads it).

        For callers that treat other specs their own way: a bare moderator path, or an error
        message that names the whole spec.
        """
        self._load()
        return self.normalize(_head(spec.strip())[0].strip()) in self._entries

    def create(self, spec: str, **options: Any) -> T:
        """Build the member a spec names; `options` go to its factory.

        Raises:
            The kind's error: unknown name, malformed spec, or an option the factory does not
            take (named, with the ones it does).
        """
        entry, rest = self.split(spec)
        self._check_options(entry, options)
        if entry.argument is None:
            return entry.factory(**options)
        return entry.factory(rest, **options)

    def describe(self, spec: str, **options: Any) -> Created:
        """What `create(spec, **options)` builds, for a run's record (nothing is built)."""
        entry, _ = self.split(spec)
        return Created(self.kind, entry.name, spec.strip(), dict(options), entry.origin)

    def _check_options(self, entry: Entry[T], options: Mapping[str, Any]) -> None:
        if entry.accepts_any_option():
            return
        allowed = entry.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise self.error(
                f"{self.kind} {entry.name!r} does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(allowed) or 'none'}"
            )

    def _known(self) -> str:
        return ", ".join(
            f"{e.name}:<{e.argument}>" if e.argument_required else e.name
            for e in self._entries.values()
        )

    def _load(self) -> None:
        if self._failure is not None:  # fail the same way on every lookup, not only the first
            raise self._failure
        if self._loaded:
            return
        self._loaded = True  # set first: a built-in module may look itself up while loading
        try:
            for module in self.builtins:
                importlib.import_module(module)
            for point in entry_points(group=self.group):
                self._load_plugin(point)
        except Exception as exc:
            self._failure = exc
            raise

    def _load_plugin(self, point: EntryPoint) -> None:
        try:
            point.load()
        except Exception as exc:
            raise RegistryError(
                f"plugin {point.name!r} ({point.value}) in entry-point group {self.group} "
                f"failed to load: {exc}; fix or uninstall the package that declares it"
            ) from exc
        logger.debug("loaded %s plugin %s from %s", self.kind, point.name, point.value)


def _head(spec: str) -> tuple[str, str]:
    """`NAME[:ARG]` → (NAME, ARG); `NAME[OPTS]:ARG` → (NAME, `[OPTS]:ARG`)."""
    head, sep, rest = spec.partition(":")
    if "[" in head:
        head, _, inside = head.partition("[")
        rest = f"[{inside}{sep}{rest}"
    return head, rest


def modules_in(package: str) -> tuple[str, ...]:
    """Every public module of `package`, by name, to serve as a registry's built-ins.

    When each member of a kind lives in its own module, adding one is adding a file: there is
    no list to keep in step. Only the folder is listed here; nothing is imported until the
    registry is first asked.
    """
    spec = importlib.util.find_spec(package)
    where = spec.submodule_search_locations if spec is not None else None
    if not where:
        raise RegistryError(f"{package!r} is not a package")
    return tuple(
        f"{package}.{info.name}"
        for info in sorted(pkgutil.iter_modules(list(where)), key=lambda m: m.name)
        if not info.name.startswith("_") and not info.ispkg
    )


def all_registries() -> dict[str, Registry[Any]]:
    """Every kind's registry by kind, for `safeturn plugins` and the contract tests.

    Imported here, at call time, because each registry lives beside the kind it serves.
    """
    modules = {
        "backend": ("safeturn.models.spec", "BACKENDS"),
        "dataset": ("safeturn.data.registry", "DATASETS"),
        "attack": ("safeturn.attacks.base", "ATTACKS"),
        "judge": ("safeturn.judges.specs", "JUDGES"),
        "pairwise judge": ("safeturn.judges.specs", "PAIRWISE_JUDGES"),
        "turn scorer": ("safeturn.train.turn_judges", "TURN_SCORERS"),
        "moderator": ("safeturn.guard.spec", "MODERATORS"),
        "trainer": ("safeturn.train.trainers", "TRAINERS"),
    }
    return {
        kind: getattr(importlib.import_module(module), attribute)
        for kind, (module, attribute) in modules.items()
    }
