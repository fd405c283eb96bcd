"""User-facing errors: one line naming the file, line or field, never a traceback."""


class NetyError(Exception):
    """Base of every error the CLI reports as a single line and exit code 2."""


class ConfigError(NetyError):
    """A config value is missing, unknown or invalid."""


class DataError(NetyError):
    """A data file is malformed (the message names the file and line)."""


class CheckpointError(NetyError):
    """A checkpoint is missing, unreadable or built from another config."""


class TrainingDiverged(NetyError):
    """The loss became non-finite; the last good checkpoint is kept."""


class OutputError(NetyError):
    """An output path cannot be written, or holds something its writer must not replace."""
