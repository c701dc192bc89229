"""The version of dode, recorded in every file it writes (Lambdas, results)."""

__version__ = "0.1.0"
