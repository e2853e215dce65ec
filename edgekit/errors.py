"""The one exception type users see: a message that says what happened and what to do."""


class EdgekitError(Exception):
    """Bad input or an unusable environment. The CLI prints the message and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
