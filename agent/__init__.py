"""tenure-agent: holds licence leases for the encoders on one host."""
