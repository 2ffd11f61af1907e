"""The demo catalogue: real models built from data and lexicons that ship inside installed wheels."""

from modelmarket.demo.build import build_packages, digits_split

__all__ = ["build_packages", "digits_split"]
