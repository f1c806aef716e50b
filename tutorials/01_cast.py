"""The first five minutes with breccia: cast, inspect, dequantize, compile.

Run: python tutorials/01_cast.py   (CPU is fine)
"""

import numpy as np
import torch

import breccia

torch.manual_seed(0)
w = torch.randn(1024, 1024, dtype=torch.bfloat16) * 0.02

# 1. One type for every format: a ScaledTensor is a torch.Tensor of the
#    original shape and dtype, holding payload + scales.
for recipe in (
    breccia.Float8CurrentScaling(granularity="row"),
    breccia.Float8BlockScaling(),
    breccia.MXFP8BlockScaling(),
    breccia.NVFP4BlockScaling(),
    breccia.INT4Scaling(group_size=128),
):
    st = breccia.cast(w, recipe, role="weight")
    err = (breccia.dequantize(st, torch.float32) - w.float()).norm() / w.float().norm()
    print(f"{recipe.name:22s} {st.bits_per_element():6.3f} bits/elem  rel. error {err:.4f}")
    print("   ", st)

# 2. What each role of a recipe means, exactly.
print(breccia.Float8BlockScaling().spec("input"))
print(breccia.Float8BlockScaling().spec("weight"))

# 3. Recipes serialise to JSON (they travel in checkpoint metadata).
text = breccia.NVFP4BlockScaling(stochastic_rounding=True).to_json()
assert breccia.recipe_from_json(text) == breccia.NVFP4BlockScaling(stochastic_rounding=True)

# 4. Any DLPack array casts directly: NumPy here, JAX and MLX alike.
st = breccia.cast(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), breccia.MXFP8BlockScaling())
print("from NumPy:", st.qdata.shape, st.scale.shape)

# 5. cast -> dequantize compiles as one graph, with the same bits as eager.
f = torch.compile(lambda x: breccia.dequantize(breccia.cast(x, breccia.MXFP8BlockScaling())), fullgraph=True)
assert torch.equal(f(w), breccia.dequantize(breccia.cast(w, breccia.MXFP8BlockScaling())))
print("compiled round trip: bit-identical to eager")

# 6. A precomputed amax: NVFP4's global scale (or a tensorwise FP8 scale)
#    from a calibrated amax instead of each tensor's own. With the tensor's
#    own amax the bits are the same; on CUDA the cast then reads x once
#    instead of twice (no amax pass), as a serving stack with a calibrated
#    input scale would use it.
nvfp4 = breccia.NVFP4BlockScaling()
acts = [torch.randn(64, 1024) for _ in range(4)]
calibrated = torch.stack([a.abs().amax() for a in acts]).amax()  # over calibration batches
x = acts[0]
fixed = breccia.cast(x, nvfp4, role="input", amax=calibrated)
own = breccia.cast(x, nvfp4, role="input", amax=x.abs().amax())
dynamic = breccia.cast(x, nvfp4, role="input")
assert torch.equal(own.qdata, dynamic.qdata) and torch.equal(own.global_scale, dynamic.global_scale)
print("calibrated global scale:", fixed.global_scale.item(), " own:", own.global_scale.item())
