"""The autoregressive model: a GPT-style decoder-only transformer.

Batch-first throughout: token ids are ``(B, T)``, activations ``(B, T, C)`` with ``C = d_model``.
Pre-norm blocks, a GELU, SwiGLU or squared-ReLU feed-forward, positions either learned (a table
added to the token embedding, GPT-2's) or rotary (RoPE: each head's queries and keys rotated by
their position, Su et al. 2021), causal attention (``scaled_dot_product_attention``, or explicit
matmuls for short contexts on a CPU: ``causal_attention``), and an output layer tied to the token
embedding (fewer parameters, and the better choice on a corpus as small as Tiny Shakespeare).
The model sees only its own ``ModelConfig``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    seq_len: int  # the longest context the position table holds
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float = 0.0
    position_encoding: str = "learned"  # or "rope"
    activation: str = "gelu"  # or "swiglu", "relu2"

    def __post_init__(self) -> None:
        dimensions = ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_ff")
        small = [f"{name}={getattr(self, name)}" for name in dimensions if getattr(self, name) < 1]
        if small:  # an export's config.json edited by hand, say
            raise ValueError(f"every dimension must be at least 1, but got {', '.join(small)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model, but got d_model={self.d_model}, n_heads={self.n_heads}")
        if self.position_encoding not in ("learned", "rope"):
            raise ValueError(f"position_encoding must be 'learned' or 'rope', but got {self.position_encoding!r}")
        if self.activation not in ("gelu", "swiglu", "relu2"):
            raise ValueError(f"activation must be 'gelu', 'swiglu' or 'relu2', but got {self.activation!r}")
        if self.position_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"rope rotates pairs of a head's dimensions, so d_model / n_heads must be even, "
                f"but got d_model={self.d_model}, n_heads={self.n_heads}"
            )

    def num_parameters(self) -> int:
        """``GPT(self).num_parameters()``, counted without building it (a model too large for memory, say)."""
        d, up = self.d_model, (2 if self.activation == "swiglu" else 1) * self.d_ff
        block = 4 * d * d + up * d + self.d_ff * d + 4 * d  # qkv and proj, the feed-forward, two LayerNorms
        positions = self.seq_len * d if self.position_encoding == "learned" else 0
        return self.vocab_size * d + positions + self.n_layers * block + 2 * d  # the head is tied to tok_emb


ROPE_BASE = 10000.0


def rope_rotations(seq_len: int, head_dim: int, base: float = ROPE_BASE) -> torch.Tensor:
    """The rotations RoPE applies to a ``(B, T, 3, H, head_dim)`` qkv tensor: unit complex numbers
    as ``(cos, sin)`` pairs, float32 of shape ``(T, 3, 1, head_dim / 2, 2)``.

    Position ``t`` turns the pair of dimensions ``(2i, 2i + 1)`` of a query or key by the angle
    ``t * base ** (-2i / head_dim)``, so a query-key product depends on their distance alone. The
    value slot is the identity (1, 0), so that one product turns q and k in place and passes v
    through, with no slicing of qkv (whose backward would fill a zero tensor for each slice).
    """
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)  # (T, head_dim / 2)
    turn = torch.stack([angles.cos(), angles.sin()], dim=-1).float()  # (T, head_dim / 2, 2)
    identity = torch.zeros_like(turn)
    identity[..., 0] = 1.0
    return torch.stack([turn, turn, identity], dim=1).unsqueeze(2)


def _turn(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., head_dim)`` with each pair of dimensions multiplied, as a complex number, by
    ``turns`` (``(cos, sin)`` pairs), in one complex product: eager's fastest form.

    bf16 and fp16 go through complex64 (they have no complex type) and come back in their dtype. A
    strided ``x`` is read in place where its pairs are adjacent (a gradient arrives permuted).
    """
    real = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if real.stride(-1) != 1 or any(stride % 2 for stride in real.stride()[:-1]):
        real = real.contiguous()
    product = torch.view_as_complex(real.unflatten(-1, (-1, 2))) * torch.view_as_complex(turns)
    return torch.view_as_real(product).flatten(-2).type_as(x)


def _turn_real(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """:func:`_turn` in real arithmetic, for torch.compile: Inductor generates no code for complex
    operators (it falls back to eager's kernel, with a warning), while this form fuses into one kernel."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = turns.unbind(-1)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


class _Rotate(torch.autograd.Function):
    """RoPE's rotation of qkv, eager. Its backward turns the gradient back by the conjugate turns,
    kept ready, where autograd's own formula would conjugate the table anew in every backward (see
    docs/experiments.md, 'rotary positions')."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, turns: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(back)
        return _turn(qkv, turns)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (back,) = ctx.saved_tensors
        return _turn(grad, back), None, None


# The longest contexts that attention computes as explicit matmuls on a CPU, in float32 and in bf16
# (see causal_attention).
EXPLICIT_ATTENTION_MAX_LEN = {torch.float32: 64, torch.bfloat16: 512}


def _causal_mask(seq_len: int) -> torch.Tensor:
    """``(T, T)``: 0 where a position may attend, -inf above the diagonal (its future)."""
    if torch.compiler.is_compiling():
        return _make_causal_mask(seq_len)  # a constant of the compiled graph (dynamo does not trace the cache)
    return _cached_causal_mask(seq_len)


def _make_causal_mask(seq_len: int) -> torch.Tensor:
    return torch.full((seq_len, seq_len), float("-inf"), dtype=torch.float32, device="cpu").triu(1)


@functools.lru_cache(maxsize=64)  # one per length: sampling grows the context by one (the last 64 lengths kept)
def _cached_causal_mask(seq_len: int) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor, wherever it is first made
        return _make_causal_mask(seq_len)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal softmax attention of ``(B, H, T, head_dim)`` queries, keys and values.

    ``scaled_dot_product_attention``, except on a CPU for short float32 contexts in eager mode (its fused
    kernel hardly uses a second core there, while two batched matmuls and a softmax split well: the scores,
    ``B * H * T * T``, are small; compiled, the two are level) and for bf16 ones up to 512 tokens, eager or
    compiled (its bf16 kernel is several times slower than bf16 matmuls). See docs/benchmarks.md, 'Attention
    on a CPU'. Longer contexts, GPUs and other dtypes keep SDPA.
    """
    if (
        q.device.type != "cpu"
        or q.shape[-2] > EXPLICIT_ATTENTION_MAX_LEN.get(q.dtype, 0)
        or (q.dtype == torch.float32 and torch.compiler.is_compiling())
    ):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return explicit_causal_attention(q, k, v, dropout_p)


def explicit_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal attention as ``softmax(q k^T / sqrt(head_dim) + mask) v``, in batched matmuls."""
    B, H, T, D = q.shape
    keys = k.reshape(B * H, T, D).transpose(1, 2)
    scores = torch.baddbmm(_causal_mask(T).to(q).expand(B * H, T, T), q.reshape(B * H, T, D), keys, alpha=D**-0.5)
    weights = scores.softmax(dim=-1)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return torch.bmm(weights, v.reshape(B * H, T, D)).view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rope: Optional[torch.Tensor]
        self.rope_back: Optional[torch.Tensor]
        if cfg.position_encoding == "rope":  # buffers, so they follow the model's device; not saved: derived
            turns = rope_rotations(cfg.seq_len, cfg.d_model // cfg.n_heads)
            self.register_buffer("rope", turns, persistent=False)
            self.register_buffer("rope_back", turns * torch.tensor([1.0, -1.0]), persistent=False)  # conjugates
        else:
            self.rope = self.rope_back = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads)
        if self.rope is not None:
            if torch.compiler.is_compiling():
                qkv = _turn_real(qkv, self.rope[:T])  # AOTAutograd derives its backward
            else:
                qkv = _Rotate.apply(qkv, self.rope[:T], self.rope_back[:T])
        # (B, T, 3, H, C/H) -> three (B, H, T, C/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = causal_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


def _swiglu(h: torch.Tensor) -> torch.Tensor:
    gate, value = h.chunk(2, dim=-1)
    return F.silu(gate) * value


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) * value`` of ``h = [gate | value]``, eager. Its backward writes the two halves'
    gradients into one tensor, where autograd's own would build each apart, concatenate them and take the
    silu's derivative in several kernels (see docs/experiments.md, 'the feed-forward's activation')."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate, value, activated)
        return activated * value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        gate, value, activated = ctx.saved_tensors
        dh = torch.empty((*gate.shape[:-1], 2 * gate.shape[-1]), dtype=gate.dtype, device=gate.device)
        dgate, dvalue = dh.chunk(2, dim=-1)
        torch.mul(grad, activated, out=dvalue)
        torch.ops.aten.silu_backward.grad_input(grad * value, gate, grad_input=dgate)
        return dh


class FeedForward(nn.Module):
    """``down(act(up(x)))``. For swiglu, ``up`` holds the gate's matrix and the value's side by side
    (one matmul, ``2 * d_ff`` wide), and the unit is ``silu(gate) * value``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        self.up = nn.Linear(cfg.d_model, (2 if cfg.activation == "swiglu" else 1) * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.activation == "swiglu":  # Inductor fuses the plain form into one kernel, and derives its backward
            h = _swiglu(h) if torch.compiler.is_compiling() else _SwiGLU.apply(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + ff(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.position_encoding == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied output layer
        if self.pos_emb is not None:  # the table's row indices (rope needs none)
            self.register_buffer("positions", torch.arange(cfg.seq_len), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` -> next-token logits ``(B, T, vocab_size)``."""
        T = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(self.positions[:T])
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Greedy decoding: append ``n_tokens`` argmax tokens to ``idx`` ``(1, T)``."""
        for _ in range(n_tokens):
            logits = self(idx[:, -self.cfg.seq_len :])  # (1, T, V)
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        return idx
