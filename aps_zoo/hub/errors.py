"""The two errors of the Hub side; both end in one line naming the file or key."""


class HubError(RuntimeError):
    """An export, load or push that cannot go ahead; the message says what is wrong and where."""


class HubConfigError(ValueError):
    """A hub config (or measured result) that is invalid, naming the file and key."""
