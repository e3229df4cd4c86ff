"""Errors a user can fix (the CLI prints them as one line and exits with status 2), and
the error a family raises when it breaks its own declarations."""


class UserError(Exception):
    """Bad input: the message names the field and the fix, on one line."""


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset is unknown, missing or damaged."""


class ContractError(Exception):
    """A family broke its own declarations (an undeclared metric, a value outside its
    declared range, a model without the methods the base relies on): a bug in the family's
    code, not bad input, so it is not a UserError and keeps its traceback."""


def first_line(error: BaseException) -> str:
    """An error's message in one line (its first), or its type when it has none: what a
    one-line report of someone else's exception quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
