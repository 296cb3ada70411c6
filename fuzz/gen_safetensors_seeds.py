#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors (fuzz/corpus/fuzz_safetensors/): a few small
valid files (a PEFT-like LoRA pair, every supported dtype, an empty and a scalar tensor,
metadata, header padding). Run from the repository root:
python3 fuzz/gen_safetensors_seeds.py"""
import json
import os
import struct

OUT = "fuzz/corpus/fuzz_safetensors"
SIZE = {"F32": 4, "F16": 2, "BF16": 2}


def safetensors(tensors, metadata=None, pad=0):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        size = n * SIZE[dtype]
        offsets = [len(data), len(data) + size]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        data += bytes((i * 29 + 5) & 255 for i in range(size))
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def main():
    os.makedirs(OUT, exist_ok=True)
    pre = "base_model.model.model.layers.0.self_attn."
    files = {
        "lora_pair.safetensors": safetensors(
            [(pre + "q_proj.lora_A.weight", "F32", [2, 8]),
             (pre + "q_proj.lora_B.weight", "F32", [8, 2])], {"format": "pt"}, pad=4),
        "dtypes.safetensors": safetensors(
            [("a", "F16", [3, 2]), ("b", "BF16", [4]), ("c", "F32", [1, 1, 2])]),
        "edge.safetensors": safetensors([("scalar", "F32", []), ("empty", "F16", [0, 4])],
                                        {"k": "v", "x": ""}),
        "empty_header.safetensors": safetensors([]),
    }
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
