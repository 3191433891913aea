"""kdbench: faithful, fast reproductions of knowledge-distillation papers."""

__version__ = "0.1.0"
