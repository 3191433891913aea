"""Errors that the CLI answers with one line: exit status 2 for bad input, 1 for a file that is missing,
damaged or cannot be written (the message says which file and what to do)."""


class UsageError(Exception):
    """Bad input from the user: unknown paper/pair/preset/model, malformed config."""


def choices(kind: str, value: str, valid) -> UsageError:
    """``unknown pair 'x' for dkd; choose from: a, b, c``."""
    return UsageError(f"unknown {kind} {value!r}; choose from: {', '.join(sorted(valid))}")


class Unavailable(RuntimeError):
    """A dataset or checkpoint is missing and cannot be obtained; the message says what to do."""


class TrainingFailed(RuntimeError):
    """A run stopped without a result (a non-finite loss or weight); the message names where, and the last
    good checkpoint. The CLI prints it on one line and exits with status 1."""


class CheckpointError(RuntimeError):
    """A checkpoint on disk (or the note that vouches for it) is truncated, damaged, altered since it
    was recorded, or does not fit the model: using it would be a crash or, worse, a silently wrong
    teacher. The message names the file and what is wrong."""


class DiskFull(OSError):
    """The disk filled up while a file was written; the previous version of the file is intact
    (writes go to a temporary file that is renamed only when complete)."""

    def __str__(self) -> str:
        return self.strerror
