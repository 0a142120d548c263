#!/usr/bin/env python3
"""Straightforward numpy + OpenBLAS implementation of the same update as `eraser unlearn` (removals only).

The baseline of `eraser bench engine`: loads the whole cache as float32, forms the active rows, solves
H'x = b by Woodbury with a float32 Gram (numpy's fastest plain route) and a float64 Cholesky, and writes
the adapter with the updated tensors. Prints one JSON line: seconds, peakMemoryBytes, blas.
Needs Debian's python3-numpy (libopenblas0-pthread provides the BLAS).
"""
import argparse
import json
import os
import resource
import shutil
import struct
import sys
import time

import numpy as np


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def read_tensor(path, name):
    meta, start = header(path)
    entry = meta[name]
    begin, end = entry["data_offsets"]
    raw = np.fromfile(path, dtype=np.uint8, count=end - begin, offset=start + begin)
    dtype = entry["dtype"]
    if dtype == "F32":
        values = raw.view(np.float32)
    elif dtype == "F16":
        values = raw.view(np.float16).astype(np.float32)
    elif dtype == "BF16":
        values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        raise SystemExit(f"unsupported dtype {dtype}")
    return values.reshape(entry["shape"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--remove-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()

    with open(os.path.join(args.cache, "cache.json")) as f:
        cache = json.load(f)
    params = cache["parameters"]
    l2 = float(cache.get("l2", 0.0))
    ids, grads, curv = [], [], []
    for shard in cache["shards"]:
        with open(os.path.join(args.cache, shard["ids"]), encoding="utf-8") as f:
            ids += f.read().splitlines()
        path = os.path.join(args.cache, shard["file"])
        meta, _ = header(path)
        grads.append(read_tensor(path, "gradients"))
        curv.append(read_tensor(path, "curvature") if "curvature" in meta else None)
    G = np.concatenate(grads)
    C = G if curv[0] is None else np.concatenate(curv)
    index = {s: i for i, s in enumerate(ids)}
    with open(args.remove_file, encoding="utf-8") as f:
        removed = [index[line.rstrip("\r\n")] for line in f if line.strip()]

    b = G[removed].astype(np.float64).sum(axis=0)
    active = np.ones(len(ids), dtype=bool)
    active[removed] = False
    CA = C[active]
    P = C.shape[1]
    damping = 0.0 if l2 > 0 else 0.1 * float(np.einsum("ij,ij->", CA, CA, dtype=np.float64)) / P
    lam = l2 + damping
    K = (CA @ CA.T).astype(np.float64)
    K[np.diag_indices_from(K)] += lam
    L = np.linalg.cholesky(K)
    rhs = (CA @ b.astype(np.float32)).astype(np.float64)
    y = np.linalg.solve(L.T, np.linalg.solve(L, rhs))
    x = (b - (CA.T @ y.astype(np.float32)).astype(np.float64)) / lam

    os.makedirs(args.out)
    shutil.copyfile(os.path.join(args.adapter, "adapter_config.json"), os.path.join(args.out, "adapter_config.json"))
    src = os.path.join(args.adapter, "adapter_model.safetensors")
    dst = os.path.join(args.out, "adapter_model.safetensors")
    shutil.copyfile(src, dst)
    meta, start = header(src)
    offset = 0
    with open(dst, "r+b") as f:
        for p in params:
            count = int(np.prod(p["shape"]))
            entry = meta[p["name"]]
            if entry["dtype"] != "F32":
                raise SystemExit("baseline writes F32 adapters only")
            theta = read_tensor(src, p["name"]).reshape(-1).astype(np.float64) + x[offset:offset + count]
            f.seek(start + entry["data_offsets"][0])
            f.write(theta.astype(np.float32).tobytes())
            offset += count

    with open("/proc/self/maps") as maps:
        blas = sorted({line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line})
    print(json.dumps({
        "seconds": time.perf_counter() - started,
        "peakMemoryBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "blas": f"numpy {np.__version__}: {', '.join(os.path.basename(b) for b in blas)}",
    }))


if __name__ == "__main__":
    sys.exit(main())
