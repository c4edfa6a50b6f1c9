"""Domain errors. The core raises these; the CLI renders each once as
``Error: <message>`` and exits 1 (see ``cli.main``). Messages are one line,
name the offending key/path/value, and say what would be accepted."""


class HgmError(Exception):
    """Base class: a user error (bad input, bad config, bad file), never a bug."""


class ConfigError(HgmError):
    """Unknown key, wrong type or impossible value in a config or option."""


class ArtifactError(HgmError):
    """Missing, truncated, corrupt, foreign or incompatible artifact file."""


class DataError(HgmError):
    """Dataset that cannot be read or does not fit what was asked of it."""


class TrainingError(HgmError):
    """Training that cannot go on (NaN loss, empty split, ...)."""
