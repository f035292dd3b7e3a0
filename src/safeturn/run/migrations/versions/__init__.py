"""The revisions, one file each: `revision` / `down_revision` chain them, oldest first."""
