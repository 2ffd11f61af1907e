"""SQLAlchemy Core implementations of the contexts' repository ports, one module per context."""
