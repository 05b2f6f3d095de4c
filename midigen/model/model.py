"""GPT-2 (124M shape by default) for event tokens, with a KV cache for incremental decoding.

Pre-LayerNorm transformer blocks, 4x GELU MLP, learned positions, tied input/output embeddings,
biases as in GPT-2. Attention goes through ``scaled_dot_product_attention`` so CUDA gets flash kernels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's padded BPE size, a placeholder: training sets padded_vocab(codec size)
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding/unembedding matmuls use efficient shapes."""
    return ((n + multiple - 1) // multiple) * multiple


class KVCache:
    """Preallocated keys/values for every layer; ``length`` tokens are filled for all batch rows."""

    def __init__(self, cfg: GPTConfig, batch_size: int, device, dtype, max_len: int | None = None):
        self.max_len = max_len or cfg.block_size
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def reset(self) -> None:
        self.length = 0


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x)
        dtype = qkv.dtype
        if cache is not None:  # keys and values are kept, and attended over, in the cache's dtype
            qkv = qkv.to(cache.k.dtype)
        # (B, T, 3C) -> three (B, heads, T, head_dim) views, no copies
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif pos is not None:  # static shapes (``GPT.decode_step``): write at ``pos``, attend over the whole cache
            cache.k[layer].index_copy_(2, pos, k)
            cache.v[layer].index_copy_(2, pos, v)
            seen = (torch.arange(cache.max_len, device=x.device) <= pos).view(1, cache.max_len)
            y = F.scaled_dot_product_attention(q, cache.k[layer], cache.v[layer], attn_mask=seen)
        else:
            start = cache.length
            end = start + T
            keys, values = cache.k[layer], cache.v[layer]
            keys.narrow(2, start, T).copy_(k)
            values.narrow(2, start, T).copy_(v)
            k_all, v_all = keys.narrow(2, 0, end), values.narrow(2, 0, end)
            if T == 1:
                y = F.scaled_dot_product_attention(q, k_all, v_all)
            else:
                # new queries see the whole cache and, among themselves, only earlier positions
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C).to(dtype)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0, pos=None):
        x = x + self.attn(self.ln1(x), cache, layer, pos)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied, as in GPT-2
        # Output support (see set_support): not parameters, not saved in the weights.
        self.register_buffer("support", None, persistent=False)
        self.register_buffer("support_index", None, persistent=False)
        self.support_epsilon = 0.0
        # An inference-only output head over the support's rows (``precision``: the int8 head), rebuilt
        # from the embedding whenever the support changes; None: the float32 rows themselves.
        self.head_maker = None
        self.support_head = None
        # The KV cache's dtype when the caller names none (None: the embedding's); ``precision`` sets it.
        self.kv_dtype = None
        self.apply(self._init)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) at init
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def set_support(self, ids, epsilon: float = 1e-4) -> None:
        """Restrict the softmax to the token ids ``ids`` (None: the whole vocabulary).

        A dataset uses a small part of the 18k-id vocabulary (the demo corpus: ~400 ids), and the
        output layer over all ids costs most of a small model's compute. With a support, training
        computes logits for those ids only (about 3x faster for the demo model), and every other id
        gets an ``epsilon`` share of probability spread evenly, so any token still has a finite
        cost. The network itself is unchanged.
        """
        if ids is not None:
            ids = sorted({int(i) for i in ids})
            if not ids or ids[0] < 0 or ids[-1] >= self.cfg.vocab_size:
                raise ValueError("support ids must be non-empty and inside the vocabulary")
        if ids is None or len(ids) == self.cfg.vocab_size:  # every id: nothing to restrict
            self.support = self.support_index = None
            self.support_epsilon = 0.0
        else:
            dev = self.wte.weight.device
            ids = torch.tensor(ids, dtype=torch.long, device=dev)
            index = torch.full((self.cfg.vocab_size,), -1, dtype=torch.long, device=dev)
            index[ids] = torch.arange(len(ids), device=dev)
            self.support, self.support_index = ids, index
            self.support_epsilon = float(epsilon)
        self.set_head_maker(self.head_maker)

    @torch.no_grad()
    def set_head_maker(self, make) -> None:
        """Compute the output logits with ``make(rows)``, a module built from the float32 embedding
        rows of the support (or of the whole vocabulary), instead of those rows themselves; None
        undoes it. ``set_support`` rebuilds it from the new rows, so the ids that get a computed logit
        are always exactly the support's. For inference only: nothing trains through it."""
        self.head_maker, self.support_head = make, None
        if make is not None:
            self.support_head = make(self.wte.weight if self.support is None else self.wte.weight[self.support])

    def _head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the support's ids in support order (every id without a support)."""
        if self.support_head is not None:
            return self.support_head(x)
        if self.support is None:
            return self.head(x)
        return F.linear(x, self.wte.weight[self.support])

    def _full_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary whose softmax is the support-restricted, smoothed distribution."""
        if self.support is None:
            return self._head_logits(x)
        z = self._head_logits(x).float()
        eps, n_out = self.support_epsilon, self.cfg.vocab_size - len(self.support)
        # p(in support) = (1 - eps) softmax(z); p(any other id) = eps / n_out
        outside = torch.logsumexp(z, dim=-1, keepdim=True) + math.log(eps / n_out)
        full = outside.expand(*z.shape[:-1], self.cfg.vocab_size).clone()
        full[..., self.support] = z + math.log1p(-eps)
        return full

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is not double counted).

        Non-embedding excludes token and position embeddings, the GPT-2 convention for model size.
        """
        n = sum(math.prod(shape) for shape in param_shapes(self.cfg).values())  # int8 weights hold no Parameters
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        w = self.wte.weight
        return KVCache(self.cfg, batch_size, device or w.device, dtype or self.kv_dtype or w.dtype)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final (layer-normed) hidden states for ``idx`` (B, T): what every output head reads."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, 1, vocab) for one token per row at position ``pos`` (a (1,) tensor on the device).

        The same numbers as ``forward`` with a cache of ``pos`` tokens, in static shapes: the position
        is read from a tensor, keys and values are written at it in place, and attention runs over the
        whole cache with the later positions masked, so every call runs the same kernels on the same
        memory (what a CUDA graph records). It leaves ``cache.length`` to the caller.
        """
        x = self.wte(idx) + self.wpe(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, pos)
        return self._full_logits(self.ln_f(x))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False):
        """Logits for ``idx`` (B, T); with ``targets`` also the mean cross-entropy (nats/token).

        With a cache, ``idx`` continues the cached sequence: positions start at ``cache.length``,
        and the cache advances by T. ``last_only`` returns logits for the final position only.
        """
        x = self.hidden(idx, cache)
        if targets is None:
            if last_only:
                x = x[:, -1:, :]
            return self._full_logits(x), None
        logits = self._head_logits(x)
        if self.support is None:
            t = targets
        else:  # train on the support only: targets become support positions (never outside by construction)
            t = torch.where(targets >= 0, self.support_index[targets.clamp(min=0)], targets)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), t.reshape(-1), ignore_index=-1)
        return logits, loss

    def sum_nll(self, idx: torch.Tensor, targets: torch.Tensor, max_logits: int = 1 << 25) -> torch.Tensor:
        """Total cross-entropy (nats, float64 but on MPS) of ``targets`` >= 0 under the full-vocabulary distribution.

        The same numbers as cross-entropy over ``forward``'s logits, without building float32 logits
        over the whole vocabulary for the whole batch (16 x 1024 x 18k would be 1.2 GB): only the
        scored positions are kept, and their logits are made ``max_logits`` at a time, over the
        support alone when there is one (an id outside it costs log(n_outside / epsilon)).
        """
        h = self.hidden(idx)
        keep = targets >= 0
        h, t = h[keep], targets[keep]
        rows = max(1, max_logits // (self.cfg.vocab_size if self.support is None else len(self.support)))
        acc = torch.float32 if h.device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.zeros((), dtype=acc, device=h.device)
        for a in range(0, len(t), rows):
            z = self._head_logits(h[a : a + rows]).float()
            lse = torch.logsumexp(z, dim=-1)
            tt = t[a : a + rows]
            if self.support is None:
                nll = lse - z.gather(1, tt[:, None]).squeeze(1)
            else:
                n_out = self.cfg.vocab_size - len(self.support)
                pos = self.support_index[tt]
                inside = lse - z.gather(1, pos.clamp(min=0)[:, None]).squeeze(1) - math.log1p(-self.support_epsilon)
                outside = torch.full_like(lse, -math.log(self.support_epsilon / n_out))
                nll = torch.where(pos >= 0, inside, outside)
            total += nll.to(acc).sum()
        return total

    def optimizer_groups(self, weight_decay: float):
        """AdamW groups: weight decay on matrices and embeddings only, never on biases or LayerNorms."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward) actually computed: 6N + attention.

        N counts the matmul weights: the blocks, and the output head over the ids it computes, which
        with a support (``set_support``) is only those, not the whole vocabulary. Attention adds
        12 * layers * width * context, the usual convention (PaLM, nanoGPT) for comparable MFU figures.
        """
        c = self.cfg
        outputs = c.vocab_size if self.support is None else len(self.support)
        n = self.num_params(non_embedding=True) + outputs * c.n_embd
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def block_linears(n_embd: int) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear inside a block, by its path in the block."""
    d = n_embd
    return {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc": (4 * d, d), "mlp.proj": (d, 4 * d)}


def param_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The saved tensors of a ``GPT(cfg)`` (no tied head) and their shapes, without building it.

    A checkpoint's config is compared with its weights' header before any model is allocated, so a
    config asking for a model larger than the weights present is refused at no cost.
    """
    d, ln = cfg.n_embd, ("weight", "bias") if cfg.bias else ("weight",)
    linears = block_linears(d)
    out: dict[str, tuple[int, ...]] = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (cfg.block_size, d)}
    for i in range(cfg.n_layer):
        for norm in ("ln1", "ln2"):
            out.update({f"blocks.{i}.{norm}.{p}": (d,) for p in ln})
        for name, (o, n_in) in linears.items():
            out[f"blocks.{i}.{name}.weight"] = (o, n_in)
            if cfg.bias:
                out[f"blocks.{i}.{name}.bias"] = (o,)
    out.update({f"ln_f.{p}": (d,) for p in ln})
    return out
