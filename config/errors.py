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
    """A step failed. ``permanent`` errors are never retried."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        self.permanent = permanent
        super().__init__(message)


class TemplateRenderError(StepError):
    """A template could not be rendered (undefined variable, unsafe access)."""
