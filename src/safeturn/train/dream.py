"""DREAM end to end: risk-aware SFT (optional), then iterative RLAIF from its checkpoint.

DREAM's first step, risk disentanglement, produces data rather than a model (`safeturn synth
mrd` writes the risk JSONL and the risk-aware SFT JSONL), so this module runs steps 2 and 3 on
those files. RLAIF starts from the SFT checkpoint because the SFT stage teaches the policy to
name risks at all; without it, k samples from a base model rarely contain a reply that does,
and the judge has nothing to prefer.

Layout of `output_dir`: `sft/` (the SFT checkpoint), `rlaif/round-{r}/` and `rlaif/rounds.json`,
and `dream.json` (the SFT settings and result, written once the SFT stage finished). A rerun
with the same settings reuses a finished SFT stage and finished rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from safeturn.errors import RlaifError, SafeturnError
from safeturn.judges.risk_score import RiskScorer
from safeturn.redact import scrub_secrets
from safeturn.schema import read_jsonl
from safeturn.train.config import (
    EMBEDDED,
    OptimSettings,
    YamlConfig,
    changed_settings,
    field_defaults,
)
from safeturn.train.rlaif import RlaifConfig, RlaifResult, RlaifSettings, train_rlaif
from safeturn.train.rlaif_data import file_sha256
from safeturn.train.sft import SafeSFTConfig, SFTResult, train_sft
from safeturn.train.trainers import TRAINERS

logger = logging.getLogger(__name__)

DREAM_FILE = "dream.json"


class SftStage(OptimSettings):
    """The risk-aware SFT stage: `SafeSFTConfig`'s fields but the model, data and output."""

    max_length: int | None = Field(default=1024, ge=8)


class DreamConfig(YamlConfig):
    """A DREAM run: the base model, the SFT stage and the RLAIF rounds.

    In YAML, `sft:` and `rlaif:` are mappings of their stage's fields, e.g.
    `rlaif: {data: prompts.jsonl, risks: risks.jsonl, rounds: 3}`; on the command line,
    `--set sft.max_steps=10 --set rlaif.k=4`.
    """

    load_error: ClassVar[type[SafeturnError]] = RlaifError
    label: ClassVar[str] = "DREAM config"

    model: str = EMBEDDED
    """A local checkpoint directory, or `embedded` for the converted SmolLM2."""
    output_dir: Path
    sft_data: Path | None = None
    """The risk-aware SFT JSONL; None skips the SFT stage and starts RLAIF from `model`."""
    sft: SftStage = Field(default_factory=SftStage)
    rlaif: RlaifSettings

    def sft_config(self) -> SafeSFTConfig:
        """The SFT stage as a `SafeSFTConfig` (saved under `output_dir/sft`).

        Raises:
            RlaifError: There is no SFT data.
        """
        if self.sft_data is None:
            raise RlaifError("the DREAM config has no sft_data, so there is no SFT stage")
        return SafeSFTConfig(
            model=self.model,
            data=self.sft_data,
            output_dir=self.output_dir / "sft",
            merge_lora=True,  # RLAIF starts from this checkpoint as a plain model
            **self.sft.model_dump(),
        )

    def rlaif_config(self, start: str) -> RlaifConfig:
        """The RLAIF stage starting from `start` (saved under `output_dir/rlaif`)."""
        return RlaifConfig(
            model=start, output_dir=self.output_dir / "rlaif", **self.rlaif.model_dump()
        )


class DreamResult(BaseModel):
    """A finished DREAM run."""

    checkpoint: Path
    """The last RLAIF round's model."""
    sft: SFTResult | None
    sft_reused: bool = False
    rlaif: RlaifResult


class _SftRecord(BaseModel):
    """`dream.json`: the finished SFT stage's settings (to check a resume) and result."""

    settings: dict[str, Any]
    result: SFTResult


def sft_fingerprint(config: SafeSFTConfig) -> dict[str, Any]:
    """The SFT stage's settings as stored in `dream.json` and compared on a rerun.

    Secrets are scrubbed (the file is kept beside the checkpoints and may be shared), and the
    SFT data counts by content, so a file edited in place is not silently reused.
    """
    settings = scrub_secrets(config.model_dump(mode="json"))
    settings["data_sha256"] = file_sha256(config.data)
    return settings


def check_turn_order(path: Path) -> None:
    """Refuse SFT data where one speaker has two messages in a row.

    Files written by `synth risk-sft` before it merged a multi-turn sample's user turns hold
    `user, user, …, assistant`; ChatML renders that without complaint, so the model would
    learn on a conversation shape it never meets, and stricter templates fail mid-run.

    Raises:
        RlaifError: The first such sample, with its id and message positions.
    """
    if not path.is_file():
        return  # `train_sft` reports the missing file
    for sample in read_jsonl(path):
        roles = [m.role for m in sample.dialogue.messages]
        for k in range(1, len(roles)):
            if roles[k] == roles[k - 1] != "system":
                raise RlaifError(
                    f"{path}: sample {sample.id!r}: messages {k - 1} and {k} are both "
                    f"{roles[k]} turns; risk-aware SFT data must alternate (rebuild it with "
                    "`safeturn synth risk-sft`, which merges a sample's user turns)"
                )


def _read_record(path: Path) -> _SftRecord | None:
    if not path.is_file():
        return None
    try:
        return _SftRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise RlaifError(f"{path} is unreadable ({exc}); delete it to rerun the SFT stage") from exc


@TRAINERS.register(
    "dream",
    summary="DREAM: risk-aware SFT, then RLAIF rounds from its checkpoint",
    config_file="configs/train/dream_cpu_toy.yaml",
    config=DreamConfig,
)
def train_dream(
    config: DreamConfig,
    *,
    scorer: RiskScorer | None = None,
    progress: Callable[[str], None] | None = None,
) -> DreamResult:
    """Run (or resume) the SFT stage, then the RLAIF rounds from its checkpoint.

    Args:
        config: The run.
        scorer: The RLAIF judge (and eval judge, unless `rlaif.eval_judge` names one); built
            from `rlaif.judge` when omitted.
        progress: Called with a short status line as each phase starts.

    Raises:
        RlaifError: Bad RLAIF data or settings, a round without preference pairs, an
            output folder holding a run with other settings, or SFT data with two user (or
            assistant) messages in a row.
        TrainConfigError: The model is neither `embedded` nor a local checkpoint directory.
        SFTDataError: The SFT data is empty or holds a sample that cannot be masked.
    """
    say = progress or (lambda _msg: None)
    record = config.output_dir / DREAM_FILE
    sft: SFTResult | None = None
    reused = False
    start = config.model
    if config.sft_data is not None:
        sft_config = config.sft_config()
        settings = sft_fingerprint(sft_config)
        stored = _read_record(record)
        if stored is not None and (sft_config.output_dir / "config.json").is_file():
            before = scrub_secrets(stored.settings)  # a file from before redaction compares
            changed = changed_settings(before, settings, field_defaults(SafeSFTConfig))
            if changed:
                raise RlaifError(
                    f"{config.output_dir} holds a DREAM run whose SFT stage had other settings "
                    f"({', '.join(changed)}); use another output_dir, or the same settings to "
                    "resume"
                )
            sft, reused = stored.result, True
        else:
            check_turn_order(sft_config.data)
            say("risk-aware SFT")
            sft = train_sft(sft_config)
            record.parent.mkdir(parents=True, exist_ok=True)
            done = _SftRecord(settings=settings, result=sft)
            record.write_text(done.model_dump_json(indent=2) + "\n", encoding="utf-8")
        start = str(sft.checkpoint)
    rlaif = train_rlaif(config.rlaif_config(start), scorer=scorer, progress=say)
    return DreamResult(checkpoint=rlaif.checkpoint, sft=sft, sft_reused=reused, rlaif=rlaif)
