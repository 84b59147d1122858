"""The installed hf_bae version; configs record it so that a newer file is refused clearly."""

__version__ = "0.1.0"
