"""uWSGI's configuration language: ini files, logic blocks, placeholders, command line, env."""
from .loader import load_config
from .model import Config, Entry

__all__ = ["Config", "Entry", "load_config"]
