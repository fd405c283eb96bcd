"""NETY's hybrid: a (Bi)RNN encoder with self-attention and BatchNorm feeding a Transformer decoder."""
