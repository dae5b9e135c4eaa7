"""The project's one exception type: the CLI prints its message and exits non-zero."""


class OtaMergeError(Exception):
    """An error the user can act on; the message names the model, file and tensor."""
