"""Building blocks shared by every architecture: attention (with a per-row KV cache),
feed-forward, recurrent cells and scanned stacks, norms, positions, the Transformer decoder."""
from nety_jax.layers.attention import CrossAttention, SelfAttention, length_mask
from nety_jax.layers.copy import CopyHead
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear
from nety_jax.layers.feedforward import FeedForward, gelu_exact
from nety_jax.layers.norms import BatchNorm
from nety_jax.layers.positions import Positions, sinusoidal_table
from nety_jax.layers.recurrent import RecurrentLayer, RecurrentStack, flip_sequences
from nety_jax.layers.transformer import DecoderLayer, DecoderSpec, TransformerDecoder

__all__ = ["SelfAttention", "CrossAttention", "length_mask", "Dropout", "Linear", "FeedForward", "gelu_exact",
           "BatchNorm", "Positions", "sinusoidal_table", "RecurrentLayer", "RecurrentStack",
           "flip_sequences", "DecoderLayer", "DecoderSpec", "TransformerDecoder", "CopyHead"]
