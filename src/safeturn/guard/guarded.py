"""`GuardedModel`: any ChatModel behind a moderator — screen, then inject or refuse, then reply.

It is itself a ChatModel, so everything that evaluates a model (`safeturn eval`, the attacks)
can measure a guarded model against the same model unguarded. The decision rides on the
returned `Reply.guard`, never on the wrapper, so concurrent calls cannot see each other's.

What `on_error` does when screening is incomplete, exactly (every case records `guard.error`):

- The moderator fails or times out. `closed`: a refusal, the model is not called. `open`: the
  model is called with the default safety policy injected (`annotate` mode: unchanged), never
  without a record of the failure.
- Some images could not be screened (`ModerationResult.images_screened` False: the image
  deadline passed, the request was cancelled, the image pool was full); the text was screened
  and the images counted as unseen. `closed`: a refusal. `open`: the text-only reading still
  decides. Flagged: the usual flagged action (inject / refuse / annotate). Not flagged but the
  risk reached `unscreened_floor` (default: the low end of the moderator's uncertain band):
  treated as flagged. Otherwise the model is called with the default safety policy injected
  (`annotate` mode: unchanged).
- The reply screen fails. `closed`: the reply is replaced by a refusal. `open`: it is returned.

So `open` never forwards a flagged request, nor an unscreened one that came near the threshold,
and never one without a record. Failures of the wrapped model are raised as `UpstreamError`
(carrying the moderation decision, so a proxy can still record it): there is no reply to let
through, and the caller decides how to report it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from safeturn.errors import UpstreamError as UpstreamError
from safeturn.guard.base import ModerationResult, Moderator
from safeturn.guard.policies import PolicyLibrary, inject_policy
from safeturn.guard.refusals import FAILURE_TEXT, refusal_text
from safeturn.models.base import BaseChatModel, ChatModel
from safeturn.schema import Dialogue, GenerateParams, GuardAction, GuardInfo, Reply, Sample

if TYPE_CHECKING:
    from safeturn.judges.base import Judge

logger = logging.getLogger(__name__)

GuardMode = Literal["annotate", "inject", "refuse"]
FailMode = Literal["closed", "open"]
GUARD_MODES: tuple[GuardMode, ...] = ("annotate", "inject", "refuse")
REFUSAL_FINISH_REASON = "content_filter"
"""OpenAI's finish reason for withheld content; clients can tell a guard refusal by it."""


class _Plan(NamedTuple):
    """What to do with a screened call."""

    action: GuardAction
    policy: str | None = None
    """Policy text to inject before calling the model."""
    refusal: str | None = None
    """The refusal to answer with instead of calling the model."""
    flagged: bool = False
    error: str | None = None


class GuardedModel(BaseChatModel):
    """Wrap `model` so every call is screened by `moderator` first.

    Args:
        model: The model to protect.
        moderator: Reads the whole dialogue and scores its cumulative intent.
        mode: What to do with a flagged dialogue: `annotate` (only record), `inject` (add the
            category's safety policy to the system message) or `refuse` (answer with a
            refusal without calling `model`).
        screen_replies: Also screen the reply: True uses the embedded `classifier` judge, or
            pass any `Judge`. An unsafe reply is replaced by the refusal.
        policies: Policy texts to inject; default: the moderator's `policy`, else the shipped
            library.
        on_error: `closed` refuses when the moderator or reply screen fails or images went
            unscreened; `open` lets the call through as the module docstring details. Either
            way `Reply.guard.error` says what failed.
        unscreened_floor: With `open`, a dialogue whose images went unscreened is treated as
            flagged from this risk on (default: the moderator's `band[0]`, else its threshold).
        moderator_timeout_s: Limit on one moderator call (a timeout is a moderator failure).
        model_timeout_s: Limit on one call of `model`; exceeding it raises `UpstreamError`.
        name: Label of the wrapper; `load_model` sets it to the spec string.
    """

    def __init__(
        self,
        model: ChatModel,
        moderator: Moderator,
        *,
        mode: GuardMode = "inject",
        screen_replies: bool | Judge = False,
        policies: PolicyLibrary | None = None,
        on_error: FailMode = "closed",
        unscreened_floor: float | None = None,
        moderator_timeout_s: float | None = None,
        model_timeout_s: float | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in GUARD_MODES:
            raise ValueError(f"mode must be one of {', '.join(GUARD_MODES)}; got {mode!r}")
        if on_error not in ("closed", "open"):
            raise ValueError(f"on_error must be 'closed' or 'open'; got {on_error!r}")
        self.model = model
        self.moderator = moderator
        self.mode: GuardMode = mode
        self.on_error: FailMode = on_error
        if unscreened_floor is None:
            band = getattr(moderator, "band", None)
            unscreened_floor = float(band[0]) if band is not None else moderator.threshold
        self.unscreened_floor = unscreened_floor
        self.moderator_timeout_s = moderator_timeout_s
        self.model_timeout_s = model_timeout_s
        self.name = name or f"guard[{mode}]:{moderator.name}+{model.name}"
        self.max_concurrency = getattr(model, "max_concurrency", BaseChatModel.max_concurrency)
        self._policies = policies
        self._default_policies = policies or PolicyLibrary.default()
        self.reply_judge: Judge | None = _reply_judge(screen_replies)

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        """Screen `dialogue`, then refuse, or call the model (with a policy when flagged).

        In `annotate` mode the decision cannot change the request, so the model is called
        while the moderator reads: the guard then adds no latency unless it refuses.

        Raises:
            UpstreamError: The wrapped model raised or exceeded `model_timeout_s`; the
                original exception is its `__cause__`.
        """
        start = time.perf_counter()
        early = None
        if self.mode == "annotate":
            early = asyncio.ensure_future(self._run_model(dialogue, params))
        try:
            result, error, moderator_s = await self._screen(dialogue)
            plan = self._plan(result)
            info = _info(self.moderator.name, result, error, moderator_s)
            update: dict[str, Any] = {"action": plan.action, "error": plan.error or info.error}
            if plan.flagged and not info.flagged:
                note = f"treated as flagged: images unscreened, risk >= {self.unscreened_floor:.2f}"
                update |= {"flagged": True, "rationale": f"{info.rationale}; {note}"}
            info = info.model_copy(update=update)
            if plan.refusal is not None:
                return self._refusal(plan.refusal, info, start)
            target = dialogue if plan.policy is None else inject_policy(dialogue, plan.policy)
            outcome, model_s = await (early or self._run_model(target, params))
        finally:
            if early is not None and not early.done():
                early.cancel()
        info = info.model_copy(update={"model_s": model_s})
        if isinstance(outcome, TimeoutError):
            message = f"{self.model.name} did not answer within {self.model_timeout_s}s"
            raise UpstreamError(message, info, timed_out=True) from outcome
        if isinstance(outcome, Exception):
            message = f"{self.model.name} failed ({type(outcome).__name__})"
            raise UpstreamError(message, info) from outcome
        if self.reply_judge is not None:
            return await self._screen_reply(dialogue, outcome, info, result, start)
        return self._finish(outcome, info, start)

    async def aclose(self) -> None:
        """Close the wrapped model, the moderator and the reply judge."""
        closers = [self.model.aclose(), self.moderator.aclose()]
        if self.reply_judge is not None:
            closers.append(self.reply_judge.aclose())
        for closer in closers:
            try:
                await closer
            except Exception:  # one failed close must not leak the others
                logger.exception("closing a guard component failed")

    def _plan(self, result: ModerationResult | None) -> _Plan:
        """The action for a screening outcome (the cases are listed in the module docstring)."""
        default_policy = self._default_policies.for_category(None)
        if result is None:  # the moderator failed
            if self.on_error == "closed":
                return _Plan("refuse", refusal=FAILURE_TEXT)
            if self.mode == "annotate":  # monitoring only: the request is never changed
                return _Plan("allow")
            return _Plan("inject", policy=default_policy)
        unscreened = None if result.images_screened else _unscreened_error(result)
        if unscreened is not None and self.on_error == "closed":
            return _Plan("refuse", refusal=FAILURE_TEXT, error=unscreened)
        near = unscreened is not None and result.risk >= self.unscreened_floor
        if result.flagged or near:
            if self.mode == "refuse":
                text = refusal_text(result.category)
                return _Plan("refuse", refusal=text, flagged=True, error=unscreened)
            if self.mode == "inject":
                policy = self._policy_for(result)
                return _Plan("inject", policy=policy, flagged=True, error=unscreened)
            return _Plan("annotate", flagged=True, error=unscreened)
        if unscreened is not None and self.mode != "annotate":
            return _Plan("inject", policy=default_policy, error=unscreened)
        return _Plan("allow", error=unscreened)

    async def _screen(
        self, dialogue: Dialogue
    ) -> tuple[ModerationResult | None, str | None, float]:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.moderator_timeout_s):
                result = await self.moderator.screen(dialogue)
        except Exception as exc:  # any moderator failure goes through `on_error`
            logger.warning(
                "moderator %s failed (%s); failing %s",
                self.moderator.name,
                type(exc).__name__,
                self.on_error,
            )
            logger.debug("moderator failure detail", exc_info=True)
            return None, f"moderator: {type(exc).__name__}", time.perf_counter() - start
        return result, None, time.perf_counter() - start

    async def _run_model(
        self, dialogue: Dialogue, params: GenerateParams
    ) -> tuple[Reply | Exception, float]:
        """The reply, or the exception the model raised (a timeout is `TimeoutError`)."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.model_timeout_s):
                reply = await self.model.generate(dialogue, params)
        except Exception as exc:  # the caller turns it into `UpstreamError` with the decision
            return exc, time.perf_counter() - start
        return reply, time.perf_counter() - start

    async def _screen_reply(
        self,
        dialogue: Dialogue,
        reply: Reply,
        info: GuardInfo,
        result: ModerationResult | None,
        start: float,
    ) -> Reply:
        assert self.reply_judge is not None
        screen_start = time.perf_counter()
        # `harmful=None` (unknown): the judge then treats the request as possibly harmful, so a
        # harmful reply to a dialogue the moderator missed is still caught.
        sample = Sample(id="guarded-call", source="guard", dialogue=dialogue)
        try:
            verdict = await self.reply_judge(sample, dialogue, reply, dialogue.n_turns)
        except Exception as exc:  # a reply-screen failure goes through `on_error`
            logger.warning(
                "reply screen failed (%s); failing %s", type(exc).__name__, self.on_error
            )
            error = f"reply_screen: {type(exc).__name__}"
            info = info.model_copy(
                update={"error": error, "reply_screen_s": time.perf_counter() - screen_start}
            )
            if self.on_error == "closed":
                return self._refusal(
                    FAILURE_TEXT, info.model_copy(update={"action": "replace"}), start
                )
            return self._finish(reply, info, start)
        info = info.model_copy(
            update={
                "reply_score": verdict.score,
                "reply_screen_s": time.perf_counter() - screen_start,
            }
        )
        if verdict.label == "unsafe":
            text = refusal_text(result.category if result is not None else None)
            return self._refusal(text, info.model_copy(update={"action": "replace"}), start)
        return self._finish(reply, info, start)

    def _policy_for(self, result: ModerationResult) -> str:
        if self._policies is None and result.policy:
            return result.policy
        return self._default_policies.for_category(result.category)

    def _refusal(self, text: str, info: GuardInfo, start: float) -> Reply:
        return Reply(
            text=text,
            model=self.name,
            finish_reason=REFUSAL_FINISH_REASON,
            latency_s=time.perf_counter() - start,
            guard=info,
        )

    def _finish(self, reply: Reply, info: GuardInfo, start: float) -> Reply:
        update = {"model": self.name, "guard": info, "latency_s": time.perf_counter() - start}
        return reply.model_copy(update=update)


def _unscreened_error(result: ModerationResult) -> str:
    """`guard.error` for a reading with unscreened images (content-free)."""
    return f"images: {result.unscreened_images} not screened"


def _info(
    moderator: str, result: ModerationResult | None, error: str | None, moderator_s: float
) -> GuardInfo:
    if result is None:
        return GuardInfo(
            action="allow", moderator=moderator, flagged=False, error=error, moderator_s=moderator_s
        )
    return GuardInfo(
        action="allow",
        moderator=moderator,
        flagged=result.flagged,
        risk=result.risk,
        threshold=result.threshold,
        category=None if result.category is None else str(result.category),
        strategy=result.strategy,
        earliest_turn=result.earliest_turn,
        turn_risks=list(result.turn_risks),
        stage=result.stage,
        rationale=result.rationale,
        moderator_s=moderator_s,
        images_screened=result.images_screened,
        unscreened_images=result.unscreened_images,
    )


def _reply_judge(screen_replies: bool | Judge) -> Judge | None:
    if screen_replies is False:
        return None
    if screen_replies is True:
        from safeturn.judges.classifier import ClassifierJudge

        return ClassifierJudge()
    return screen_replies
