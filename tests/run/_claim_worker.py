"""Subprocess body for the multi-worker tests: one `--worker` process on a shared run.

Every model call is logged (pid and the dialogue's last user text) to a shared append-only
file before it returns, so the test sees calls that a killed worker made but never stored.
"""

from __future__ import annotations

import asyncio
import os
import sys

from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.run.engine import execute_worker
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, GenerateParams, Reply


class LoggedModel(ScriptedModel):
    """The `comply` script, with each call appended to `log` as it is made."""

    def __init__(self, log: str, delay_s: float) -> None:
        super().__init__(BUILTIN_SCRIPTS["comply"], name="scripted:comply", delay_s=delay_s)
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        last = dialogue.messages[-1].text
        os.write(self._log, f"{os.getpid()}\t{last}\n".encode())
        return await super().generate(dialogue, params)


def main(db: str, run_id: str, delay_s: float, log: str) -> int:
    store = RunStore(db)
    model = LoggedModel(log, delay_s)
    try:
        finished = asyncio.run(
            execute_worker(store, run_id, model, [load_judge("refusal")], poll_s=0.1)
        )
    finally:
        store.close()
    print(f"finished={finished} calls={model.calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
