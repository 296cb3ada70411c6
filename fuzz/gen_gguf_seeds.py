#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_gguf (fuzz/corpus/fuzz_gguf/): a few small, valid GGUF
files that together use every value type, string arrays, several tensor types and ranks,
a non-default alignment, version 2 and a file without tensors. Run from the repository
root: python3 fuzz/gen_gguf_seeds.py"""
import os
import struct

OUT = "fuzz/corpus/fuzz_gguf"
FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 12: (256, 144), 30: (1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == 8:
        return gstr(v)
    if t == 9:
        at, items = v
        return struct.pack("<IQ", at, len(items)) + b"".join(value(at, x) for x in items)
    return struct.pack("<" + FMT[t], v)


def gguf(kvs, tensors, version=3, align=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + value(t, v)
    off, blobs = 0, []
    for name, ttype, ne in tensors:
        blk, bb = BLOCK[ttype]
        n = 1
        for d in ne:
            n *= d
        size = n // blk * bb
        out += gstr(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        out += struct.pack("<IQ", ttype, off)
        blobs.append((off, bytes((i * 37 + 11) & 255 for i in range(size))))
        off = (off + size + align - 1) // align * align
    out += b"\0" * (-len(out) % align)
    data = bytearray(off)
    for o, b in blobs:
        data[o:o + len(b)] = b
    return out + bytes(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    every = [
        ("u8", 0, 200), ("i8", 1, -3), ("u16", 2, 60000), ("i16", 3, -2),
        ("u32", 4, 7), ("i32", 5, -7), ("f32", 6, 0.5), ("bool", 7, 1),
        ("str", 8, "hello"), ("u64", 10, 2**40), ("i64", 11, -2**40), ("f64", 12, 0.25),
        ("arr.f32", 9, (6, [1.0, 2.0, 3.0])), ("arr.str", 9, (8, ["a", "", "\u2581b"])),
        ("arr.bool", 9, (7, [0, 1])), ("arr.empty", 9, (4, [])),
    ]
    files = {
        "every_type.gguf": gguf(every, [("f", 0, [4]), ("q8", 8, [32, 2]),
                                        ("h", 1, [2, 1, 3, 1]), ("k", 12, [256])]),
        "align64.gguf": gguf([("general.alignment", 4, 64)], [("a", 0, [3]), ("b", 30, [5])],
                             align=64),
        "v2_no_tensors.gguf": gguf([("general.name", 8, "x")], [], version=2),
        "tiny_llama.gguf": gguf([
            ("general.architecture", 8, "llama"), ("llama.embedding_length", 4, 32),
            ("llama.block_count", 4, 1), ("tokenizer.ggml.model", 8, "llama"),
            ("tokenizer.ggml.tokens", 9, (8, ["<unk>", "<s>", "</s>", "a", "b"])),
            ("tokenizer.ggml.scores", 9, (6, [0.0, 0.0, 0.0, -1.0, -2.0])),
            ("tokenizer.ggml.token_type", 9, (5, [2, 3, 3, 1, 1])),
        ], [("token_embd.weight", 2, [32, 5]), ("blk.0.attn_norm.weight", 0, [32])]),
    }
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
