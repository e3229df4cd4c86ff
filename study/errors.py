"""The errors `study/` code raises: the user-facing error types (re-exported, so `study/`
code raises one kind of user error), and a study that an unexpected error ended."""

from trainables.errors import ConfigError, DataError, UserError

__all__ = ["ConfigError", "DataError", "StudyFailed", "UserError"]


class StudyFailed(Exception):
    """An unexpected error (this exception's __cause__) ended study `name`. Before its
    first trial started, what the study had made was removed (`kept` False; `left` names
    what could not be, with how to remove it by hand); after, the study was kept, its
    parent run marked failed, for `study resume`."""

    def __init__(self, name: str, kept: bool, left: tuple[str, ...] = ()):
        super().__init__(name, kept, left)
        self.name = name
        self.kept = kept
        self.left = left

    @property
    def what(self) -> str:
        return f"study {self.name} " + ("failed" if self.kept else "could not start")

    @property
    def outcome(self) -> str:
        if self.kept:
            return f"its results are kept: continue it with `study resume {self.name}`"
        if self.left:
            return f"left behind: {'; '.join(self.left)}"
        return "nothing was kept"

    def __str__(self) -> str:
        return f"{self.what}; {self.outcome}"
