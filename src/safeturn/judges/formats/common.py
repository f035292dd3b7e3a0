"""Shared plumbing of the standard-format judges: requests, retries and conversation text.

These judges send the format's own prompt as the only message (no safeturn system prompt: the
published classifiers were trained on their prompt alone). An unreadable answer gets a
correction turn in the format's own words (not llm.py's JSON correction), or, in modes where a
correction turn would become part of the judged conversation, the same request again.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeVar

from safeturn.judges.llm import PromptedReplyJudge, message_texts
from safeturn.schema import Dialogue, GenerateParams, Message

TextRole = Literal["user", "assistant"]
A = TypeVar("A")


class TextTurn(NamedTuple):
    """One non-system message as text, images written as `[image N]` in place."""

    role: TextRole
    text: str


def text_turns(dialogue: Dialogue) -> list[TextTurn]:
    """The user and assistant messages of `dialogue` as text; system messages are left out."""
    return [
        TextTurn(message.role, text)
        for message, text in message_texts(dialogue)
        if message.role != "system"
    ]


def user_turns_text(dialogue: Dialogue) -> str:
    """The user turns, all of them so that intent spread over turns counts.

    One turn is its bare text; several are numbered, the last marked as the one answered.
    """
    users = [turn.text for turn in text_turns(dialogue) if turn.role == "user"]
    if not users:
        return "(no user message)"
    if len(users) == 1:
        return users[0]
    lines = [f"Turn {i}: {text}" for i, text in enumerate(users[:-1], start=1)]
    lines.append(f"Turn {len(users)} (the message answered): {users[-1]}")
    return "\n".join(lines)


class FormatJudge(PromptedReplyJudge[A]):
    """Base of the standard-format judges: one-message requests, format-specific retries.

    A format fills in `prompt`, `parse` and `answer_verdict` (`PromptedReplyJudge`).

    Args:
        model: The judge model; the judge is named `<prefix>:<model.name>`.
        retries: Correction turns (or resends) after an unreadable answer (0 = ask once).
        params: Sampling options (default: the class's `default_params`, greedy).
        attach_images: Send the dialogue's images with the request; False sends only the
            `[image N]` markers (for text-only servers that reject images).
    """

    default_params = GenerateParams(max_tokens=128, temperature=0.0)
    """Greedy, with room for a short answer (the formats answer in a word or two)."""
    correction_prompt = "format_correction"
    resend_on_error = False
    """Retry by resending the request unchanged instead of adding a correction turn."""

    def request(self, prompt: str, dialogue: Dialogue) -> Dialogue:
        """The request: `prompt` as the only user message (no system prompt), with the images."""
        images = dialogue.images if self.attach_images else []
        return Dialogue(messages=[Message.user(prompt, images)])

    def retry_request(self, request: Dialogue, raw: str, reason: str) -> Dialogue:
        """The next request after an unreadable answer: the same, or the format's correction."""
        if self.resend_on_error:
            return request
        return super().retry_request(request, raw, reason)
