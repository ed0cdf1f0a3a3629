"""Benchmark: wall time of one evaluation of an IU X-Ray-sized test split (590 studies).

Real Open-i findings text from the torchxrayvision wheel: 590 reports are the "test" split (their
R2Gen references built with a vocabulary from the remaining reports, min count 3, max length 60)
and the predictions are the same 590 reports shuffled among the studies. Times, as medians of
--repeats runs: NLG with its one Java start (METEOR's first call minus a second call on the same
JVM gives the start), clinical efficacy (labelling both sides + scores), and the whole
`evaluate` call. Prints a table and writes bench/results/evaluate.json.
Usage: python bench/evaluate.py [--repeats 3] [--studies 590]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np
from common import machine, write_results

from stages.data.openi import iter_reports_tgz, torchxrayvision_reports
from stages.evaluation.clinical import binary_labels, ce_scores, load_labeler
from stages.evaluation.nlg import NlgScorer, as_captions, bleu, cider, rouge_l
from stages.evaluation.references import References, clean_prediction, r2gen_reference
from stages.evaluation.score import evaluate
from stages.text.clean import clean_report
from stages.text.vocab import Vocabulary


def test_split(n_studies: int, seed: int = 0) -> tuple[References, dict[str, str]]:
    """References for n_studies real reports and a shuffled pairing of the same reports as predictions."""
    reports = [r for r in iter_reports_tgz(torchxrayvision_reports()) if r.findings]
    order = np.random.default_rng(seed).permutation(len(reports))
    test, train = [reports[i] for i in order[:n_studies]], [reports[i] for i in order[n_studies:]]
    vocab = Vocabulary.build([clean_report(r.findings) for r in train], 3)
    test.sort(key=lambda r: r.study_id)
    texts = [r2gen_reference(vocab, clean_report(r.findings), 60) for r in test]
    references = References("test", [r.study_id for r in test], texts, "iu", {"path": "NLMCXR_reports.tgz"})
    shuffled = np.random.default_rng(seed + 1).permutation(len(test))
    return references, {r.study_id: test[j].findings for r, j in zip(test, shuffled)}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def one_run(references: References, predictions: dict[str, str]) -> dict[str, float]:
    """Seconds of each part of one evaluation."""
    generated = [clean_prediction(predictions[i], "iu") for i in references.ids]
    gts, res = as_captions(references.texts, generated)
    labeler, name = load_labeler("rules")
    seconds = {}
    with NlgScorer() as scorer:
        (_, seconds["nlg_total"]) = timed(lambda: scorer.score(references.texts, generated))
        (_, seconds["meteor_warm"]) = timed(lambda: scorer.meteor(gts, res))
    for metric, fn in (("bleu", bleu), ("rouge_l", rouge_l), ("cider", cider)):
        (_, seconds[metric]) = timed(lambda fn=fn: fn(gts, res))
    seconds["meteor_with_java_start"] = seconds["nlg_total"] - seconds["bleu"] - seconds["rouge_l"] - seconds["cider"]
    seconds["java_start"] = seconds["meteor_with_java_start"] - seconds["meteor_warm"]
    (_, seconds["ce"]) = timed(lambda: ce_scores(binary_labels(labeler, references.texts),
                                                 binary_labels(labeler, generated)))
    (result, seconds["evaluate_total"]) = timed(lambda: evaluate(predictions, references, labeler, name))
    seconds["metrics"] = {**result.metrics["nlg"], "CE_micro_F1": result.metrics["ce"]["micro"]["f1"]}
    return seconds


def java_version() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not found"
    return (done.stderr or done.stdout).splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=590)
    args = parser.parse_args()

    references, predictions = test_split(args.studies)
    runs = [one_run(references, predictions) for _ in range(args.repeats)]
    parts = ("java_start", "meteor_warm", "meteor_with_java_start", "bleu", "rouge_l", "cider", "nlg_total", "ce",
             "evaluate_total")
    medians = {part: round(statistics.median(run[part] for run in runs), 3) for part in parts}
    results = {
        **machine(), "java": java_version(),
        "studies": len(references.ids), "repeats": args.repeats, "labeler": "rules",
        "median_s": medians, "runs_s": [{part: round(run[part], 3) for part in parts} for run in runs],
        "metrics_of_shuffled_pairing": runs[0]["metrics"],
    }
    print(f"\nevaluation of {len(references.ids)} studies (median of {args.repeats}; "
          f"load average {results['load_average_1min']})")
    for part in parts:
        print(f"  {part:24s} {medians[part]:7.2f} s")
    write_results("evaluate", results)


if __name__ == "__main__":
    main()
