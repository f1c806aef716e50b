"""FSDP2 training of a Llama-style block stack on every GPU: step time,
all-gather time and bytes moved per step, for bf16, torchao float8
tensorwise (fp8 all-gather) and breccia tensorwise, rowwise, DeepSeek
blockwise and MXFP8.

    torchrun --nproc_per_node=NGPU benchmarks/bench_fsdp.py
    torchrun --nproc_per_node=2 benchmarks/bench_fsdp.py --small     # CPU (gloo) smoke test

Rank 0 writes benchmarks/results/fsdp-<device>x<world>.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

try:
    import breccia
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import breccia

from breccia.demo import write_text_atomic
from results_path import result_path  # noqa: E402  (benchmarks/ is on sys.path)
from training_variants import breccia_variants  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_fsdp2_tutorial():
    """tutorials/03_fsdp2.py as a module: its process-group setup and
    per-block sharding are the ones this benchmark measures (loaded by path,
    since a file name starting with a digit cannot be imported)."""
    path = os.path.join(HERE, "..", "tutorials", "03_fsdp2.py")
    spec = importlib.util.spec_from_file_location("fsdp2_tutorial", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fsdp2_tutorial = _load_fsdp2_tutorial()


class Block(nn.Module):
    """A Llama-style block: attention projections and a SwiGLU MLP."""

    def __init__(self, d: int, ffn: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.wqkv, self.wo = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.w1, self.w3 = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.w2 = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.wqkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def variants():
    out = {"bf16": lambda m: m}
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        out["torchao float8 tensorwise (fp8 all-gather)"] = lambda m: convert_to_float8_training(
            m, config=Float8LinearConfig(enable_fsdp_float8_all_gather=True)
        )
    except Exception as e:
        if dist.get_rank() == 0:
            print(f"(torchao unavailable: {e})")
    out.update(breccia_variants())
    return out


class AllGatherMeter:
    """Wraps the all-gather collectives: bytes sent and (synchronised) time."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.seconds, self.reals = device, 0, 0.0, {}
        for name in ("all_gather_single", "all_gather_into_tensor"):
            if hasattr(dist, name):
                self.reals[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(self.reals[name]))
        self.depth = 0

    def _wrap(self, real):
        def fn(output, input, *args, **kwargs):
            outer = self.depth == 0
            if outer:
                self.bytes += input.numel() * input.element_size()
                self._sync()
                t0 = time.perf_counter()
            self.depth += 1
            try:
                work = real(output, input, *args, **kwargs)
                if work is not None and kwargs.get("async_op"):
                    work.wait()
                return work
            finally:
                self.depth -= 1
                if outer:
                    self._sync()
                    self.seconds += time.perf_counter() - t0

        return fn

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self):
        self.bytes, self.seconds = 0, 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    device, mesh = fsdp2_tutorial.init_distributed()
    rank, world, cuda = dist.get_rank(), dist.get_world_size(), device.type == "cuda"
    d, ffn, heads, layers, seq, batch = (128, 512, 4, 2, 64, 2) if args.small else (4096, 14336, 32, 4, 4096, 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    meter = AllGatherMeter(device)

    rows = []
    for name, make in variants().items():
        torch.manual_seed(0)
        model = nn.Sequential(*[Block(d, ffn, heads) for _ in range(layers)]).to(device=device, dtype=dtype)
        model = fsdp2_tutorial.shard(make(model), mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, seq, d, device=device, dtype=dtype)
        times = []
        for step in range(args.steps):
            if name.startswith("breccia tensorwise"):
                breccia.precompute_scales(model)
            meter.reset()
            meter._sync()
            t0 = time.perf_counter()
            model(x).float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            meter._sync()
            if step >= 2:  # warm-up steps excluded
                times.append((time.perf_counter() - t0, meter.seconds, meter.bytes))
        step_s = sorted(t[0] for t in times)[len(times) // 2]
        ag_s = sorted(t[1] for t in times)[len(times) // 2]
        rows.append((name, step_s * 1e3, ag_s * 1e3, times[-1][2]))
        if rank == 0:
            print(f"{name:44s} step {step_s * 1e3:9.2f} ms  all-gather {ag_s * 1e3:8.2f} ms  {times[-1][2]:,} B/rank", flush=True)
        del model, opt

    if rank == 0:
        base = rows[0]
        dev = torch.cuda.get_device_name(device) if cuda else "cpu"
        lines = [
            f"# FSDP2 training, {layers} Llama-style blocks (d={d}, ffn={ffn}), {batch}x{seq} tokens per rank, {world} ranks",
            "",
            f"_{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {dev} x{world} · torch {torch.__version__}_",
            "",
            "All-gather time is measured with a synchronisation around each collective (it serialises",
            "the overlap FSDP2 normally gets), so read it as the collectives' cost, not as exposed time.",
            "",
            "| what | step ms | vs bf16 | all-gather ms | all-gather bytes per rank per step | vs bf16 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, step_ms, ag_ms, nbytes in rows:
            lines.append(
                f"| {name} | {step_ms:.2f} | {base[1] / step_ms:.2f}x | {ag_ms:.2f} | {nbytes:,} | {nbytes / base[3]:.2f}x |"
            )
        text = "\n".join(lines) + "\n"
        print(text)
        write_text_atomic(result_path(f"fsdp{'-small' if args.small else ''}").replace(".md", f"x{world}.md"), text)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
