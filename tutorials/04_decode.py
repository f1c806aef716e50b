"""Decode with 4-bit weights: a small Llama-style model in INT4 and NVFP4.

Run: python tutorials/04_decode.py               (CPU: correctness; a GPU adds speed)
     python tutorials/04_decode.py --steps 64

Serving one sequence at a time is weight-bandwidth bound: every generated
token reads every weight once. A 4-bit weight is a quarter of the bytes of a
bf16 one, so the linear layers can run up to ~3.9x faster, if the GEMM reads
the 4-bit weight directly instead of dequantizing it first. On a GPU,
``breccia.convert`` puts INT4 and NVFP4 weights in the ``Packed`` layout and
``F.linear`` then runs breccia's W4A16 kernel (Triton: unpack and scale in
registers, bf16 tensor cores, split-K), with activations left in bf16.

1. Build a Llama-style model with random weights (no downloads): RMSNorm,
   rotary attention with a static KV cache, SwiGLU MLP.
2. Convert copies to INT4 (group 128) and NVFP4, weight-only.
3. Correctness (any device): greedy decoding gives the same tokens as the same
   model with the weights dequantized back to high precision.
4. Speed (CUDA): tokens/s of one compiled decode step, captured in a CUDA
   graph and replayed, for bf16, INT4 and NVFP4.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import breccia


@dataclass
class LlamaConfig:
    vocab: int = 32000
    dim: int = 4096
    layers: int = 4
    heads: int = 32
    ffn: int = 11008
    max_len: int = 256


#: Llama-2-7B's layer shapes, 2 layers + a 32000-word head (0.67 B parameters):
#: the GEMMs a real decode runs (few layers: compile time). TINY: the CPU check.
SIZES = {
    "7b-2layer": LlamaConfig(layers=2),
    "tiny": LlamaConfig(vocab=512, dim=256, layers=2, heads=4, ffn=512, max_len=64),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        d, self.h = cfg.dim, cfg.heads
        self.hd = d // cfg.heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(d, cfg.ffn, bias=False), nn.Linear(d, cfg.ffn, bias=False)
        self.w2 = nn.Linear(cfg.ffn, d, bias=False)
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        # the static KV cache: decode writes one position a step (no reallocation)
        self.register_buffer("k_cache", torch.zeros(1, cfg.heads, cfg.max_len, self.hd), persistent=False)
        self.register_buffer("v_cache", torch.zeros(1, cfg.heads, cfg.max_len, self.hd), persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.n1(x)
        q = self.wq(h).view(b, 1, self.h, self.hd).transpose(1, 2)
        k = self.wk(h).view(b, 1, self.h, self.hd).transpose(1, 2)
        v = self.wv(h).view(b, 1, self.h, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        seen = torch.arange(self.k_cache.shape[2], device=x.device) <= pos  # positions written so far
        o = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=seen.view(1, 1, 1, -1))
        x = x + self.wo(o.transpose(1, 2).reshape(b, 1, -1))
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    """Decode one token per call: ``forward(tok (1, 1), pos (1,)) -> logits (1, vocab)``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        hd = cfg.dim // cfg.heads
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(cfg.max_len).float(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for m in self.modules():  # random weights at a scale that keeps activations O(1)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))

    def forward(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.embed(tok)
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)
        for blk in self.blocks:
            x = blk(x, pos, cos, sin)
        return self.lm_head(self.norm(x))[:, -1]

    def reset(self) -> None:
        for blk in self.blocks:
            blk.k_cache.zero_()
            blk.v_cache.zero_()


@torch.no_grad()
def generate(model: Llama, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding, one token a call (the prompt too)."""
    dev = model.embed.weight.device
    model.reset()
    out: list[int] = []
    nxt = None
    for i in range(len(prompt) + steps - 1):
        t = prompt[i] if i < len(prompt) else nxt
        logits = model(torch.tensor([[t]], device=dev), torch.tensor([i], device=dev))
        nxt = int(logits.argmax(-1))
        if i >= len(prompt) - 1:
            out.append(nxt)
    return out


def quantized(model: Llama, recipe) -> Llama:
    """A converted copy: every linear layer 4-bit, weight-only (``Packed``:
    the layout ``convert`` picks on a GPU for INT4 and, on GPUs without FP4
    tensor cores, NVFP4; asked for explicitly here so the CPU computes the
    same weight-only product)."""
    return breccia.convert(copy.deepcopy(model), recipe, layout=breccia.Packed)


def dequantized(base: Llama, q: Llama) -> Llama:
    """``base`` with each linear weight replaced by ``q``'s, dequantized."""
    d = copy.deepcopy(base)
    for name, m in q.named_modules():
        if isinstance(m, nn.Linear) and isinstance(m.weight, breccia.ScaledTensor):
            d.get_submodule(name).weight.data = breccia.dequantize(m.weight)
    return d


class GraphedDecoder:
    """One decode step -- ``torch.compile``d, then captured in a CUDA graph --
    that feeds its own argmax back: replays run many tokens with no host work."""

    def __init__(self, model: Llama, steps: int):
        dev = model.embed.weight.device
        self.model, self.steps = model, steps
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.out = torch.zeros(model.cfg.max_len, dtype=torch.long, device=dev)
        try:
            self._build(torch.compile(self._step, fullgraph=True))
            self.mode = "torch.compile + CUDA graph"
        except Exception as e:  # noqa: BLE001 - report, and still time the eager step
            print(f"  torch.compile failed ({type(e).__name__}: {str(e)[:300]}); eager step in a CUDA graph")
            self._build(self._step)
            self.mode = "eager + CUDA graph"

    @torch.no_grad()
    def _build(self, fn) -> None:
        self.step_fn = fn
        self._warm()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step_fn()

    def _step(self) -> None:
        nxt = self.model(self.tok, self.pos).argmax(-1)
        self.out.index_copy_(0, self.pos, nxt)
        self.tok.copy_(nxt.view(1, 1))
        self.pos.add_(1)

    def _warm(self) -> None:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):
                self.step_fn()
        torch.cuda.current_stream().wait_stream(s)

    @torch.no_grad()
    def tokens_per_s(self, first: int) -> tuple[float, list[int]]:
        self.model.reset()
        self.tok.fill_(first)
        self.pos.zero_()
        self.graph.replay()  # warm
        self.model.reset()
        self.tok.fill_(first)
        self.pos.zero_()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.graph.replay()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return self.steps / dt, self.out[: self.steps].tolist()


def check_tokens(base: Llama, prompt: list[int], steps: int) -> dict:
    """Greedy tokens of each 4-bit model against its dequantized twin."""
    res = {}
    for name, recipe in (("INT4", breccia.INT4Scaling(group_size=128 if base.cfg.dim % 128 == 0 else 32)),
                         ("NVFP4", breccia.NVFP4BlockScaling())):
        q = quantized(base, recipe)
        a, b = generate(q, prompt, steps), generate(dequantized(base, q), prompt, steps)
        res[name] = (a, b)
        print(f"{name:6s} tokens {a[:12]}... same as the dequantized model: {a == b}")
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 7b-2layer on CUDA, tiny on CPU")
    ap.add_argument("--steps", type=int, default=128, help="tokens to time on the GPU")
    ap.add_argument("--check-steps", type=int, default=24, help="tokens compared in the correctness check")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    results: dict = {}

    # 3. correctness on the CPU, in float32 (the reference path): tiny model
    base = Llama(SIZES["tiny"]).float().eval()
    prompt = [1, 17, 42, 99]
    results["cpu"] = check_tokens(base, prompt, args.check_steps)

    if not cuda:
        print("(no GPU: speed part skipped)")
        return results

    # 4. speed on the GPU, bf16 activations
    cfg = SIZES[args.size or "7b-2layer"]
    cfg.max_len = max(cfg.max_len, args.steps + 1)
    base = Llama(cfg).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"\nGPU: {torch.cuda.get_device_name()}, model {args.size or '7b-2layer'} ({n_params / 1e9:.2f} B parameters), "
          f"batch 1, {args.steps} tokens")
    models = {"bf16": base, "INT4": quantized(base, breccia.INT4Scaling()), "NVFP4": quantized(base, breccia.NVFP4BlockScaling())}
    speed = {}
    for name, m in models.items():
        t0 = time.perf_counter()
        dec = GraphedDecoder(m, args.steps)
        tps, toks = dec.tokens_per_s(first=1)
        speed[name] = (tps, toks, dec.mode, time.perf_counter() - t0)
        print(f"{name:6s} {tps:8.1f} tokens/s  ({tps / speed['bf16'][0]:.2f}x bf16; {dec.mode}; "
              f"built in {speed[name][3]:.0f} s)")
    # the GPU kernel computes the dequantized weights' product (INT4: the
    # same bf16 weights bit for bit; NVFP4: exact weights, global scale last)
    n_cmp = min(32, args.steps)
    for name in ("INT4", "NVFP4"):
        ref = generate(dequantized(base, models[name]), [1], n_cmp)
        same = sum(a == b for a, b in zip(speed[name][1], ref))
        print(f"{name:6s} first {n_cmp} GPU tokens equal to the dequantized bf16 model's (eager): {same}/{n_cmp}")
        speed[name] += (same,)
    results["gpu"] = speed
    return results


if __name__ == "__main__":
    main()
