"""curate: turn a YAML recipe into an uncertainty-filtered reasoning dataset on the Hugging Face Hub."""

__version__ = "0.1.0"
