"""Errors that the CLI answers with one line and exit status 2 (bad input)."""


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
