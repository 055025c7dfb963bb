"""cellfarm: the data lakehouse and model-serving platform of an AI virtual-cell imaging farm."""

__version__ = "0.1.0"
