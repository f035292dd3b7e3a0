"""Versions of the JSON files safeturn writes, so a reader can tell which layout it holds.

Every JSON document below carries `"schema_version"` as its first field. Adding a field keeps
the version (readers ignore what they do not know); renaming, removing or changing the meaning
of a field takes the next version, and docs/architecture.md says what changed.
"""

from __future__ import annotations

SUMMARY_SCHEMA_VERSION = 1
"""The run summary (`report`'s `<report>.json`, `summary_dict`)."""
PAIRWISE_SCHEMA_VERSION = 1
"""`safeturn compare --pairwise`'s JSON (`pairwise_json`)."""
BEFORE_AFTER_SCHEMA_VERSION = 1
"""The closed loop's before/after JSON (`before_after_json`)."""
