"""Part-segmentation training throughput (samples/s) on the current device, and the model size.

    python bench/bench_segmentation.py                       # released model, batch 16, 2048 points
    python bench/bench_segmentation.py --device cuda --amp   # bf16 autocast
    python bench/bench_segmentation.py --trans_dim 192 --depth 6 --num_heads 3 --batch_size 4 --iters 3   # quick CPU look

One timed iteration = forward, loss, backward, gradient clipping and one AdamW step on random
clouds (labels uniform over each category's parts), as in segmentation/main.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

import torch  # noqa: E402

from datasets.ShapeNetPartDataset import CATEGORIES, SEG_CLASSES  # noqa: E402
from engine.builder import add_weight_decay  # noqa: E402
from engine.partseg import get_loss, random_scale_shift  # noqa: E402
from models.PartSegTransformer import PartSegTransformer  # noqa: E402
from utils.misc import resolve_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--npoint", type=int, default=2048)
    p.add_argument("--trans_dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--num_heads", type=int, default=6)
    p.add_argument("--num_group", type=int, default=128)
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument("--patch_embed", default="inter_mae", choices=["inter_mae", "point_mae"])
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    args = p.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = PartSegTransformer(trans_dim=args.trans_dim, depth=args.depth, num_heads=args.num_heads,
                               num_group=args.num_group, group_size=args.group_size, patch_embed=args.patch_embed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.", "pos_embed.", "blocks.", "norm.")))
    optimizer = torch.optim.AdamW(add_weight_decay(model, 0.05), lr=2e-4)
    B, N = args.batch_size, args.npoint
    points = torch.randn(B, N, 3, device=device)
    points = points / points.norm(dim=-1).amax(dim=1, keepdim=True).unsqueeze(-1)
    category = torch.randint(0, len(CATEGORIES), (B,), device=device)
    target = torch.stack([torch.tensor(SEG_CLASSES[CATEGORIES[c]], device=device)[torch.randint(
        0, len(SEG_CLASSES[CATEGORIES[c]]), (N,), device=device)] for c in category.tolist()])
    model.train()

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(random_scale_shift(points), category)
        loss = get_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; amp: {args.amp}; batch {B} x {N} points; {args.num_group} x {args.group_size} patches; "
          f"width {args.trans_dim}, depth {args.depth}, {args.num_heads} heads, {args.patch_embed} patch embedding")
    print(f"parameters: {n_params / 1e6:.2f} M (encoder {n_encoder / 1e6:.2f} M, head {(n_params - n_encoder) / 1e6:.2f} M)")
    print(f"training: {B * args.iters / elapsed:.2f} samples/s ({elapsed / args.iters * 1000:.0f} ms/iteration over {args.iters})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
