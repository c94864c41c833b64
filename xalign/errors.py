"""The base of every error a user can fix (bad config, data, path, model): the CLI prints
these as one paragraph without a traceback (``--debug`` shows it). Kept free of heavy
imports so the CLI can catch it without loading torch."""


class XalignError(Exception):
    """A problem with the user's input or environment, with what to change."""
