"""Errors that carry a message meant for the user, shown in the page as is."""


class StudioError(Exception):
    """Base class: its message is written for the user and says what to do."""


class ModelError(StudioError):
    """A model spec could not be resolved or loaded."""


class RequestError(StudioError):
    """A request's settings are invalid."""


class Cancelled(StudioError):
    """The user pressed Stop."""
