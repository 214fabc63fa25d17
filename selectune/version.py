"""The library's version, recorded in every delta and run; its own module so that writers need not import the package."""
__version__ = "0.2.0"
