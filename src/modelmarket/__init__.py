"""Model Marketplace OS: publish, serve, meter, bill and audit ML models behind one gateway."""

__all__ = ["__version__"]

__version__ = "0.1.0"
