"""Train a small transformer language model with every breccia training recipe.

A built-in GPT-style model (random init) learns a synthetic language: token
streams from a fixed random bigram table with a repeated span, generated
here, no downloads. It trains in bf16, then once per recipe with
``breccia.convert(model, recipe, mode="training")`` -- every linear layer's
forward, grad-input and grad-weight GEMMs scaled -- from the same init on
the same batches. The loss curves land in one PNG.

Run (CPU is fine; a GPU is used when present):
    python tutorials/02_train_fp8.py --steps 300
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import breccia

RECIPES = {
    "Float8CurrentScaling (tensor)": breccia.Float8CurrentScaling(),
    "Float8CurrentScaling (row)": breccia.Float8CurrentScaling(granularity="row"),
    "DelayedScaling (hybrid)": breccia.DelayedScaling(amax_history_len=16),
    "Float8BlockScaling (DeepSeek)": breccia.Float8BlockScaling(),
    "MXFP8BlockScaling": breccia.MXFP8BlockScaling(),
    "NVFP4BlockScaling": breccia.NVFP4BlockScaling(stochastic_rounding=True),
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 128, d: int = 128, layers: int = 2, heads: int = 4, ctx: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.norm(x))


def synthetic_batches(steps: int, batch: int, ctx: int, vocab: int, seed: int = 0):
    """Token streams from a sparse random bigram table, with the second half
    of each sequence repeating the first (so attention has something to learn)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 3.0
    table = torch.softmax(logits, dim=-1)
    for _ in range(steps):
        toks = torch.empty(batch, ctx // 2, dtype=torch.long)
        toks[:, 0] = torch.randint(vocab, (batch,), generator=g)
        for t in range(1, ctx // 2):
            toks[:, t] = torch.multinomial(table[toks[:, t - 1]], 1, generator=g).squeeze(1)
        yield torch.cat([toks, toks], dim=1)


def train(recipe, steps: int, device: str, seed: int = 0, batch: int = 16, ctx: int = 64):
    torch.manual_seed(seed)
    model = TinyGPT(ctx=ctx).to(device=device, dtype=torch.bfloat16)
    if recipe is not None:
        # embeddings, norms and the output head stay high precision, as usual
        breccia.convert(model, recipe, mode="training", filter_fn=lambda m, fqn: "lm_head" not in fqn)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for idx in synthetic_batches(steps, batch, ctx, 128, seed=seed):
        idx = idx.to(device)
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def smooth(xs, k: int = 20):
    return [sum(xs[max(0, i - k + 1): i + 1]) / len(xs[max(0, i - k + 1): i + 1]) for i in range(len(xs))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), help="names from: " + ", ".join(RECIPES))
    p.add_argument("--plot", default="tutorials/02_train_fp8_loss.png", help="PNG path ('' to skip)")
    args = p.parse_args(argv)

    runs = {}
    for name in ["bf16"] + args.recipes:
        t0 = time.perf_counter()
        runs[name] = train(None if name == "bf16" else RECIPES[name], args.steps, args.device)
        print(f"{name:32s} final loss {smooth(runs[name])[-1]:.4f}   ({time.perf_counter() - t0:.1f} s)")

    base = smooth(runs["bf16"])[-1]
    print(f"\n{'recipe':32s} {'final loss':>10s} {'vs bf16':>8s}")
    for name, losses in runs.items():
        final = smooth(losses)[-1]
        assert math.isfinite(final), name
        print(f"{name:32s} {final:10.4f} {100 * (final / base - 1):+7.2f}%")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib not installed: no plot)")
            return runs
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, losses in runs.items():
            ax.plot(smooth(losses), label=name, lw=2.5 if name == "bf16" else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title(f"TinyGPT, {args.steps} steps, {args.device}")
        ax.legend()
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"loss curves: {args.plot}")
    return runs


if __name__ == "__main__":
    main()
