"""The error type for bad user input or bad data.

Main modules catch it and print its message as one line (no traceback); anything else that escapes is a
bug and keeps its traceback.
"""


class PipelineError(ValueError):
    """Bad flags, files or data, described in one line that says what to do."""
