"""Bottom of the house: joint names, the camera, the fit frame, metrics, SPIN's file conventions and user-facing
errors. Imports no other fitloop package."""
__version__ = "0.1.0"
