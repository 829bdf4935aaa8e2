"""Types, configuration and Redis key names that the front door and the workers share."""

__version__ = "0.1.0"
