"""Vision modules scored on a larger validation set: another dataset's validation prompts.

The demo's 42 validation prompts hold one or two positives for most findings, too few to choose a
vision module on. This scores each vision run of ARTIFACTS/<dataset>/synthesize/ on every report of
the validation split of --prompts (a preprocessed, labelled, encoded dataset folder such as
make demo-prior's pool, whose 352 validation studies hold the demo's 42), as `synthesize evaluate`
scores a dataset's own prompts: the dataset's diagnosis classifier on the generated images against
the prompt reports' labels, and the Fréchet distance to the prompts' real images. References come
from the dataset's own training studies, which every module trained on. The selection figure is the
macro-AUROC over the classes with at least 3 positive prompts. A prompt study that is a training or
test study of the dataset is refused. Writes bench/results/vision_selection.md / .json.
Usage: python bench/vision_selection.py --artifacts artifacts --prompts artifacts/pretrain-pool/demo \
       --runs vision vision-276
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common import RESULTS, machine, write_table
from stages.adm.classifier import load_diagnosis
from stages.core.artifacts import check_input, read_manifest
from stages.data.h5dataset import DatasetFile
from stages.labeling.observations import OBSERVATIONS
from stages.models.image_encoders import build_image_encoder
from stages.synthesis.evaluation import MIN_POSITIVES, evaluate_vision
from stages.synthesis.prompts import PromptBank, plan_prompts
from stages.synthesis.vision import load_vision


def selection_macro(result: dict) -> tuple[float, list[str]]:
    """Macro-AUROC over the classes with at least MIN_POSITIVES positive prompts."""
    per_class, positives = result["clinical_auroc"]["generated"]["per_class"], result["positives"]
    used = [c for c in OBSERVATIONS if per_class[c] is not None and positives[c] >= MIN_POSITIVES]
    return float(np.mean([per_class[c] for c in used])), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--prompts", type=Path, required=True, help="dataset folder whose validation reports are the prompts")
    parser.add_argument("--runs", nargs="+", required=True, help="vision runs (synthesize/<run>/)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = args.artifacts / args.dataset
    for path in [base / "diagnosis.pt", base / "features.h5"] + [base / "synthesize" / r / "vision.pt" for r in args.runs]:
        check_input(path, args.dataset)
    with DatasetFile(base / "dataset.h5") as own, DatasetFile(args.prompts / "dataset.h5") as prompts:
        used = {i for i, s in zip(own.ids, own.splits) if s != "val"}
        clash = [i for r, i in enumerate(prompts.ids) if prompts.splits[r] == "val" and i in used]
        training = {i for i, s in zip(own.ids, own.splits) if s == "train"}
    if clash:
        sys.exit(f"{len(clash)} validation studies of {args.prompts} are training or test studies of {base} "
                 f"(e.g. {', '.join(clash[:3])}); they cannot select a model")
    features = read_manifest(base / "features.h5")["options"]
    encoder = build_image_encoder(features["image_encoder"], features.get("weights")).eval()
    bank = PromptBank(args.prompts / "dataset.h5", args.prompts / "labels.h5", args.prompts / "features.h5")
    results, rows = {}, []
    try:  # the prompts, their references and the classifier are the same for every run
        bank.keep_references(training)
        diagnosis = load_diagnosis(base / "diagnosis.pt", bank.data.image_size, "cpu")
        plan = plan_prompts(bank, "val", None, args.seed)
        for run in args.runs:
            model, _ = load_vision(base / "synthesize" / run / "vision.pt")
            with tempfile.TemporaryDirectory() as tmp:
                result, _ = evaluate_vision(model, bank, plan, diagnosis, encoder,
                                            input_size=int(features["input_size"]), guidance=args.guidance,
                                            steps=args.ddim_steps, seed=args.seed, batch_size=64, components=64,
                                            grid=Path(tmp) / "grid.png", grid_size=8,
                                            contrast_maps=Path(tmp) / "contrasts.png")
            macro, classes = selection_macro(result)
            results[run] = {"selection_macro_auroc": macro, "classes": classes, "evaluation": result}
            extra = (json.loads((base / "synthesize" / run / "run.json").read_text()).get("extra_data") or {})
            rows.append({"run": run, "extra training studies": extra.get("train_studies", 0),
                         "prompts": result["studies"], "images": result["images"],
                         f"macro-AUROC, classes with >= {MIN_POSITIVES} positives": round(macro, 3),
                         "classes": len(classes),
                         "Fréchet": round(result["frechet"]["generated"]["full"], 1),
                         "Fréchet floor": round(result["frechet"]["real (floor)"]["full"], 1),
                         **{f"{c} ({result['positives'][c]})": (round(v, 3) if v is not None else None)
                            for c, v in result["clinical_auroc"]["generated"]["per_class"].items()
                            if c in classes}})
            print(f"{run}: selection macro-AUROC {macro:.3f} over {len(classes)} classes", flush=True)
    finally:
        bank.close()
    m = machine()
    header = (f"# Vision modules on the validation prompts of {args.prompts}\n\n"
              f"Every validation report of {args.prompts} as a prompt (one image per view), references from the "
              f"training studies of {base}, guidance {args.guidance}, {args.ddim_steps} DDIM steps, seed {args.seed}; "
              f"the diagnosis classifier of {base} on the images. Selection: the macro-AUROC over the classes with "
              f"at least {MIN_POSITIVES} positive prompts (their counts in brackets). {m['date']}, {m['cpu_count']} CPUs.\n\n")
    write_table("vision_selection", header, pd.DataFrame(rows))
    (RESULTS / "vision_selection.json").write_text(json.dumps({"machine": m, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
