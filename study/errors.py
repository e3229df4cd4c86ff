"""Re-export of the user-facing error type, so `study/` code raises one kind of error."""

from trainables.errors import ConfigError, DataError, UserError

__all__ = ["ConfigError", "DataError", "UserError"]
