"""evolora: a self-improving local LLM agent."""

from evolora.offline import apply_offline_defaults

apply_offline_defaults()

__version__ = "0.1.0"
