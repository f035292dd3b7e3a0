"""Defend: the dialogue moderator, safety policies, the guarded model wrapper and the proxy."""
