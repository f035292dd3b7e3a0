"""Subprocess body for the concurrent-resume test: resume a run as `safeturn eval` would.

A `SafeturnError` is printed as one line and exits 1, as the CLI does; anything else escapes
with its traceback (a crash, which the test forbids).
"""

from __future__ import annotations

import asyncio
import sys

from safeturn.errors import SafeturnError
from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.run.engine import execute_run
from safeturn.run.store import RunStore


def main(db: str, run_id: str, delay_s: float) -> int:
    store = RunStore(db)
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply", delay_s=delay_s)
    try:
        asyncio.run(execute_run(store, run_id, model, [load_judge("refusal")]))
    except SafeturnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"answered {model.calls} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
