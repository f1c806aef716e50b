"""Worker functions for the distributed tests (run in spawned gloo processes).

Each worker raises on failure; the test launching it sees the exception.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from torch import nn

import breccia


def init(rank: int, world: int, init_file: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def finish() -> None:
    # every rank done with its collectives before any tears the group down
    dist.barrier()
    dist.destroy_process_group()


def mlp(d_in: int, hidden: int, d_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def batch(step: int, rank: int, d_in: int, rows: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(rows, d_in, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


RECIPES = {
    "bf16": None,
    "fp8_tensor": breccia.Float8CurrentScaling(),
    "fp8_row": breccia.Float8CurrentScaling(granularity="row"),
    "fp8_block": breccia.Float8BlockScaling(),
    "mxfp8": breccia.MXFP8BlockScaling(),
    "nvfp4": breccia.NVFP4BlockScaling(),
    "nvfp4_16x16": breccia.NVFP4BlockScaling(weight_block=(16, 16)),
    "delayed": breccia.DelayedScaling(amax_history_len=4),
    "int4_qat": breccia.INT4Scaling(group_size=32),
}


def _full(p):
    full = p.full_tensor() if hasattr(p, "full_tensor") else p
    return full._data if hasattr(full, "_data") else full


def loss_parity(rank: int, world: int, init_file: str, names, dims, steps: int = 5, precompute: bool = False):
    """Each of ``steps`` FSDP2 training steps equals a single-process step of
    the same converted model on the same data (every rank's batch, grads
    averaged by hand): losses, gradients and updated weights to 1e-5.

    Every step starts both runs from the same weights: a one-ulp difference
    between averaging orders would otherwise flip an FP8 rounding somewhere
    and the runs would drift apart by quantization noise, not by error."""
    from torch.distributed.fsdp import fully_shard

    init(rank, world, init_file)
    d_in, hidden, d_out = dims
    for name in names:
        recipe = RECIPES[name]
        base = mlp(d_in, hidden, d_out)
        ref = copy.deepcopy(base)
        model = copy.deepcopy(base)
        if recipe is not None:
            breccia.convert(ref, recipe, mode="training")
            breccia.convert(model, recipe, mode="training")
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
        for step in range(steps):
            if precompute:
                breccia.precompute_scales(model)
            loss = model(batch(step, rank, d_in)).square().mean()
            loss.backward()
            ref_losses = []
            start = copy.deepcopy(ref.state_dict())  # the histories every rank starts the step from
            for r in range(world):
                if isinstance(recipe, breccia.DelayedScaling):
                    ref.load_state_dict({k: v for k, v in start.items() if "amax" in k}, strict=False)
                rl = ref(batch(step, r, d_in)).square().mean()
                rl.backward()  # (scaling the loss by 1/world would change what dy quantizes to)
                ref_losses.append(rl.detach())
            for q in ref.parameters():
                q.grad /= world
            if isinstance(recipe, breccia.DelayedScaling):
                breccia.sync_amax(model)
            assert _rel(loss, ref_losses[rank]) < 1e-5, (name, step, loss.item(), ref_losses[rank].item())
            for (pn, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                assert _rel(_full(p.grad), q.grad) < 1e-5, (name, step, pn, "grad", _rel(_full(p.grad), q.grad))
            opt.step()
            ref_opt.step()
            opt.zero_grad()
            ref_opt.zero_grad()
            with torch.no_grad():
                for (pn, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                    full = _full(p)
                    qd = q._data if hasattr(q, "_data") else q
                    assert _rel(full, qd) < 1e-5, (name, step, pn, _rel(full, qd))
                    qd.copy_(full)  # start the next step from the same weights
            if isinstance(recipe, breccia.DelayedScaling):
                for m, mr in zip(model.modules(), ref.modules()):
                    if hasattr(m, "breccia_amax"):
                        mr.breccia_amax.load_state_dict(m.breccia_amax.state_dict())
    finish()


def wire_bytes(rank: int, world: int, init_file: str, names, limits):
    """Bytes handed to the all-gather for one forward, against the same model
    unconverted in fp32 (payload + scales + biases)."""
    from torch.distributed.fsdp import fully_shard

    init(rank, world, init_file)
    counted, depth = [], [0]
    reals = {name: getattr(dist, name) for name in ("all_gather_single", "all_gather_into_tensor") if hasattr(dist, name)}

    def counting(real):
        def fn(output, input, *args, **kwargs):
            if depth[0] == 0:  # one collective may be built on the other: count the outermost
                counted.append(input.numel() * input.element_size())
            depth[0] += 1
            try:
                return real(output, input, *args, **kwargs)
            finally:
                depth[0] -= 1

        return fn

    for name, real in reals.items():
        setattr(dist, name, counting(real))
    try:
        results = {}
        for name in ["fp32"] + list(names):
            model = mlp(512, 1024, 512)
            if name != "fp32":
                breccia.convert(model, RECIPES[name], mode="training")
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            counted.clear()
            with torch.no_grad():
                model(batch(0, rank, 512))
            results[name] = sum(counted)
        for name in names:
            ratio = results[name] / results["fp32"]
            assert ratio <= limits[name], (name, ratio)
    finally:
        for name, real in reals.items():
            setattr(dist, name, real)
    finish()
    return None


def uneven_shapes(rank: int, world: int, init_file: str, names, out_features):
    """Uneven shards, dim 0 smaller than the world size, empty local shards:
    the gathered weight equals the single-process quantization bit for bit,
    and a training step runs."""
    from torch.distributed.fsdp import fully_shard

    init(rank, world, init_file)
    for name in names:
        recipe = RECIPES[name]
        for n in out_features:
            torch.manual_seed(n)
            lin = nn.Linear(64, n)
            expect = breccia.dequantize(breccia.cast(lin.weight.detach(), recipe, "weight"), torch.float32)
            model = nn.Sequential(lin)
            breccia.convert(model, recipe, mode="training")
            fully_shard(model)
            seen = {}

            def grab(mod, args, out):
                w = mod.weight
                seen["w"] = breccia.dequantize(w, torch.float32) if isinstance(w, breccia.ScaledTensor) else None

            h = model[0].register_forward_hook(grab)
            x = batch(0, rank, 64, rows=4)
            y = model(x)
            y.square().mean().backward()
            h.remove()
            assert seen["w"] is not None, (name, n, "weight was not gathered quantized")
            assert torch.equal(seen["w"], expect), (name, n, _rel(seen["w"], expect))
            assert model[0].weight.grad is not None
    finish()


def inference_sharding(rank: int, world: int, init_file: str, names):
    """A model converted for inference can be wrapped with fully_shard and run."""
    from torch.distributed.fsdp import fully_shard

    init(rank, world, init_file)
    for name in names:
        recipe = RECIPES[name]
        ref = mlp(64, 96, 32)
        breccia.convert(ref, recipe, mode="inference")
        model = copy.deepcopy(ref)
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        x = batch(0, rank, 64)
        with torch.no_grad():
            assert torch.equal(model(x), ref(x)), name
    finish()


def tensor_parallel(rank: int, world: int, init_file: str, names, sequence_parallel: bool):
    """A colwise + rowwise MLP on a TP mesh matches the single-process
    converted model (within quantization error: shards are quantized on
    their own), forward and gradients."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import parallelize_module

    from breccia.distributed import ColwiseParallel, RowwiseParallel
    from breccia.metrics import sqnr_db

    init(rank, world, init_file)
    mesh = init_device_mesh("cpu", (world,))
    for name in names:
        recipe = RECIPES[name]
        ref = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
        torch.manual_seed(0)
        for p in ref.parameters():
            nn.init.normal_(p, std=0.05)
        tp = copy.deepcopy(ref)
        breccia.convert(ref, recipe, mode="training")
        breccia.convert(tp, recipe, mode="training")
        if sequence_parallel:
            plan = {"0": ColwiseParallel(input_layouts=Shard(1)), "2": RowwiseParallel(output_layouts=Shard(1))}
        else:
            plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
        parallelize_module(tp, mesh, plan)
        g = torch.Generator().manual_seed(7)
        x = torch.randn(2, 8 * world, 256, generator=g)  # (batch, sequence, features), same on every rank
        xr = x.clone().requires_grad_()
        y_ref = ref(xr)
        y_ref.square().mean().backward()
        chunk = x.shape[1] // world
        xl = (x[:, rank * chunk:(rank + 1) * chunk] if sequence_parallel else x).clone().requires_grad_()
        y = tp(xl)
        y_full = _gather_dim_for_test(y, 1) if sequence_parallel else y
        assert y_full.shape == y_ref.shape, (name, y_full.shape)
        assert sqnr_db(y_ref, y_full) > 20, (name, sqnr_db(y_ref, y_full))
        # the same loss as the reference: mean over the full output
        (y.square().sum() / y_ref.numel()).backward()
        gx = _gather_dim_for_test(xl.grad, 1) if sequence_parallel else xl.grad
        if not sequence_parallel:  # every rank saw the full input: its grad is complete
            assert sqnr_db(xr.grad, gx) > 15, (name, "input grad", sqnr_db(xr.grad, gx))
        else:
            assert sqnr_db(xr.grad, gx) > 15, (name, "input grad", sqnr_db(xr.grad, gx))
        w = tp[0].weight.grad.full_tensor()
        assert sqnr_db(ref[0].weight.grad if not hasattr(ref[0].weight.grad, "_data") else ref[0].weight.grad, w) > 15, (
            name, "weight grad", sqnr_db(ref[0].weight.grad, w))
    finish()


def _gather_dim_for_test(t, dim):
    world = dist.get_world_size()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim)


def two_d(rank: int, world: int, init_file: str, name: str):
    """A 2x2 mesh on 4 ranks: tensor parallel inside, FSDP2 across. One
    training step matches the single-process converted model within
    quantization error (each TP shard is quantized on its own)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    from breccia.distributed import ColwiseParallel, RowwiseParallel
    from breccia.metrics import sqnr_db

    init(rank, world, init_file)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    recipe = RECIPES[name]
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    model = copy.deepcopy(ref)
    breccia.convert(ref, recipe, mode="training")
    breccia.convert(model, recipe, mode="training")
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    dp = mesh["dp"].get_local_rank()
    xs = [batch(0, r, 128) for r in range(2)]  # one batch per data-parallel rank
    y = model(xs[dp])
    y.square().mean().backward()
    ys = [ref(x) for x in xs]
    assert sqnr_db(ys[dp], y) > 20, (name, sqnr_db(ys[dp], y))
    sum(v.square().mean() for v in ys).backward()
    for p in ref.parameters():
        p.grad /= 2
    for (pn, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        g = p.grad.full_tensor()
        assert sqnr_db(q.grad, g) > 15, (name, pn, sqnr_db(q.grad, g))
    finish()


def compiled_blocks(rank: int, world: int, init_file: str, names):
    """Per-block torch.compile(fullgraph=True) inside FSDP2: the same losses
    and gradients as the eager FSDP2 model."""
    from torch.distributed.fsdp import fully_shard

    init(rank, world, init_file)
    for name in names:
        recipe = RECIPES[name]
        torch._dynamo.reset()

        def build(compile_blocks):
            torch.manual_seed(0)
            model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)) for _ in range(2)])
            breccia.convert(model, recipe, mode="training")
            for i, block in enumerate(model):
                if compile_blocks:
                    block = torch.compile(block, fullgraph=True, backend="aot_eager")
                    model[i] = block
                fully_shard(block)
            fully_shard(model)
            return model

        eager, compiled = build(False), build(True)
        for step in range(2):
            x = batch(step, rank, 64)
            le = eager(x).square().mean()
            le.backward()
            lc = compiled(x).square().mean()
            lc.backward()
            assert _rel(lc, le) < 1e-6, (name, step, lc.item(), le.item())
            for (pn, p), (_, q) in zip(compiled.named_parameters(), eager.named_parameters()):
                assert _rel(_full(p.grad), _full(q.grad)) < 1e-5, (name, pn)
            for m in (eager, compiled):
                m.zero_grad()
    finish()


class _QKVBlock(nn.Module):
    """Three column-parallel consumers of one input, then a row-parallel
    projection: the shape PrepareModuleInput is for."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(128, 128)
        self.o = nn.Linear(128, 128)

    def forward(self, x):
        return self.o(torch.nn.functional.gelu(self.q(x)) * self.k(x) + self.v(x))


def prepare_module_input(rank: int, world: int, init_file: str, name: str):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import parallelize_module

    from breccia.distributed import ColwiseParallel, PrepareModuleInput, RowwiseParallel
    from breccia.metrics import sqnr_db

    init(rank, world, init_file)
    mesh = init_device_mesh("cpu", (world,))
    recipe = RECIPES[name]
    torch.manual_seed(0)
    ref = _QKVBlock()
    tp = copy.deepcopy(ref)
    breccia.convert(ref, recipe, mode="training")
    breccia.convert(tp, recipe, mode="training")
    parallelize_module(tp, mesh, {
        "": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(),
        "o": RowwiseParallel(output_layouts=Shard(1)),
    })
    x = torch.randn(2, 8 * world, 128, generator=torch.Generator().manual_seed(3))
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    y_ref.square().mean().backward()
    chunk = 8
    xl = x[:, rank * chunk:(rank + 1) * chunk].clone().requires_grad_()
    y = tp(xl)
    (y.square().sum() / y_ref.numel()).backward()
    sl = slice(rank * chunk, (rank + 1) * chunk)
    assert sqnr_db(y_ref[:, sl], y) > 20, sqnr_db(y_ref[:, sl], y)
    assert sqnr_db(xr.grad[:, sl], xl.grad) > 15, sqnr_db(xr.grad[:, sl], xl.grad)
    finish()


def tensor_parallel_inference(rank: int, world: int, init_file: str, names):
    """Colwise + rowwise TP of a model converted for inference: each rank's
    weight is a ScaledTensor shard; the output matches the single-process
    converted model within quantization error (activation scales cover each
    rank's features)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from breccia.distributed import ColwiseParallel, RowwiseParallel
    from breccia.metrics import sqnr_db

    init(rank, world, init_file)
    mesh = init_device_mesh("cpu", (world,))
    for name in names:
        torch.manual_seed(0)
        ref = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
        breccia.convert(ref, RECIPES[name], mode="inference")
        tp = copy.deepcopy(ref)
        parallelize_module(tp, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        local = tp[0].weight.to_local()
        assert isinstance(local, breccia.ScaledTensor) and local.shape == (512 // world, 256)
        x = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y, y_ref = tp(x), ref(x)
        assert sqnr_db(y_ref, y) > 20, (name, sqnr_db(y_ref, y))
    finish()
