"""The base of every error labelsieve raises for bad input; the CLI prints these without a traceback."""


class LabelsieveError(Exception):
    """A problem with the user's input, params or data, explained in the message."""


class OutputError(LabelsieveError):
    """An output cannot be written: the folder is read-only, or the disk or a file-size limit is full."""
