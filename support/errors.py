"""The package's own error types (no dependencies, so every layer can raise them)."""


class ParameterError(ValueError):
    """A chapter parameter (or a value derived from one, such as a head budget) is unknown, mistyped or out of range."""
