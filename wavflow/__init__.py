"""wavflow: a WaveNet teacher and parallel flow students distilled from it."""

__version__ = "0.1.0"
