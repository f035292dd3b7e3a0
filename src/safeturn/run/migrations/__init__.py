"""Alembic migrations of the run database, run by `safeturn.run.migrate` when it is opened.

`env.py` takes the connection `migrate` opened; `versions/` holds one file per revision.
`adopt` lets the first revisions take over a database that `create_all` made before the
schema was versioned: they create only the tables and indexes it lacks.
"""
