"""One exception type for bad input: the CLI prints its message on one line and exits 2."""


class KitError(ValueError):
    """Bad input or state, with a message that names the value and what is allowed."""
