"""NETY's HybridRNNTransformer re-created in PyTorch from its published facts.

The reference that parity is proven against (tests) and measured against
(benchmarks). Needs torch (the `torch` extra); names and shapes are NETY's.
"""
import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Separate q, k, v Linears, scores / sqrt(head_dim), no mask, no residual, fc_out."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.query, self.key, self.value = (nn.Linear(d_model, d_model) for _ in range(3))
        self.fc_out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.fc_out((attn @ v).transpose(1, 2).reshape(b, s, d))


class ModeleRNN(nn.Module):
    def __init__(self, d_model, hidden, layers, heads, dropout):
        super().__init__()
        self.attention = SelfAttention(d_model, heads)
        self.lstm = nn.LSTM(d_model, hidden, layers, batch_first=True, bidirectional=True,
                            dropout=dropout)
        self.batch_norm1 = nn.BatchNorm1d(2 * hidden)
        self.fc1 = nn.Linear(2 * hidden, 256)
        self.batch_norm2 = nn.BatchNorm1d(256)
        self.fc2 = nn.Linear(256, 128)
        self.batch_norm3 = nn.BatchNorm1d(128)
        self.fc3 = nn.Linear(128, d_model)
        self.layer_norm = nn.LayerNorm(d_model)
        self.gelu = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, emb):
        out, _ = self.lstm(self.attention(emb))
        x = out[:, -1, :]  # the last PADDED position, both directions
        x = self.dropout(self.gelu(self.fc1(self.batch_norm1(x))))
        x = self.dropout(self.gelu(self.fc2(self.batch_norm2(x))))
        return self.layer_norm(self.fc3(self.batch_norm3(x)))


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=512):
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return x + self.pe[:, : x.size(1)]


class TransformerDecoderModel(nn.Module):
    def __init__(self, vocab, d_model, heads, layers, d_ff, dropout, max_len):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab, d_model)
        self.pos_encoding = PositionalEncoding(d_model, max_len)
        layer = nn.TransformerDecoderLayer(d_model, heads, d_ff, dropout, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, layers)
        self.fc_out = nn.Linear(d_model, vocab)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt, memory):
        x = self.dropout(self.pos_encoding(self.embedding(tgt) * math.sqrt(self.d_model)))
        t = tgt.size(1)
        causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        return self.fc_out(self.transformer_decoder(x, memory, tgt_mask=causal))


class HybridRNNTransformer(nn.Module):
    def __init__(self, vocab, d_model=512, hidden=256, layers=3, enc_heads=4, dec_heads=8,
                 dec_layers=6, d_ff=2048, dropout=0.1, max_len=512):
        super().__init__()
        self.rnn_embedding = nn.Embedding(vocab, d_model)
        self.rnn_encoder = ModeleRNN(d_model, hidden, layers, enc_heads, dropout)
        self.transformer_decoder = TransformerDecoderModel(vocab, d_model, dec_heads, dec_layers, d_ff,
                                                           dropout, max_len)

    def forward(self, src, tgt):
        memory = self.rnn_encoder(self.rnn_embedding(src)).unsqueeze(1)
        return self.transformer_decoder(tgt, memory)


@torch.no_grad()
def nety_generate(model, src, max_length=50, temperature=0.8, top_k=50, top_p=0.9, force_length=False):
    """NETY's generation: batch 1, the whole prefix rerun every step, top-k then top-p sampling."""
    model.eval()
    tgt = torch.tensor([[1]], dtype=torch.long)
    for _ in range(max_length):
        logits = model(src, tgt)[:, -1, :] / temperature
        values, indices = torch.topk(logits, top_k)
        probs = torch.softmax(values, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        probs = probs.masked_fill(remove, 0.0)
        choice = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1)
        token = indices.gather(-1, choice)
        tgt = torch.cat([tgt, token], dim=1)
        if token.item() == 2 and not force_length:
            break
    return tgt[0, 1:].tolist()
