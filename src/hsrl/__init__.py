"""hsrl: language-model hidden states as inputs to reinforcement-learning policies on Craftax."""

__version__ = "0.1.0"
