"""CXR-IRGen on the demo: image quality, clinical agreement and the effect of synthetic training pairs.

Reads evaluation_<split>.json of vision runs (`rrg-stage synthesize evaluate`; by default
synthesize/vision, CXR-IRGen's text+image prompt, and synthesize/vision-text, the report alone, when
it exists) and metrics_<split>.json of two report generators trained alike but for --extra-data
(runs/base and runs/base-synthetic), checks that each is current, and writes
bench/results/synthesize.md / .json, one CSV per table, and the first run's image grid and contrast
maps as bench/results/synthesize_grid.png and synthesize_contrasts.png.
Usage: python bench/synthesize.py [--artifacts artifacts] [--dataset demo] [--split test]
       [--vision vision vision-text] [--runs base base-synthetic]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from common import RESULTS, evaluated_run, machine
from stages.core.artifacts import check_input
from stages.core.errors import StageError
from stages.evaluation.bootstrap import format_interval
from stages.evaluation.table import comparison_table, to_markdown
from stages.synthesis.evaluation import VISIBLE


def evaluation(run_dir: Path, split: str, dataset: str) -> dict:
    path = run_dir / f"evaluation_{split}.json"
    try:
        check_input(path, dataset)
    except StageError as error:
        sys.exit(f"{error}\n(build it with: rrg-stage synthesize evaluate --dataset {dataset} --run {run_dir.name}, "
                 "or make demo-synth)")
    return json.loads(path.read_text())


def frechet_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per image set: the real floor, each run's generated images, the two baselines."""
    first = next(iter(results.values()))
    pca = next(k for k in first["frechet"]["generated"] if k.startswith("pca"))
    rows = [{"images": "real, other half (floor)", **first["frechet"]["real (floor)"]}]
    rows += [{"images": f"generated, {r['prompt']} prompt ({name})", **r["frechet"]["generated"]}
             for name, r in results.items()]
    rows += [{"images": name, **first["frechet"][name]} for name in ("mean-image baseline", "noise baseline")]
    return pd.DataFrame(rows).rename(columns={"full": "Fréchet (1280-d)", pca: f"Fréchet (PCA-{pca[3:]})"})


def contrast_table(results: dict[str, dict]) -> pd.DataFrame:
    """Per visible finding and view: how well each run's contrast map matches the real one (correlation)."""
    keys = dict.fromkeys((finding, view) for r in results.values()
                         for finding, views in r.get("contrast_correlation", {}).items() for view in views)
    return pd.DataFrame([{"finding": finding, "view": view,
                          **{name: r.get("contrast_correlation", {}).get(finding, {}).get(view)
                             for name, r in results.items()}} for finding, view in keys])


def auroc_table(results: dict[str, dict]) -> pd.DataFrame:
    """Per observation: positives among the prompts, AUROC on each run's images and on real images."""
    first = next(iter(results.values()))
    real = [k for k in first["clinical_auroc"] if k.startswith("real")]
    names = list(first["positives"])
    columns = {f"generated ({name})": r["clinical_auroc"]["generated"] for name, r in results.items()}
    columns.update({k: first["clinical_auroc"][k] for k in real})
    rows = [{"observation": obs, "visible sign": obs in VISIBLE, "prompt positives": str(first["positives"][obs]),
             **{col: values["per_class"][obs] for col, values in columns.items()},
             **{f"{col} 95%": format_interval(values.get("intervals", {}).get(obs))
                for col, values in columns.items() if col.startswith("generated")}} for obs in names]
    rows.append({"observation": "macro (classes with positives)", "visible sign": None, "prompt positives": None,
                 **{col: values["macro"] for col, values in columns.items()}})
    rows.append({"observation": "macro over the 4 visible findings", "visible sign": None, "prompt positives": None,
                 **{col: values["visible_macro"] for col, values in columns.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--vision", nargs="+", help="vision runs, in table order [default: vision, vision-text if built]")
    parser.add_argument("--runs", nargs=2, default=["base", "base-synthetic"],
                        help="report generators without and with --extra-data")
    args = parser.parse_args()
    base = args.artifacts / args.dataset
    vision = args.vision or [n for n in ("vision", "vision-text")
                             if n == "vision" or (base / "synthesize" / n / f"evaluation_{args.split}.json").exists()]
    results = {name: evaluation(base / "synthesize" / name, args.split, args.dataset) for name in vision}
    metrics, runs = {}, {}
    for name in args.runs:
        metrics[name], runs[name] = evaluated_run(base / "runs" / name, args.split, args.dataset,
                                                  f"rrg-stage evaluate --run {base / 'runs' / name}, or make demo-synth")
    training = comparison_table(metrics)
    training.insert(2, "extra training pairs", [(runs[n].get("extra_data") or {}).get("train_studies", 0)
                                                for n in args.runs])
    training.insert(3, "best epoch", [runs[n]["best_epoch"] for n in args.runs])
    tables = {"frechet": frechet_table(results), "auroc": auroc_table(results), "contrast": contrast_table(results),
              "training": training}
    first = results[vision[0]]
    m = machine()
    extra = {n: (json.loads((base / "synthesize" / n / "run.json").read_text()).get("extra_data") or {})
             .get("train_studies") for n in vision}
    modules = ", ".join(f"{n} ({r['prompt']} prompt, finding weight {r.get('finding_weight', 0):g}, "
                        + (f"+ {extra[n]} training studies of --extra-data, " if extra[n] else "")
                        + f"{r['vision_steps']} steps (weights of step {r.get('vision_kept_step', r['vision_steps'])} "
                        f"kept), {r['vision_seconds_per_step']:.2f} s/step)" for n, r in results.items())
    text = (f"# CXR-IRGen on {args.dataset}: synthetic image-report pairs\n\n"
            f"Vision module: {modules}; "
            f"sampling: DDIM {first['ddim_steps']} steps, guidance {first['guidance']}, "
            f"{first['sampling_seconds_per_image']:.2f} s per image. Prompts: the {first['studies']} {args.split} "
            f"reports (one image per view of each study, {first['images']} images) with reference images from the "
            f"training split. {m['date']}, {m['cpu_count']} CPUs.\n\n"
            f"## Image quality: Fréchet distance on the image encoder's pooled features\n\n"
            f"Images made for one half of the prompts against the real images of the other half "
            f"({first['images_per_half']} images per set); real images at the model's resolution and back, as the "
            f"generated ones are stored. Lower is better; the first row is the floor.\n\n"
            + to_markdown(tables["frechet"])
            + "\n## Clinical agreement: the diagnosis classifier (diagnosis.pt) on the images, AUROC against the "
              "prompt reports' labels (study = maximum over views)\n\n" + to_markdown(tables["auroc"])
            + "\n## Where the findings are drawn: contrast maps\n\n"
              "The mean image of the prompts with a finding minus that of the prompts without it, per view, for the "
              "real images and the generated ones; the correlation of the two maps (1: drawn where and as strongly, "
              "relatively, as in the real images; -: fewer than 3 positive prompts, or a run evaluated before "
              "the maps existed). The first run's maps: synthesize_contrasts.png.\n\n"
            + (to_markdown(tables["contrast"]) if len(tables["contrast"]) else "(no run has contrast maps)\n")
            + f"\n## Report generation with synthetic pairs added to training ({args.split} split)\n\n"
              "Same model, options and epochs; the second run also trains on the synthetic training pairs "
              "(rrg-stage train --extra-data).\n\n" + to_markdown(training))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synthesize.md").write_text(text)
    for name, table in tables.items():
        table.to_csv(RESULTS / f"synthesize_{name}.csv", index=False)
    (RESULTS / "synthesize.json").write_text(json.dumps({"machine": m, "vision": results, "training": {
        n: {"run": runs[n], "metrics": metrics[n]} for n in args.runs}}, indent=2, default=str) + "\n")
    shutil.copyfile(base / "synthesize" / vision[0] / f"grid_{args.split}.png", RESULTS / "synthesize_grid.png")
    maps = base / "synthesize" / vision[0] / f"contrasts_{args.split}.png"
    if maps.exists():
        shutil.copyfile(maps, RESULTS / "synthesize_contrasts.png")
    print(text)
    print(f"wrote bench/results/synthesize.md, .json, synthesize_{{{','.join(tables)}}}.csv, synthesize_grid.png"
          f"{' and synthesize_contrasts.png' if maps.exists() else ''}")


if __name__ == "__main__":
    main()
