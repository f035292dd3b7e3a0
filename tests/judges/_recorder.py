"""A scripted judge backend shared by the prompted-judge tests."""

from __future__ import annotations

from safeturn.schema import Dialogue


class Recorder:
    """A judge backend: answers from a list (the last answer repeats) and keeps the requests."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.requests: list[Dialogue] = []

    def __call__(self, dialogue: Dialogue) -> str:
        self.requests.append(dialogue)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]

    @property
    def prompt(self) -> str:
        return self.requests[0].messages[-1].text
