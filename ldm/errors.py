"""The error types a user can cause, torch-free so that entry points can catch them before importing torch.

Every entry point reports a `UserError` as one line `prog: error: ...` and exits with 2
(`ldm.cli.run_cli`); library code raises the specific subclasses.
"""


class UserError(Exception):
    """A mistake in the user's arguments, config or files; reported as one line, never a traceback."""

    def __init__(self, *args: object) -> None:
        # Raised in a DataLoader worker, it is re-raised in the main process as type(err)(text holding the
        # worker's traceback); keep the one line that says what is wrong.
        marker = f"{type(self).__name__}: "
        if len(args) == 1 and isinstance(args[0], str) and "Original Traceback" in args[0] and marker in args[0]:
            args = (args[0].rsplit(marker, 1)[1].strip(),)
        super().__init__(*args)


class ConfigError(UserError, ValueError):
    """A configuration mistake; the message names the config path."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint cannot be read, or its keys or shapes do not fit the model; the message says which."""


class DatasetError(UserError, ValueError):
    """A dataset's files cannot be used (an unreadable index, no readable sample, an empty split); the
    message names the file."""
