"""Bridges: ScaledTensor <-> other libraries' and checkpoints' formats
(DeepSeek-V3, compressed-tensors, torchao, TransformerEngine, DLPack).
Each bridge is bit-exact in both directions; see ``DESIGN.md`` section 7."""
