"""The warm-start effect: the warm-started encoder-decoder against the same architecture from random weights.

Reads pairs of runs (by default the pair `make demo-warmstart` trains: runs/warmstart with MiniLM-L6's
weights in the decoder and runs/warmstart-random, `--init random`, every decoder weight
re-initialised; both on features.h5's frozen ImageNet EfficientNet-Lite0 tokens), checks that
their test metrics are current, that both were selected on validation and that the two runs of a
pair differ in their initialisation only (same epochs, seed, learning rates and data), and writes
  bench/results/warmstart.csv / .md     test metrics side by side, with each run's best validation scores
  bench/results/warmstart_curves.png    validation BLEU-4, CE micro-F1 and training loss per epoch
The table also gives each run's mean token cross-entropy on the split's reference reports with each
study's own images and with the next study's (`image_reliance`): how well the decoder predicts the
reports, and how much of that it owes to the images.
Usage: python bench/warmstart.py [--artifacts artifacts] [--dataset demo] [--split test]
                                 [--pair WARM RANDOM ...]   (more pairs: other seeds or learning rates)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, evaluated_run, machine, write_table
from stages.evaluation.table import comparison_table
from stages.training.inference import image_reliance

DEFAULT_PAIR = ("warmstart", "warmstart-random")
COLUMNS = ["pair", "init", "run", "seed", "lr", "studies", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
           "ROUGE-L", "CIDEr", "CE micro F1", "CE macro F1", "CE example F1", "best epoch", "best val BLEU-4",
           "best val CE micro F1", "token CE own images", "token CE swapped images"]
# settings that must agree for a comparison of initialisation only
SAME = ("train", "visual", "targets", "labels", "generator")


def epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's log.jsonl (the last record of each epoch, if it was resumed)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return list({r["epoch"]: r for r in records if r["event"] == "epoch"}.values())


def plot(histories: dict[str, list[dict[str, Any]]], inits: dict[str, str], path: Path) -> None:
    """One line per run: colour by initialisation, line style by pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    styles = ("-", "--", ":", "-.")
    for i, (name, history) in enumerate(histories.items()):
        x = [h["epoch"] for h in history]
        colour = "tab:blue" if inits[name] == "pretrained" else "tab:orange"
        for axis, key in zip(axes, ("val_bleu4", "val_ce_f1", "train_loss")):
            axis.plot(x, [h[key] for h in history], marker="o", markersize=3, color=colour,
                      linestyle=styles[(i // 2) % len(styles)], label=name)
    for axis, title in zip(axes, ("validation BLEU-4", "validation CE micro-F1 (rules)", "training loss")):
        axis.set(xlabel="epoch", title=title)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("WARM", "RANDOM"),
                        help="a warm-started run and its --init random twin [default: warmstart warmstart-random]")
    args = parser.parse_args()
    pairs = [tuple(pair) for pair in args.pair] if args.pair else [DEFAULT_PAIR]
    runs = args.artifacts / args.dataset / "runs"
    metrics, histories, runs_json, options, pair_of = {}, {}, {}, {}, {}
    for number, pair in enumerate(pairs, 1):
        for name in pair:
            metrics[name], runs_json[name] = evaluated_run(runs / name, args.split, args.dataset,
                                                           "make demo-warmstart (the default pair)")
            options[name] = json.loads((runs / name / "model.pt.meta.json").read_text())["options"]
            histories[name] = epochs(runs / name)
            pair_of[name] = number
        warm, cold = pair
        if (runs_json[warm].get("init"), runs_json[cold].get("init")) != ("pretrained", "random"):
            sys.exit(f"{runs / warm} must be --init pretrained and {runs / cold} --init random")
        differ = [key for key in SAME if options[warm].get(key) != options[cold].get(key)]
        if differ:
            sys.exit(f"{warm} and {cold} differ in more than their initialisation ({differ}); train them with the "
                     "same options")

    table = comparison_table(metrics)
    names = list(table["run"])
    inits = {name: runs_json[name]["init"] for name in names}
    table["pair"] = [pair_of[name] for name in names]
    table["init"] = [inits[name] for name in names]
    table["lr"] = [f"{options[name]['train']['lr']:g}" for name in names]
    table["best epoch"] = [runs_json[name]["best_epoch"] for name in names]
    table["best val BLEU-4"] = [max(h["val_bleu4"] for h in histories[name]) for name in names]
    table["best val CE micro F1"] = [max(h["val_ce_f1"] for h in histories[name]) for name in names]
    reliance = {name: image_reliance(runs / name, args.split) for name in names}
    table["token CE own images"] = [reliance[name]["own_images"] for name in names]
    table["token CE swapped images"] = [reliance[name]["other_images"] for name in names]
    table = table[COLUMNS]
    train = options[pairs[0][0]]["train"]
    info = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(histories, inits, RESULTS / "warmstart_curves.png")
    header = (f"# Warm start vs random initialisation on the {args.dataset} {args.split} split\n\n"
              f"{int(table['studies'].iloc[0])} studies, every one scored. Within a pair the architecture (MiniLM-L6 "
              f"BERT decoder with new cross-attention over frozen ImageNet EfficientNet-Lite0 tokens from "
              f"features.h5), data, epochs ({train['epochs']} in the first pair), batch ({train['batch_size']}), "
              f"optimiser ({train['optimizer']}), learning rates and seed are the same; only the decoder's "
              f"initialisation differs (the image tokens are the same pretrained encoder's in both). Checkpoints "
              f"selected on validation {train['monitor']}; beam {train['val_beam_size']} with word-trigram "
              f"blocking; CE by the `{metrics[pairs[0][0]].get('labeler')}` labeler. Best validation scores are "
              f"maxima over epochs (curves: `bench/results/warmstart_curves.png`). Token CE: mean cross-entropy per "
              f"sub-word of the reference reports under teacher forcing, with each study's own images and with the "
              f"next study's; equal values mean the decoder does not use the images.\n"
              f"Machine: {info['platform']}, {info['cpu_count']} CPUs, {info['date']}.\n\n")
    write_table("warmstart", header, table)
    print(f"and {RESULTS / 'warmstart_curves.png'}")


if __name__ == "__main__":
    main()
