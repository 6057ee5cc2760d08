"""imgcls: composable command-line tools for image classification on small data."""

__version__ = "0.1.0"
