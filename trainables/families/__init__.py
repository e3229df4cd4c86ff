"""Model families; each module defines one `FAMILY` (see trainables.family)."""
