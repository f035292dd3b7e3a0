"""Write the judge's labelled sources as chat JSONL, so any judge can be validated on them.

`safeturn judge export-labelled` writes one `<family>.jsonl` per source family with absolute
labels (hh-rlhf has only preference pairs and is left out), in the format `safeturn judge
validate` reads: the user turns (with a placeholder assistant turn between them, since the
judge reads user turns only), the reply, `label` and `source` (XSTest's source names the
model that wrote the reply, so results come per model). Every baseline in the README's judge
table is this export plus `judge validate --judge SPEC`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safeturn.judges.reply_data import ReplyExample, load_reply_examples

EXPORTED = ("jailbreakbench", "xstest", "mtbench101", "vlguard", "siuo")
BETWEEN_TURNS = "(earlier reply not recorded)"
"""The assistant turn written between two user turns; every judge here ignores its text."""


def chat_line(example: ReplyExample, index: int) -> dict[str, object]:
    """One labelled chat-format record of an example."""
    messages: list[dict[str, str]] = []
    for position, text in enumerate(example.users):
        if position:
            messages.append({"role": "assistant", "content": BETWEEN_TURNS})
        messages.append({"role": "user", "content": text})
    messages.append({"role": "assistant", "content": example.reply})
    model = example.meta.get("model")
    source = f"{example.source}/{model}" if model else example.source
    return {
        "id": f"{example.source}-{index}",
        "messages": messages,
        "label": "unsafe" if example.unsafe else "safe",
        "source": source,
    }


def export_labelled(root: Path, out: Path, families: tuple[str, ...] = EXPORTED) -> dict[str, int]:
    """Write `<family>.jsonl` under `out` for each family; returns lines written per family."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for family in families:
        examples = [
            ex for ex in load_reply_examples(root, sources=(family,)) if ex.unsafe is not None
        ]
        with (out / f"{family}.jsonl").open("w", encoding="utf-8") as fh:
            for index, example in enumerate(examples):
                fh.write(json.dumps(chat_line(example, index), ensure_ascii=False) + "\n")
        written[family] = len(examples)
    return written
