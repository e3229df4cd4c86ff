"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: the message names the field and the fix, on one line."""


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset is unknown, missing or damaged."""
