"""Peak memory and time of `losses.pixel_segment_loss` forward + backward at full scale.

A dense float32 P x S similarity matrix would need P * S * 4 bytes (5.2 GB for 65,536 pixels
against 20,000 prototypes, 21 GB for 262,144); the blockwise loss must stay far below that.
Each size runs in a fresh child process, so the peak RSS it reports (``ru_maxrss`` of the
child, minus the peak it had before the loss) is the loss's own and no other run's:

    python benchmarks/loss_memory.py                         # 65,536 and 262,144 x 20,000
    python benchmarks/loss_memory.py --pixels 65536 --csv /tmp/loss_memory.csv
    python benchmarks/loss_memory.py --device cuda           # peak CUDA memory instead

Targets: under 3 GiB for 65,536 x 20,000 and a 24 GiB machine for 262,144 x 20,000.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time


def child(num_pixels, num_prototypes, dim, reduction, device):
    """Run one forward + backward and print a JSON line with memory and seconds."""
    import torch
    import torch.nn.functional as F

    from spml_lab.method.losses import pixel_segment_loss

    torch.manual_seed(0)
    v = F.normalize(torch.randn(num_pixels, dim, device=device), dim=1).requires_grad_()
    u = F.normalize(torch.randn(num_prototypes, dim, device=device), dim=1).requires_grad_()
    labels = torch.randint(0, 21, (num_pixels,), device=device)
    plabels = torch.randint(0, 21, (num_prototypes,), device=device)
    seg = torch.randint(0, num_prototypes, (num_pixels,), device=device)
    # warm-up on a few pixels: library initialisation is not the loss's memory
    pixel_segment_loss(v[:64], labels[:64], seg[:64], u, plabels, 12.0, reduction).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    loss = pixel_segment_loss(v, labels, seg, u, plabels, 12.0, reduction)
    forward = time.perf_counter() - start
    loss.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "pixels": num_pixels,
        "prototypes": num_prototypes,
        "dim": dim,
        "reduction": reduction,
        "device": device,
        "forward_s": round(forward, 2),
        "forward_backward_s": round(seconds, 2),
        "peak_rss_gib": round(after / 2**20, 3),
        "rss_increase_gib": round((after - before) / 2**20, 3),
        "dense_matrix_gib": round(num_pixels * num_prototypes * 4 / 2**30, 2),
        "finite": bool(torch.isfinite(loss).all() and torch.isfinite(v.grad).all()),
    }
    if device == "cuda":
        result["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, nargs="*", default=[65_536, 262_144])
    parser.add_argument("--prototypes", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reduction", default="mean", choices=["mean", "sum", "none"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.pixels[0], args.prototypes, args.dim, args.reduction, args.device)
        return
    rows = []
    for num_pixels in args.pixels:
        command = [sys.executable, __file__, "--child", "--pixels", str(num_pixels)]
        command += ["--prototypes", str(args.prototypes), "--dim", str(args.dim)]
        command += ["--reduction", args.reduction, "--device", args.device]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
