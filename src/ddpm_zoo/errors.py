"""The package's errors: the command layer prints each as one `error:` line and exits with its status."""


class UserInputError(Exception):
    """Bad input (options, data, model folders): reported as one line, exit status 2."""


class DataError(UserInputError):
    """The training data cannot be used as given."""


class TrainingStopped(Exception):
    """The run stopped early (signal, non-finite loss, a failed write); the message says where things are."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
