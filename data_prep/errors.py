"""The error type for bad input to the data preparation tools.

Main modules catch it and print its message as one line (no traceback); anything else that escapes is a
bug and keeps its traceback. data_prep shares only the image decoding rule with official/, so it has its
own error type.
"""


class DataPrepError(ValueError):
    """Bad flags, files or data, described in one line that says what to do."""
