"""Input and output: ENVI cubes and libraries, benchmark scenes, spectral libraries (numpy only)."""
from unmix.io.scene import Scene

__all__ = ["Scene"]
