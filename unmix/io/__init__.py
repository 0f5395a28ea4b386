"""Input and output: ENVI cubes and libraries, benchmark and synthetic scenes, spectral libraries, files
replaced whole, strict JSON (numpy; scipy where noted)."""
from unmix.io.scene import Scene

__all__ = ["Scene"]
