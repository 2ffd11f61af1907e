"""Built-in runtime plug-ins, registered under the entry point group ``modelmarket.runtimes``.

Import them through ``modelmarket.runtime.plugins.load_runtime_class`` rather than directly, so built-in and
third-party runtimes are found the same way.
"""

__all__: list[str] = []
