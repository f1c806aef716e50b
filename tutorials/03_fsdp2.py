"""Train with FSDP2 whose all-gather moves low-precision payload plus scales.

    torchrun --nproc_per_node=2 tutorials/03_fsdp2.py            # CPU (gloo) or GPUs (nccl)
    torchrun --nproc_per_node=2 tutorials/03_fsdp2.py --recipe mxfp8 --steps 50

Each rank quantizes its shard of every weight before the all-gather, so the
wire carries one byte per element (half a byte for NVFP4) plus scales
instead of four; this script counts the bytes handed to the all-gather and
prints them beside the fp32 baseline.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

import breccia

RECIPES = {
    "fp8": breccia.Float8CurrentScaling(),
    "fp8-row": breccia.Float8CurrentScaling(granularity="row"),
    "fp8-block": breccia.Float8BlockScaling(),
    "mxfp8": breccia.MXFP8BlockScaling(),
    "nvfp4": breccia.NVFP4BlockScaling(),
}


def make_model(d: int = 256, layers: int = 4) -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights
    return nn.Sequential(*[nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(layers)])


def init_distributed() -> tuple[torch.device, DeviceMesh]:
    """Join the torchrun job: NCCL on GPUs (one per local rank), gloo on CPU.
    Returns this rank's device and a 1-D mesh over every rank."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return device, init_device_mesh(device.type, (dist.get_world_size(),))


def shard(model: nn.Sequential, mesh: DeviceMesh) -> nn.Sequential:
    """FSDP2-shard ``model`` in place, each block on its own so that each
    block's weights are all-gathered (low-precision, once converted) just
    before the block runs; the root call takes whatever is left."""
    for block in model:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def count_all_gather_bytes():
    """Wrap the all-gather collectives to count the bytes each rank sends."""
    counted = []
    for name in ("all_gather_single", "all_gather_into_tensor"):
        if not hasattr(dist, name):
            continue
        real = getattr(dist, name)

        def counting(output, input, *args, _real=real, **kwargs):
            counted.append(input.numel() * input.element_size())
            return _real(output, input, *args, **kwargs)

        setattr(dist, name, counting)
    return counted


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fp8")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)

    device, mesh = init_distributed()
    rank = dist.get_rank()
    counted = count_all_gather_bytes()

    wire = {}
    for label, recipe in (("fp32", None), (args.recipe, RECIPES[args.recipe])):
        model = make_model().to(device)
        if recipe is not None:
            breccia.convert(model, recipe, mode="training")  # before sharding: FSDP2 must see TrainingWeights
        shard(model, mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator(device=device).manual_seed(rank)
        for step in range(args.steps):
            counted.clear()
            if recipe is not None:
                breccia.precompute_scales(model)  # one amax all-reduce for every tensorwise weight
            x = torch.randn(32, 256, device=device, generator=g)
            loss = (model(x) - x).square().mean()  # learn the identity
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step == 0:
                wire[label] = sum(counted)
            if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
                print(f"{label:8s} step {step:3d}  loss {loss.item():.4f}")
    if rank == 0:
        ratio = wire[args.recipe] / wire["fp32"]
        print(f"\nall-gather bytes per rank, first step: fp32 {wire['fp32']:,}  {args.recipe} {wire[args.recipe]:,}  ({ratio:.3f}x)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
