"""Errors caused by the user's input: the command line prints them as one line and exits with 2."""


class UserInputError(Exception):
    """Bad input (options, data, model folders): reported as one line, exit status 2."""


class DataError(UserInputError):
    """The training data cannot be used as given."""
