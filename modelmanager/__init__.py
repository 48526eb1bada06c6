"""Model Manager: a VRAM-aware scheduler and execution service in front of Ollama."""

__version__ = "0.1.0"
