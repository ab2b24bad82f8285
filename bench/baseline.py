"""The reference: a bare eager PyTorch training loop with a minimal GPT (nanoGPT-style).

Self-contained on purpose (it imports nothing from artune), so it measures what a user would
write by hand: SDPA attention, torch AdamW, fp32, random windows, gradient clipping.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.attn(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class MinimalGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def run_baseline(
    tokens: torch.Tensor,
    vocab: int,
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    seq_len: int,
    batch_size: int,
    steps: int,
    seed: int = 0,
) -> float:
    """Train ``steps`` steps; return training tokens per second (after 3 warm-up steps)."""
    torch.manual_seed(seed)
    model = MinimalGPT(vocab, seq_len, d_model, n_layers, n_heads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = tokens.long()
    start = None
    for step in range(steps + 3):
        if step == 3:
            start = time.perf_counter()
        ix = torch.randint(len(data) - seq_len - 1, (batch_size,))
        x = torch.stack([data[i : i + seq_len] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + seq_len] for i in ix])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()  # the usual per-step log
    return steps * batch_size * seq_len / (time.perf_counter() - start)
