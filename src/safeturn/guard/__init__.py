"""Defend: the dialogue moderator, safety policies, the guarded model wrapper and the proxy.

Examples:
    >>> from safeturn.guard import load_moderator
    >>> moderator = load_moderator("embedded")
    >>> moderator.name
    'embedded'
"""

from safeturn.guard.base import STRATEGY_NAMES, ModerationResult, Moderator, StrategyName
from safeturn.guard.features import ConversationState
from safeturn.guard.guarded import GuardedModel, UpstreamError
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.policies import PolicyLibrary, inject_policy
from safeturn.guard.spec import load_moderator, parse_moderator_spec

__all__ = [
    "STRATEGY_NAMES",
    "ConversationState",
    "DialogueModerator",
    "GuardedModel",
    "ModerationResult",
    "Moderator",
    "PolicyLibrary",
    "StrategyName",
    "UpstreamError",
    "inject_policy",
    "load_moderator",
    "parse_moderator_spec",
]
