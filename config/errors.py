"""Herald's exceptions: one base class, one subclass per kind of trouble."""


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""


class HeraldConfigError(HeraldError):
    """The settings or the command line are wrong; the message says how."""


class HeraldDatabaseError(HeraldError):
    """PostgreSQL refused or lost a request; wraps the driver's error."""


class EmbeddedServerError(HeraldError):
    """An embedded PostgreSQL or Redis server would not start or stop."""


class WorkflowValidationError(HeraldError):
    """A workflow definition is invalid; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StepError(HeraldError):
    """A step failed. ``permanent`` errors are never retried; a transient one
    may say how long to wait first (``retry_after`` seconds, e.g. from a 429)."""

    def __init__(
        self, message: str, *, permanent: bool = True, retry_after: float | None = None
    ) -> None:
        self.permanent = permanent
        self.retry_after = retry_after
        super().__init__(message)


class DeliveryUnknownError(StepError):
    """The request reached the provider but no answer came back (a timeout
    after sending): the message may or may not have been delivered, so it is
    never resent blindly; the step is parked for a person to decide."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class TemplateRenderError(StepError):
    """A template could not be rendered (undefined variable, unsafe access)."""


class RateLimitedError(StepError):
    """The recipient has had its share of messages for now: wait (not an attempt)
    until ``retry_after``, or, with ``skip``, skip the step and go on."""

    def __init__(self, message: str, *, retry_after: float, skip: bool) -> None:
        super().__init__(message, permanent=False, retry_after=retry_after)
        self.skip = skip
