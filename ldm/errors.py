"""The error types a user can cause, torch-free so that entry points can catch them before importing torch.

Every entry point reports a `UserError` as one line `prog: error: ...` and exits with 2
(`ldm.cli.run_cli`); library code raises the specific subclasses.
"""


class UserError(Exception):
    """A mistake in the user's arguments, config or files; reported as one line, never a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration mistake; the message names the config path."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint cannot be read, or its keys or shapes do not fit the model; the message says which."""
