"""One page that sums up ``make demo``: ``experiments/demo/REPORT.md`` and ``summary.json``.

    python -m demo.report [--out experiments/demo]

Every figure is read from the files the demo's runs wrote (checkpoints' metrics, the JSON
results of the test, SVM, few-shot, segmentation and t-SNE commands, the stage timings);
nothing is typed in. A source that is missing (its stage not run yet) is reported as such, with
the file it was looked for in, and the report lists it under "Not run". The pictures
(reconstructions, t-SNE, curves, segmented shapes) are copied next to the report, with an
accuracy bar chart (pre-trained vs scratch per task), so the folder stands on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from utils.checkpoint import atomic_write, write_json

# Where the demo's runs write (the Makefile's targets use the same paths).
PRETRAIN_DIR = os.path.join("experiments", "pretrain_demo", "demo")
FINETUNE_DIR = os.path.join("experiments", "finetune_demo", "demo")
SCRATCH_DIR = os.path.join("experiments", "finetune_demo", "demo_scratch")
FEWSHOT_DIR = os.path.join("experiments", "fewshot_demo")
SEG_DIR = os.path.join("segmentation", "log", "part_seg", "demo")
SEG_SCRATCH_DIR = os.path.join("segmentation", "log", "part_seg", "demo_scratch")
DEMO_DIR = os.path.join("experiments", "demo")

SOURCES = {
    "pretrain": os.path.join(PRETRAIN_DIR, "ckpt-last.pth"),
    "finetune_pretrained": os.path.join(FINETUNE_DIR, "ckpt-best.pth"),
    "finetune_scratch": os.path.join(SCRATCH_DIR, "ckpt-best.pth"),
    "vote": os.path.join("experiments", "finetune_demo", "test_demo", "test_results.json"),  # --test: test_<exp_name>
    "svm_pretrained": os.path.join(DEMO_DIR, "svm_pretrained.json"),
    "svm_random": os.path.join(DEMO_DIR, "svm_random_init.json"),
    "fewshot_pretrained": os.path.join(FEWSHOT_DIR, "demo_5w10s_summary.json"),
    "fewshot_scratch": os.path.join(FEWSHOT_DIR, "demo_scratch_5w10s_summary.json"),
    "seg_pretrained": os.path.join(SEG_DIR, "test_results.json"),
    "seg_scratch": os.path.join(SEG_SCRATCH_DIR, "test_results.json"),
    "tsne_pretrained": os.path.join(PRETRAIN_DIR, "tsne.json"),
    "tsne_random": os.path.join(DEMO_DIR, "tsne_random_init.json"),
    "timings": os.path.join(DEMO_DIR, "timings.json"),
}
PICTURES = {
    "reconstructions": os.path.join(PRETRAIN_DIR, "vis", "reconstructions.png"),
    "tsne": os.path.join(PRETRAIN_DIR, "tsne.png"),
    "tsne_random": os.path.join(DEMO_DIR, "tsne_random_init.png"),
    "curves": os.path.join(PRETRAIN_DIR, "curves.png"),
    "segmentation": os.path.join(SEG_DIR, "predictions.png"),
}


@dataclass
class Sources:
    """Reads the demo's outputs; remembers what was missing."""

    root: str = "."
    missing: List[str] = field(default_factory=list)

    def path(self, key: str) -> str:
        return os.path.join(self.root, SOURCES[key])

    def json(self, key: str) -> Optional[Dict[str, Any]]:
        path = self.path(key)
        if not os.path.isfile(path):
            self.missing.append(SOURCES[key])
            return None
        with open(path) as f:
            return json.load(f)

    def checkpoint(self, key: str) -> Optional[Dict[str, Any]]:
        """The plain-number part of a checkpoint (epoch, metrics, best_metrics)."""
        path = self.path(key)
        if not os.path.isfile(path):
            self.missing.append(SOURCES[key])
            return None
        from utils.checkpoint import load_checkpoint_file

        ckpt = load_checkpoint_file(path)  # the one reader: weights-only, a refusal is one line naming the file
        return {"epoch": int(ckpt.get("epoch", -1)), "metrics": dict(ckpt.get("metrics") or {}),
                "best_metrics": dict(ckpt.get("best_metrics") or {})}


def machine() -> Dict[str, Any]:
    """Cores, CPU model, GPU (if any) and versions of the machine the report is written on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__}


def _get(d: Optional[Dict[str, Any]], *keys: str) -> Optional[float]:
    for key in keys:
        if d is None or key not in d or d[key] is None:
            return None
        d = d[key]
    return float(d)


def collect(root: str = ".") -> Tuple[Dict[str, Any], List[str]]:
    """summary dict (the figures of summary.json) and the list of missing source files."""
    src = Sources(root)
    pre = src.checkpoint("pretrain")
    ft, scratch = src.checkpoint("finetune_pretrained"), src.checkpoint("finetune_scratch")
    vote = src.json("vote")
    svm_pre, svm_rand = src.json("svm_pretrained"), src.json("svm_random")
    fs_pre, fs_scr = src.json("fewshot_pretrained"), src.json("fewshot_scratch")
    seg_pre, seg_scr = src.json("seg_pretrained"), src.json("seg_scratch")
    tsne_pre, tsne_rand = src.json("tsne_pretrained"), src.json("tsne_random")
    timings = src.json("timings") or {}
    summary = {
        "machine": machine(),
        "pretraining": {"epochs": None if pre is None else pre["epoch"] + 1,
                        "val_loss_rec_last": _get(pre, "metrics", "val_loss_rec"),
                        "train_loss_rec_last": _get(pre, "metrics", "train_loss_rec")},
        "classification": {"pretrained_acc": _get(ft, "best_metrics", "acc"),
                           "scratch_acc": _get(scratch, "best_metrics", "acc"),
                           "vote_acc": _get(vote, "vote_acc"), "test_acc": _get(vote, "acc"),
                           "vote_passes": _get(vote, "voting", "times")},
        "svm": {"pretrained_acc": _get(svm_pre, "acc"), "random_init_acc": _get(svm_rand, "acc"),
                "C": _get(svm_pre, "C")},
        "fewshot": {"setting": "5-way 10-shot",
                    "pretrained_mean": _get(fs_pre, "mean"), "pretrained_std": _get(fs_pre, "std"),
                    "scratch_mean": _get(fs_scr, "mean"), "scratch_std": _get(fs_scr, "std"),
                    "folds": None if fs_pre is None else len(fs_pre.get("accuracy", {}))},
        "segmentation": {"pretrained_instance_miou": _get(seg_pre, "instance_avg_iou"),
                         "pretrained_class_miou": _get(seg_pre, "class_avg_iou"),
                         "scratch_instance_miou": _get(seg_scr, "instance_avg_iou"),
                         "scratch_class_miou": _get(seg_scr, "class_avg_iou")},
        "tsne_knn": {"pretrained_acc": _get(tsne_pre, "knn_acc"), "random_init_acc": _get(tsne_rand, "knn_acc")},
        "minutes": {name: round(seconds / 60.0, 2) for name, seconds in timings.items()},
    }
    summary["minutes_total"] = round(sum(summary["minutes"].values()), 2)
    return summary, src.missing


def _fmt(value: Optional[float], digits: int = 1, scale: float = 1.0) -> str:
    return "not run" if value is None else f"{value * scale:.{digits}f}"


def table_rows(s: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """(task, pre-trained, scratch / random init, what is compared) rows of the report's table."""
    c, svm, fs, seg, tk = s["classification"], s["svm"], s["fewshot"], s["segmentation"], s["tsne_knn"]
    fs_pre = "not run" if fs["pretrained_mean"] is None else f"{fs['pretrained_mean']:.1f} ± {fs['pretrained_std']:.1f}"
    fs_scr = "not run" if fs["scratch_mean"] is None else f"{fs['scratch_mean']:.1f} ± {fs['scratch_std']:.1f}"
    return [
        ("Fine-tuning on the demo ModelNet (accuracy %)", _fmt(c["pretrained_acc"]), _fmt(c["scratch_acc"]),
         "same model and schedule, encoder pre-trained vs random init"),
        ("  with voting (accuracy %)", _fmt(c["vote_acc"]), "",
         f"{'several' if c['vote_passes'] is None else int(c['vote_passes'])} augmented passes of the best checkpoint, logits averaged"),
        ("Linear SVM on frozen features (accuracy %)", _fmt(svm["pretrained_acc"]), _fmt(svm["random_init_acc"]),
         "frozen encoder: pre-trained vs as initialised for pre-training (released init)"),
        (f"Few-shot {fs['setting']} (accuracy %, mean ± std over {fs['folds'] or 'the'} folds)", fs_pre, fs_scr,
         "fine-tuned per fold from the pre-trained vs random encoder"),
        ("Part segmentation, instance mIoU", _fmt(seg["pretrained_instance_miou"], 3),
         _fmt(seg["scratch_instance_miou"], 3), "same head and schedule"),
        ("Part segmentation, class mIoU", _fmt(seg["pretrained_class_miou"], 3), _fmt(seg["scratch_class_miou"], 3), ""),
        ("t-SNE features, leave-one-out 5-NN accuracy %", _fmt(tk["pretrained_acc"]), _fmt(tk["random_init_acc"]),
         "frozen features of the test shapes: pre-trained vs the classifier as initialised for scratch training"),
    ]


def bar_chart(s: Dict[str, Any], path: str) -> Optional[str]:
    """Pre-trained vs scratch (or random init) per task, in percent; None when nothing ran."""
    c, svm, fs, seg, tk = s["classification"], s["svm"], s["fewshot"], s["segmentation"], s["tsne_knn"]
    tasks = [("fine-tune", c["pretrained_acc"], c["scratch_acc"]),
             ("linear SVM", svm["pretrained_acc"], svm["random_init_acc"]),
             ("few-shot 5w10s", fs["pretrained_mean"], fs["scratch_mean"]),
             ("part seg.\ninst. mIoU x100", _scaled(seg["pretrained_instance_miou"]), _scaled(seg["scratch_instance_miou"])),
             ("5-NN on\nfeatures", tk["pretrained_acc"], tk["random_init_acc"])]
    tasks = [t for t in tasks if t[1] is not None or t[2] is not None]
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.6))
    xs = range(len(tasks))
    width = 0.38
    for offset, idx, label, color in ((-width / 2, 1, "pre-trained", "#1f77b4"), (width / 2, 2, "scratch / random init", "#bbbbbb")):
        values = [t[idx] if t[idx] is not None else 0.0 for t in tasks]
        bars = ax.bar([x + offset for x in xs], values, width, label=label, color=color)
        for bar, t in zip(bars, tasks):
            text = "n/a" if t[idx] is None else f"{t[idx]:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([t[0] for t in tasks], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)  # headroom above 100 for the legend
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    ax.set_title("Demo: what pre-training buys (higher is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scaled(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def render_markdown(s: Dict[str, Any], missing: List[str], pictures: Dict[str, str], chart: Optional[str]) -> str:
    m = s["machine"]
    device = m["gpu"] or "no GPU"
    lines = ["# Inter-MAE demo report", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {device}; Python {m['python']}, PyTorch {m['torch']}. "
             f"Total time of the stages: {s['minutes_total']:.1f} min.", "",
             "Every figure below is read from the runs' own outputs (checkpoints and result files); "
             "`summary.json` holds the same figures.", "",
             "| Task | Pre-trained | Scratch / random init | Compared |", "|---|---|---|---|"]
    lines += [f"| {task} | {a} | {b} | {note} |" for task, a, b, note in table_rows(s)]
    p = s["pretraining"]
    lines += ["", f"Pre-training: {p['epochs'] if p['epochs'] is not None else 'not run'} epochs, final validation "
              f"reconstruction loss (Chamfer L2) {_fmt(p['val_loss_rec_last'], 5)}.", ""]
    if chart:
        lines += ["![accuracy: pre-trained vs scratch](accuracy.png)", ""]
    captions = {"reconstructions": "Masked reconstructions (input | visible patches | reconstruction)",
                "tsne": "t-SNE of the pre-trained encoder's features (test shapes)",
                "tsne_random": "t-SNE of a randomly initialised encoder's features (same shapes)",
                "curves": "Pre-training curves", "segmentation": "Part segmentation: predictions on test shapes"}
    for key, name in pictures.items():
        lines += [f"## {captions[key]}", "", f"![{captions[key]}]({name})", ""]
    if s["minutes"]:
        lines += ["## Time per stage", "", "| Stage | Minutes |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in s["minutes"].items()] + [""]
    if missing:
        lines += ["## Not run", ""] + [f"- `{path}` was not found" for path in missing] + [""]
    return "\n".join(lines)


def write_report(out_dir: str = DEMO_DIR, root: str = ".") -> Tuple[str, Dict[str, Any], List[str]]:
    """Write REPORT.md, summary.json, accuracy.png and copies of the pictures to ``out_dir``."""
    summary, missing = collect(root)
    os.makedirs(out_dir, exist_ok=True)
    pictures = {}
    for key, rel in PICTURES.items():
        src = os.path.join(root, rel)
        if os.path.isfile(src):
            name = f"{key}.png"
            shutil.copyfile(src, os.path.join(out_dir, name))
            pictures[key] = name
    chart = bar_chart(summary, os.path.join(out_dir, "accuracy.png"))
    write_json(os.path.join(out_dir, "summary.json"), summary)
    report = os.path.join(out_dir, "REPORT.md")
    text = render_markdown(summary, missing, pictures, chart).encode()
    atomic_write(report, lambda f: f.write(text))
    return report, summary, missing


def console_table(s: Dict[str, Any]) -> str:
    rows = [("Task", "Pre-trained", "Scratch/random")] + [(t, a, b) for t, a, b, _ in table_rows(s)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.report",
                                 description="Sum up the demo's runs in REPORT.md, summary.json and accuracy.png.")
    ap.add_argument("--out", default=DEMO_DIR, help="output folder (default %(default)s)")
    ap.add_argument("--root", default=".", help="the checkout the demo ran in (default: the current folder)")
    args = ap.parse_args(argv)
    report, summary, missing = write_report(args.out, args.root)
    print(console_table(summary))
    print(f"Stages took {summary['minutes_total']:.1f} min in all. Report: {report}")
    if missing:
        print(f"Not run yet ({len(missing)} results missing): " + ", ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":
    from utils.cli import run_main

    sys.exit(run_main(main))
