"""The one exception type that means "the user gave bad input"."""


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints it on one line and exits with 2."""
