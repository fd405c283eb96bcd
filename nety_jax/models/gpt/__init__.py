"""The decoder-only language model (GPT-2 style), from the shared Transformer layers."""
