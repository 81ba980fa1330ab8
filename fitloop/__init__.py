"""fitloop: datasets of 3D human body fits, built SPIN-style (see README.md). The command line only."""
from core import __version__  # noqa: F401 - the one version number, also read by pyproject.toml
