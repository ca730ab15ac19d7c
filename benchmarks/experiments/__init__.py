"""One-off experiments behind NOTES.md's suggestions; not part of ``make bench-serve``."""
