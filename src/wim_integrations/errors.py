"""Errors raised before any heavy compute, each naming the problem and the fix."""


class WiMError(Exception):
    """Base class of wim-integrations errors."""


class WiMInputError(WiMError, ValueError):
    """The context, question or settings cannot be used as given."""


class SettingsError(WiMInputError):
    """A setting (`WiMConfig`, `SamplingConfig`, an adapter's settings field) has a bad value; `problems` names each
    one as "field: what is wrong (got value)" (pydantic's messages)."""

    def __init__(self, owner: str, problems: list[str]) -> None:
        super().__init__(f"invalid {owner} settings: {'; '.join(problems)}.")
        self.owner = owner
        self.problems = problems


class ContextTooLongError(WiMInputError):
    """The context plus prompts and generation budgets does not fit the model's window."""


class ModelLoadError(WiMError, OSError):
    """A model could not be found or loaded."""


class LlamaCppError(WiMError, RuntimeError):
    """llama.cpp in process refused a step: its context has no free KV cells or sequences left, or a decode failed."""


class WiMCancelled(WiMError):
    """The run was cancelled by its consumer."""


class ServerError(WiMError, RuntimeError):
    """A serving engine (llama.cpp server, vLLM, SGLang, ...) failed a request WiM needed."""


class ServerUnavailableError(ServerError, ConnectionError):
    """The server could not be reached, or the connection dropped mid-request."""


class ServerTimeoutError(ServerError, TimeoutError):
    """The server did not answer within the backend's `timeout`."""


class ServerResponseError(ServerError):
    """The server answered with an error status (after the bounded retries for 429/5xx) or a reply WiM cannot read."""


class ServerMismatchError(ServerError, ValueError):
    """The local tokenizer does not match the served model, so token-id prompts would mean something else."""
