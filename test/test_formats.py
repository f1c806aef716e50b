"""Element and scale formats against oracles: torch's own casts and ml_dtypes."""

import ml_dtypes
import numpy as np
import pytest
import torch

from breccia import formats


def test_e2m1_decode_matches_ml_dtypes():
    codes = torch.arange(16, dtype=torch.uint8)
    ref = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    # ml_dtypes stores one e2m1 per byte in the low nibble
    ours = formats.decode_e2m1(codes).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_e2m1_encode_matches_ml_dtypes_rne():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([
        torch.randn(20000, generator=g) * 3,
        torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 6.0, 7.0, 1e9, -1e9, 0.0, -0.0]),
    ])
    ours = formats.encode_e2m1(x)
    xs = torch.clamp(x, -6, 6).numpy()  # ml_dtypes saturates too, but be explicit
    ref = xs.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_e8m0_decode_matches_ml_dtypes():
    b = torch.arange(256, dtype=torch.uint8)
    ours = formats.decode_e8m0(b.view(torch.float8_e8m0fnu)).numpy()
    ref = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    np.testing.assert_array_equal(ours[:255], ref[:255])
    assert np.isnan(ours[255]) and np.isnan(ref[255])
    assert ours[0] == 2.0**-127 and ours[254] == 2.0**127


def test_e8m0_decode_matches_torch_cast():
    b = torch.arange(255, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    torch.testing.assert_close(formats.decode_e8m0(b), b.to(torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_fp8_encode_saturates_and_rounds_like_torch(name):
    fmt = formats.element_format(name)
    x = torch.cat([torch.randn(10000) * fmt.max / 4, torch.tensor([1e30, -1e30, fmt.max * 1.01, -fmt.max * 2])])
    q = formats.encode_fp8(x, fmt)
    assert torch.isfinite(q.float()).all()
    assert q.float().abs().max() == fmt.max
    inside = x.abs() <= fmt.max
    # torch's own RNE cast is the oracle inside the range
    assert torch.equal(q[inside].view(torch.uint8), x[inside].to(fmt.storage).view(torch.uint8))
    np.testing.assert_array_equal(
        q.view(torch.uint8).numpy(),
        np.clip(x.numpy(), -fmt.max, fmt.max).astype(
            ml_dtypes.float8_e4m3fn if name == "e4m3" else ml_dtypes.float8_e5m2
        ).view(np.uint8),
    )


def test_fp8_encode_keeps_nan():
    q = formats.encode_fp8(torch.tensor([float("nan"), 1.0]), formats.element_format("e5m2"))
    assert torch.isnan(q.float()[0]) and q.float()[1] == 1.0


def test_int4_signed_and_unsigned_codes():
    x = torch.tensor([-9.0, -8.0, -7.5, -0.5, 0.5, 1.5, 2.5, 7.0, 7.49, 100.0])
    q = formats.encode_int4(x, signed=True)
    back = formats.decode_int4(q, signed=True)
    assert back.tolist() == [-8, -8, -8, -0.0, 0, 2, 2, 7, 7, 7]
    u = formats.encode_int4(x + 8, signed=False)
    assert formats.decode_int4(u, signed=False).tolist() == [0, 0, 0, 8, 8, 10, 10, 15, 15, 15]


def test_pack_nibbles_even_element_low_nibble():
    codes = torch.tensor([[1, 2, 3, 4, 5]], dtype=torch.uint8)
    packed = formats.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x43, 0x05]]
    assert torch.equal(formats.unpack_nibbles(packed, 5), codes)


@pytest.mark.parametrize("kind", ["e2m1", "int4"])
def test_stochastic_rounding_is_reproducible_and_unbiased(kind):
    x = torch.full((200000,), 1.2)  # between 1.0 and 1.5 in e2m1, between 1 and 2 in int4
    noise = lambda seed: formats.rounding_noise(x.shape, x.device, torch.Generator().manual_seed(seed))
    if kind == "e2m1":
        enc = lambda n: formats.decode_e2m1(formats.encode_e2m1(x, n))
    else:
        enc = lambda n: formats.decode_int4(formats.encode_int4(x, signed=True, noise=n), signed=True)
    a, b, c = enc(noise(0)), enc(noise(0)), enc(noise(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= ({1.0, 1.5} if kind == "e2m1" else {1.0, 2.0})
    assert abs(a.mean().item() - 1.2) < 0.005  # unbiased in expectation


def test_unknown_format_names_raise():
    with pytest.raises(ValueError, match="element format"):
        formats.element_format("e3m4")
    with pytest.raises(ValueError, match="scale format"):
        formats.scale_dtype("fp64")
