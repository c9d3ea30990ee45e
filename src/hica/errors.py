"""User-facing errors: each names the file or argument at fault and says what to do."""


class HicaError(ValueError):
    """An error caused by user input (a file, an argument, a config value).

    The CLI prints the message without a traceback and exits with status 2.
    """
