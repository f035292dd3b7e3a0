"""Multi-worker runs and PostgreSQL for real: worker and claim tables, unbounded keys.

Adds `run_workers`, `sample_claims` and the (run, sample) index on `model_calls` that a worker
taking a sample over reads by, and widens sample ids, judge names, model names and moderator
names to TEXT (any length). SQLite ignores VARCHAR lengths, so the widening runs on other
backends only.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from safeturn.run.migrations.adopt import create_index, create_table, on_sqlite

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_WIDENED = (
    ("samples", "sample_id", sa.String(255)),
    ("model_calls", "sample_id", sa.String(255)),
    ("model_calls", "model", sa.String(512)),
    ("verdicts", "sample_id", sa.String(255)),
    ("verdicts", "judge", sa.String(255)),
    ("guard_decisions", "model", sa.String(512)),
    ("guard_decisions", "moderator", sa.String(255)),
)


def upgrade() -> None:
    """Add the worker tables and the index; widen the keys."""
    create_table(
        "run_workers",
        sa.Column("token", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
    )
    create_table(
        "sample_claims",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("sample_id", sa.Text(), primary_key=True),
        sa.Column("worker", sa.String(32), nullable=False, index=True),
    )
    create_index("ix_model_calls_run_sample", "model_calls", ["run_id", "sample_id"])
    if not on_sqlite():
        for table, column, narrow in _WIDENED:
            op.alter_column(table, column, type_=sa.Text(), existing_type=narrow)


def downgrade() -> None:
    """Drop the worker tables and the index (keys stay TEXT: narrowing could cut data)."""
    op.drop_index("ix_model_calls_run_sample", table_name="model_calls")
    op.drop_table("sample_claims")
    op.drop_table("run_workers")
