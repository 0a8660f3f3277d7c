"""Errors raised before any heavy compute, each naming the problem and the fix."""


class WiMError(Exception):
    """Base class of wim-integrations errors."""


class WiMInputError(WiMError, ValueError):
    """The context, question or settings cannot be used as given."""


class ContextTooLongError(WiMInputError):
    """The context plus prompts and generation budgets does not fit the model's window."""


class ModelLoadError(WiMError, OSError):
    """A model could not be found or loaded."""


class WiMCancelled(WiMError):
    """The run was cancelled by its consumer."""
