"""tenure-agent: holds licence leases for the encoders on one host."""

__version__ = "0.1.0"
