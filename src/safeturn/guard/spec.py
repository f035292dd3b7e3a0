"""Moderator spec strings → moderators, through the `MODERATORS` registry.

Grammar: `BASE[+llm=MODEL_SPEC | +llama-guard=MODEL_SPEC]`

- `BASE` names a member of `MODERATORS`: `embedded` (the fast stage with the model shipped in
  `guard/data/`), `file:PATH` (a trained model `.npz`, its `.json` metadata beside it), or a
  plugin's `NAME[:ARGUMENT]`. A base that names no member is a path: `runs/guard/m.npz` means
  `file:runs/guard/m.npz`, so every spec written before the registry still works.
- `+llm=` adds the LLM stage in `prompt` mode, `+llama-guard=` in `llama-guard` mode. Everything
  after the first `=` of that marker is the model spec, verbatim (`safeturn.models.load_model`),
  so a model spec may itself contain `:`, `#`, `/`, `=` or `+`. No model spec starts with
  `+llm=`, and the base never contains it, so the two cannot be confused. The member's factory
  gets it as the options `llm_spec` and `llm_mode`.

Examples: `embedded`, `runs/guard/moderator.npz`, `embedded+llm=openai:http://host:8000/v1#qwen`,
`embedded+llama-guard=openai:http://host:8001/v1#meta-llama/Llama-Guard-3-8B`,
`embedded+llm=scripted:/tmp/verdicts.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from safeturn.errors import ModelSpecError
from safeturn.guard.base import Moderator
from safeturn.guard.images import ImageAnalyzer, no_nudity
from safeturn.guard.llm_stage import LlmMode, LlmStage
from safeturn.guard.model import DEFAULT_MODEL_PATH, ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.policies import PolicyLibrary
from safeturn.redact import redact_url_credentials
from safeturn.registry import Entry, Registry

MODERATORS: Registry[Moderator] = Registry("moderator", error=ModelSpecError)
"""Every moderator by the name at the head of its spec's base; plugins declare theirs under
the entry-point group `safeturn.moderators`. A factory with an argument takes the text after
`NAME:`; every factory takes the options of `load_moderator` and `llm_spec`/`llm_mode`."""

_MARKERS: tuple[tuple[str, LlmMode], ...] = (("+llm=", "prompt"), ("+llama-guard=", "llama-guard"))
_OPTIONS = frozenset(
    {
        "threshold",
        "band",
        "policies",
        "nudity",
        "attach_images",
        "llm_timeout_s",
        "cache_size",
        "image_deadline_s",
        "image_workers",
        "ocr_threads",
    }
)


class ModeratorSpec(NamedTuple):
    """A parsed moderator spec whose base is a trained model file."""

    model_path: Path
    llm_spec: str | None
    llm_mode: LlmMode


class _Parts(NamedTuple):
    entry: Entry[Moderator]
    argument: str
    llm_spec: str | None
    llm_mode: LlmMode


def _parts(spec: str) -> _Parts:
    """The member a spec's base names, its argument, and the optional LLM stage (no file access).

    Raises:
        ModelSpecError: An empty base or an empty model spec after the marker.
    """
    base, llm_spec = spec.strip(), None
    mode: LlmMode = "prompt"
    found = [(spec.find(marker), marker, m) for marker, m in _MARKERS if marker in spec]
    if found:
        at, marker, mode = min(found)
        base, llm_spec = spec[:at].strip(), spec[at + len(marker) :].strip()
        if not llm_spec:
            raise ModelSpecError(f"moderator spec {spec!r}: no model spec after {marker!r}")
    if not base:
        raise ModelSpecError(
            f"moderator spec {spec!r}: expected `embedded` or a model .npz path before the "
            "LLM stage, e.g. embedded+llm=openai:http://host:8000/v1#model"
        )
    if not MODERATORS.names_member(base):
        base = f"file:{base}"  # a bare path, as every spec before the registry wrote it
    entry, argument = MODERATORS.split(base)
    return _Parts(entry, argument, llm_spec, mode)


def parse_moderator_spec(spec: str) -> ModeratorSpec:
    """Split a spec into the model file and the optional LLM stage (no file access).

    Raises:
        ModelSpecError: A malformed spec, or one whose base is not a trained model file.
    """
    parts = _parts(spec)
    path_of: Callable[[str], Path] | None = parts.entry.metadata.get("model_path")
    if path_of is None:
        raise ModelSpecError(f"moderator spec {spec!r}: {parts.entry.name!r} has no model file")
    return ModeratorSpec(path_of(parts.argument), parts.llm_spec, parts.llm_mode)


def check_moderator_spec(spec: str) -> None:
    """Raise `ModelSpecError` for a spec `load_moderator` would refuse, building nothing.

    Checks the grammar, runs the member's `check=` hook (the model file exists) and checks the
    LLM stage's model spec.
    """
    from safeturn.models.spec import check_model_spec

    parts = _parts(spec)
    check: Callable[[str, str], None] | None = parts.entry.metadata.get("check")
    if check is not None:
        check(spec, parts.argument)
    if parts.llm_spec is not None:
        check_model_spec(parts.llm_spec)


def load_moderator(spec: str = "embedded", **options: Any) -> Moderator:
    """Build the moderator a spec names (see the module docstring for the grammar).

    The built-in moderators are async context managers: `async with load_moderator(spec) as
    moderator:` closes their LLM stage and image threads on exit.

    Args:
        spec: `embedded`, `file:PATH` or a model path, either followed by `+llm=MODEL` or
            `+llama-guard=MODEL`; or a plugin moderator's spec.
        **options: `threshold` (float), `band` ((lo, hi): where the LLM stage is consulted),
            `policies` (a `PolicyLibrary`, a policy file path, or None for none; default: the
            shipped library), `nudity` (False switches the NudeNet signal off),
            `attach_images` (send images to the LLM stage too), `llm_timeout_s`,
            `cache_size` (conversation states and LLM answers kept), `image_deadline_s`
            (longest wait for a screening's new images; default none), `image_workers`
            (image pool threads, default 2), `ocr_threads` (ONNX Runtime threads for OCR and
            NudeNet; default `SAFETURN_OCR_THREADS`, else all cores).

    Raises:
        ModelSpecError: Malformed spec, unknown option, or a model path that does not exist.
        PrerequisiteError: The model file is unreadable or of another feature recipe.
    """
    parts = _parts(spec)
    llm = {} if parts.llm_spec is None else {"llm_spec": parts.llm_spec, "llm_mode": parts.llm_mode}
    if parts.entry.argument is None:
        moderator = parts.entry.factory(**llm, **options)
    else:
        moderator = parts.entry.factory(parts.argument, **llm, **options)
    moderator.name = redact_url_credentials(spec.strip())
    return moderator


def _model_file(spec: str, path: Path) -> None:
    if not path.is_file():
        raise ModelSpecError(
            f"moderator spec {spec!r}: model file {path} does not exist "
            "(train one with `safeturn guard train --out PATH`)"
        )


def _trained(
    path: Path, llm_spec: str | None, llm_mode: LlmMode, options: Mapping[str, Any]
) -> Moderator:
    """The two-stage `DialogueModerator` over the trained model at `path`."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ModelSpecError(
            f"unknown moderator option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_OPTIONS))}"
        )
    _model_file(str(path), path)
    model = ModeratorModel.load(path)
    band = options.get("band")
    deadline = options.get("image_deadline_s")
    return DialogueModerator(
        model,
        name=str(path),
        threshold=options.get("threshold"),
        band=None if band is None else (float(band[0]), float(band[1])),
        llm=_llm_stage(llm_spec, llm_mode, options),
        policies=_policies(options.get("policies", "shipped")),
        images=ImageAnalyzer(
            nudity=no_nudity if options.get("nudity", True) is False else None,
            threads=options.get("ocr_threads"),
            workers=int(options.get("image_workers", 2)),
        ),
        state_cache=int(options.get("cache_size", 1024)),
        llm_can_clear=bool(options.get("llm_can_clear", False)),
        image_deadline_s=None if deadline is None else float(deadline),
    )


def _llm_stage(spec: str | None, mode: LlmMode, options: Mapping[str, Any]) -> LlmStage | None:
    if spec is None:
        return None
    from safeturn.models import load_model

    return LlmStage(
        load_model(spec),
        mode=mode,
        attach_images=bool(options.get("attach_images", False)),
        timeout_s=options.get("llm_timeout_s", 60.0),
    )


def _policies(value: Any) -> PolicyLibrary | None:
    """The shipped library for "shipped", a library read from a path, else `value` as given."""
    if value == "shipped":
        return PolicyLibrary.default()
    if isinstance(value, str | Path):
        return PolicyLibrary.from_file(Path(value))
    return value  # type: ignore[no-any-return]


@MODERATORS.register(
    "embedded",
    summary="the two-stage moderator over the model shipped in guard/data/; add an LLM stage "
    "with +llm=MODEL_SPEC or +llama-guard=MODEL_SPEC",
    example="embedded",
    model_path=lambda _: DEFAULT_MODEL_PATH,
    check=lambda spec, _: _model_file(spec, DEFAULT_MODEL_PATH),
)
def embedded(
    *, llm_spec: str | None = None, llm_mode: LlmMode = "prompt", **options: Any
) -> Moderator:
    """The shipped moderator."""
    return _trained(DEFAULT_MODEL_PATH, llm_spec, llm_mode, options)


@MODERATORS.register(
    "file",
    summary="the two-stage moderator over a model trained with `safeturn guard train` "
    "(PATH.npz, PATH.json beside it); a bare path means the same",
    example="file:runs/guard/moderator.npz",
    argument="model .npz path",
    model_path=lambda rest: Path(rest).expanduser(),
    check=lambda spec, rest: _model_file(spec, Path(rest).expanduser()),
)
def trained_file(
    rest: str, *, llm_spec: str | None = None, llm_mode: LlmMode = "prompt", **options: Any
) -> Moderator:
    """The moderator trained into the `.npz` file at `rest`."""
    return _trained(Path(rest).expanduser(), llm_spec, llm_mode, options)
