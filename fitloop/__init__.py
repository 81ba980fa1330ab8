"""fitloop: datasets of 3D human body fits, built SPIN-style (see README.md)."""
__version__ = "0.1.0"
