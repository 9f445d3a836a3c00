"""Code both the broker and the agent use: the wire format, token signing, settings, secrets."""

# The one version string: the package metadata (pyproject.toml) and both programs read it.
__version__ = "0.1.0"
