"""ihs: explain LLM safety through a model's intermediate hidden states."""

__version__ = "0.1.0"
