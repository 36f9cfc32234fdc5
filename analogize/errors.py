"""Errors a user can act on, kept apart from internal bugs."""


class AnalogizeError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line.

    The message must say what is wrong and what to do about it.
    """
