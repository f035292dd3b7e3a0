"""Moderator spec strings → moderators, so the CLI, the proxy and configs name them one way.

Grammar: `BASE[+llm=MODEL_SPEC | +llama-guard=MODEL_SPEC]`

- `BASE` is `embedded` (the fast stage with the model shipped in `guard/data/`) or a path to a
  trained model `.npz` (its `.json` metadata beside it).
- `+llm=` adds the LLM stage in `prompt` mode, `+llama-guard=` in `llama-guard` mode. Everything
  after the first `=` of that marker is the model spec, verbatim (`safeturn.models.load_model`),
  so a model spec may itself contain `:`, `#`, `/`, `=` or `+`. No model spec starts with
  `+llm=`, and the base never contains it, so the two cannot be confused.

Examples: `embedded`, `runs/guard/moderator.npz`, `embedded+llm=openai:http://host:8000/v1#qwen`,
`embedded+llama-guard=openai:http://host:8001/v1#meta-llama/Llama-Guard-3-8B`,
`embedded+llm=scripted:/tmp/verdicts.json`.
"""

from __future__ import annotations

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
    """A parsed moderator spec."""

    model_path: Path
    llm_spec: str | None
    llm_mode: LlmMode


def parse_moderator_spec(spec: str) -> ModeratorSpec:
    """Split a spec into the model file and the optional LLM stage (no file access).

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
    path = DEFAULT_MODEL_PATH if base == "embedded" else Path(base).expanduser()
    return ModeratorSpec(path, llm_spec, mode)


def load_moderator(spec: str = "embedded", **options: Any) -> Moderator:
    """Build the moderator a spec names (see the module docstring for the grammar).

    Args:
        spec: `embedded`, a model path, either followed by `+llm=MODEL` or `+llama-guard=MODEL`.
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
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ModelSpecError(
            f"unknown moderator option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_OPTIONS))}"
        )
    parsed = parse_moderator_spec(spec)
    if not parsed.model_path.is_file():
        raise ModelSpecError(
            f"moderator spec {spec!r}: model file {parsed.model_path} does not exist "
            "(train one with `safeturn guard train --out PATH`)"
        )
    model = ModeratorModel.load(parsed.model_path)
    llm = None
    if parsed.llm_spec is not None:
        from safeturn.models import load_model

        llm = LlmStage(
            load_model(parsed.llm_spec),
            mode=parsed.llm_mode,
            attach_images=bool(options.get("attach_images", False)),
            timeout_s=options.get("llm_timeout_s", 60.0),
        )
    policies = options.get("policies", "shipped")
    if policies == "shipped":
        policies = PolicyLibrary.default()
    elif isinstance(policies, str | Path):
        policies = PolicyLibrary.from_file(Path(policies))
    images = ImageAnalyzer(
        nudity=no_nudity if options.get("nudity", True) is False else None,
        threads=options.get("ocr_threads"),
        workers=int(options.get("image_workers", 2)),
    )
    band = options.get("band")
    deadline = options.get("image_deadline_s")
    return DialogueModerator(
        model,
        name=redact_url_credentials(spec.strip()),
        threshold=options.get("threshold"),
        band=None if band is None else (float(band[0]), float(band[1])),
        llm=llm,
        policies=policies,
        images=images,
        state_cache=int(options.get("cache_size", 1024)),
        llm_can_clear=bool(options.get("llm_can_clear", False)),
        image_deadline_s=None if deadline is None else float(deadline),
    )
