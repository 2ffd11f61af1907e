"""The ``modelmarket`` command line: thin commands over the same services the gateway uses."""

__all__: list[str] = []
