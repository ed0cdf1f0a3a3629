"""Evaluation: R2Gen references, NLG and CE metrics, the every-study rule, baselines, compare, viewer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from stages.cli import main
from stages.core.errors import StageError
from stages.evaluation.baselines import most_frequent_report, nearest_neighbours
from stages.evaluation.clinical import binary_labels, ce_scores, load_labeler
from stages.evaluation.bootstrap import StudyScores, paired_differences
from stages.evaluation.nlg import NlgScorer, as_captions, bleu, bleu_statistics, corpus_bleu, rouge_l
from stages.evaluation.references import References, clean_prediction, from_annotation, from_dataset, r2gen_reference
from stages.evaluation.score import Evaluation, evaluate
from stages.evaluation.viewer import render
from stages.labeling.observations import OBSERVATIONS
from stages.text.clean import clean_report
from stages.text.vocab import Vocabulary
from conftest import write_r2gen  # tests/ is on sys.path under pytest (no package)

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="METEOR needs Java (apt-get install default-jre-headless)")

SPLITS = ("train",) * 8 + ("val", "val", "test", "test", "test")
TWIN, TWIN_OF = "CXR12_IM-0012", "CXR2_IM-0002"  # a test study whose images are those of a training study


def invoke(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def write_csv(path, rows, columns=("id", "report")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """13 tiny studies (max length 12, so references are cut and hold <unk>) -> dataset.h5, features.h5."""
    root = tmp_path_factory.mktemp("evaluate")
    raw = write_r2gen(root / "raw", splits=SPLITS)
    for view in ("0.png", "1.png"):
        shutil.copy(raw / "images" / TWIN_OF / view, raw / "images" / TWIN / view)
    art = root / "art"
    invoke("preprocess", "--dataset", "demo", "--root", raw, "--artifacts", art, "--workers", 1, "--image-size", 32,
           "--max-length", 12)
    invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 32, "--batch-size", 32)
    return root


def annotation_split(raw, split):
    return json.loads((raw / "annotation.json").read_text())[split]


# --- NLG ---------------------------------------------------------------------------------------

def test_bleu_and_rouge_by_hand():
    gts, res = as_captions(["the heart is normal in size ."], ["the heart is normal in size ."])
    assert bleu(gts, res) == pytest.approx({f"BLEU_{n}": 1.0 for n in range(1, 5)})
    assert rouge_l(gts, res) == pytest.approx(1.0)
    # 1-grams 5/6 match, 2-grams 3/5, 3-grams 1/4, equal lengths (no brevity penalty); LCS 5 of 6 words
    gts, res = as_captions(["the cat is on the mat"], ["the cat sat on the mat"])
    scores = bleu(gts, res)
    assert scores["BLEU_1"] == pytest.approx(5 / 6, rel=1e-6)
    assert scores["BLEU_2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5, rel=1e-6)
    assert scores["BLEU_3"] == pytest.approx(0.5, rel=1e-6)
    assert rouge_l(gts, res) == pytest.approx(5 / 6)
    # corpus BLEU: a hypothesis half the reference's length pays the brevity penalty exp(1 - 8/4)
    gts, res = as_captions(["a b c d e f g h"], ["a b c d"])
    assert bleu(gts, res)["BLEU_1"] == pytest.approx(np.exp(1 - 8 / 4), rel=1e-6)


def test_bleu_from_per_study_counts_equals_pycocoevalcap():
    rng = np.random.default_rng(0)
    words = "the heart is normal no pleural effusion lungs are clear mild cardiomegaly .".split()
    references = [" ".join(rng.choice(words, rng.integers(4, 20))) for _ in range(30)]
    generated = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(30)]
    statistics = bleu_statistics(references, generated)
    reference = bleu(*as_captions(references, generated))
    assert [corpus_bleu(statistics, n) for n in range(1, 5)] == pytest.approx([reference[f"BLEU_{n}"] for n in range(1, 5)],
                                                                            rel=1e-12)
    with pytest.raises(ValueError, match="up to 4"):
        corpus_bleu(statistics, 5)


def test_study_scores_and_paired_differences():
    references = ["mild cardiomegaly . no effusion .", "the lungs are clear .", "small left effusion ."] * 10
    good = list(references)
    poor = ["the lungs are clear ."] * 30
    truth = np.tile(np.array([[1, 0], [0, 0], [0, 1]]), (10, 1))
    ids = [str(k) for k in range(30)]
    exact = StudyScores.of(ids, references, good, truth, truth)
    normal = StudyScores.of(ids, references, poor, truth, np.zeros_like(truth))
    assert exact.metrics() == pytest.approx({"BLEU_4": 1.0, "CE_micro_F1": 1.0})
    assert normal.metrics()["CE_micro_F1"] == 0.0
    assert normal.metrics()["BLEU_4"] == pytest.approx(bleu(*as_captions(references, poor))["BLEU_4"])
    assert exact.intervals()["BLEU_4"] == pytest.approx([1.0, 1.0])
    gap = paired_differences(exact, normal)
    assert gap["CE_micro_F1"]["difference"] == 1.0 and gap["CE_micro_F1"]["interval"] == [1.0, 1.0]
    low, high = gap["BLEU_4"]["interval"]
    assert 0 < low <= gap["BLEU_4"]["difference"] <= high
    assert paired_differences(exact, exact)["BLEU_4"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    with pytest.raises(ValueError, match="different studies"):
        paired_differences(exact, StudyScores.of(ids[::-1], references, good, truth, truth))


@needs_java
def test_one_java_process_scores_several_sets_and_stops():
    texts = ["the heart is normal in size . the lungs are clear .", "no pleural effusion or pneumothorax ."]
    with NlgScorer() as scorer:
        same = scorer.score(texts, texts)
        process = scorer._meteor.meteor_p
        other = scorer.score(texts, texts[::-1])
        assert scorer._meteor.meteor_p is process  # no second JVM
    assert process.poll() is not None
    assert same["METEOR"] > 0.95 and same["BLEU_4"] == pytest.approx(1.0) and same["ROUGE_L"] == pytest.approx(1.0)
    assert other["METEOR"] < 0.5 and set(same) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}


# --- references ----------------------------------------------------------------------------------

def test_reference_unk_and_truncation_by_hand():
    vocab = Vocabulary(["a", "b", "<unk>"])
    # [0, a, <unk>, b, a, <unk>(.), 0] cut to 4 ids -> BOS dropped -> "a <unk> b"
    assert r2gen_reference(vocab, "a c b a .", 4) == "a <unk> b"
    assert r2gen_reference(vocab, "a b", 60) == "a b"
    assert clean_prediction("The heart is <unk>.  Lungs clear. 2. No effusion", "iu") == \
        "the heart is <unk> . lungs clear . no effusion ."
    cleaned = clean_report("Heart size normal. Lungs clear.", "iu")
    assert clean_prediction(cleaned, "iu") == " ".join(cleaned.split())  # idempotent on cleaned text


def test_references_match_vocabulary_encode_decode(chain):
    art, raw = chain / "art/demo", chain / "raw"
    refs = from_dataset(art / "dataset.h5", art / "vocab.json", "test", "iu")
    vocab = Vocabulary.load(art / "vocab.json")
    entries = sorted(annotation_split(raw, "test"), key=lambda e: e["id"])
    expected = [vocab.decode(vocab.encode(clean_report(e["report"], "iu"), 12)[1:]) for e in entries]
    assert refs.ids == [e["id"] for e in entries] and refs.texts == expected
    assert any("<unk>" in t for t in refs.texts)
    assert any(len(clean_report(e["report"]).split()) > 11 for e in entries)
    assert all(len(t.split()) <= 11 for t in refs.texts)
    # the annotation file alone gives the same references (same vocabulary, same cut)
    assert from_annotation(raw / "annotation.json", "test", "iu", 3, 12).texts == refs.texts


# --- clinical efficacy -----------------------------------------------------------------------------

def test_ce_by_hand():
    labeler, name = load_labeler("rules")
    assert name == "rules"
    reference = binary_labels(labeler, ["mild cardiomegaly . small left pleural effusion .",
                                        "there is a small right pleural effusion .", "the lungs are clear ."])
    generated = binary_labels(labeler, ["mild cardiomegaly . no pleural effusion .",
                                        "mild cardiomegaly . small right pleural effusion .",
                                        "no acute cardiopulmonary abnormality ."])
    names = lambda labels: [[OBSERVATIONS[k] for k in np.flatnonzero(row)] for row in labels]  # noqa: E731
    assert names(reference) == [["Cardiomegaly", "Pleural Effusion"], ["Pleural Effusion"], ["No Finding"]]
    assert names(generated) == [["Cardiomegaly"], ["Cardiomegaly", "Pleural Effusion"], ["No Finding"]]
    scores = ce_scores(reference, generated)
    # micro: TP 3, FP 1 (cardiomegaly in 2), FN 1 (effusion in 1)
    assert scores["micro"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    # macro over 14: cardiomegaly P 1/2 R 1, effusion P 1 R 1/2, No Finding 1/1, eleven classes 0
    assert scores["macro"] == pytest.approx({"precision": 2.5 / 14, "recall": 2.5 / 14, "f1": (2 / 3 + 2 / 3 + 1) / 14})
    # example-based: study 1 P 1 R 1/2, study 2 P 1/2 R 1, study 3 perfect
    assert scores["example"] == pytest.approx({"precision": 2.5 / 3, "recall": 2.5 / 3, "f1": 7 / 9})
    assert scores["per_observation"]["Cardiomegaly"]["generated_positives"] == 2


# --- every study, exactly once -----------------------------------------------------------------------

def test_missing_empty_and_extra_predictions_are_errors(tmp_path):
    refs = References("test", ["a", "b", "c"], ["x .", "y .", "z ."], "iu", {"path": "annotation.json"})
    labeler, name = load_labeler("rules")
    with pytest.raises(StageError, match=r"no prediction for 1 \(b\) of the 3 test studies"):
        evaluate({"a": "x", "c": "z"}, refs, labeler, name, source="preds.csv")
    with pytest.raises(StageError, match=r"empty prediction for 1 \(c\)"):
        evaluate({"a": "x", "b": "y", "c": " . ."}, refs, labeler, name)
    with pytest.raises(StageError, match=r"predictions for 1 \(d\) studies that are not in the test split"):
        evaluate({"a": "x", "b": "y", "c": "z", "d": "w"}, refs, labeler, name)


def test_evaluate_cli_names_missing_ids(chain, tmp_path):
    test = annotation_split(chain / "raw", "test")
    preds = write_csv(tmp_path / "p.csv", [(e["id"], e["report"]) for e in test[1:]])
    out = invoke("evaluate", "--predictions", preds, "--references", chain / "raw/annotation.json", code=1)
    assert test[0]["id"] in out and "p.csv" in out and not (tmp_path / "metrics.json").exists()
    preds = write_csv(tmp_path / "p.csv", [(e["id"], e["report"]) for e in test] + [("CXR0_IM-0000", "extra")])
    out = invoke("evaluate", "--predictions", preds, "--references", chain / "raw/annotation.json", code=1)
    assert "CXR0_IM-0000" in out and "not in the test split" in out
    assert "give either --run" in invoke("evaluate", code=2)


# --- stages ------------------------------------------------------------------------------------------

@needs_java
def test_evaluate_references_mode_without_images(chain, tmp_path):
    annotation = tmp_path / "annotation.json"
    shutil.copy(chain / "raw/annotation.json", annotation)  # no images/ beside it
    val = annotation_split(chain / "raw", "val")
    refs = from_annotation(annotation, "val", "iu", 3, 60)  # as scored, <unk> included: a perfect system
    preds = write_csv(tmp_path / "preds.csv", list(zip(refs.ids, refs.texts)), ("study", "text"))
    out = invoke("evaluate", "--predictions", preds, "--references", annotation, "--split", "val",
                 "--id-column", "study", "--report-column", "text", "--out", tmp_path / "eval")
    assert "BLEU-4" in out and "CE (rules)" in out
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["n_studies"] == 2 and metrics["labeler"] == "rules"
    assert metrics["references"]["max_length"] == 60 and metrics["references"]["clean_style"] == "iu"
    assert metrics["nlg"]["BLEU_4"] == pytest.approx(1.0) and metrics["nlg"]["METEOR"] > 0.9
    assert metrics["ce"]["micro"]["f1"] == 1.0 and metrics["oracle"] is None and metrics["seed"] == 0
    scored = pd.read_csv(tmp_path / "eval/scored.csv")
    assert scored["id"].tolist() == sorted(e["id"] for e in val)
    page = (tmp_path / "eval/viewer.html").read_text()
    assert all(e["id"] in page for e in val) and "data:image/png" not in page
    assert (tmp_path / "eval/metrics.json.meta.json").exists()
    assert "up to date" in invoke("evaluate", "--predictions", preds, "--references", annotation, "--split", "val",
                                  "--id-column", "study", "--report-column", "text", "--out", tmp_path / "eval")


@needs_java
def test_baselines_compare_and_viewer(chain):
    art = chain / "art"
    invoke("baselines", "--dataset", "demo", "--artifacts", art, "--viewer-studies", 2)
    runs = art / "demo/runs"
    test_ids = sorted(e["id"] for e in annotation_split(chain / "raw", "test"))
    train = {e["id"]: clean_report(e["report"]) for e in annotation_split(chain / "raw", "train")}
    for name in ("most-frequent", "nearest-neighbour"):
        for split in ("val", "test"):
            preds = pd.read_csv(runs / name / f"predictions_{split}.csv")
            assert sorted(preds["id"]) == sorted(e["id"] for e in annotation_split(chain / "raw", split))
        assert json.loads((runs / name / "run.json").read_text())["model"] == name
        metrics = json.loads((runs / name / "metrics_test.json").read_text())
        assert metrics["n_studies"] == 3 and metrics["run"] == name and metrics["oracle"] is False
    nn = pd.read_csv(runs / "nearest-neighbour/predictions_test.csv").set_index("id")["report"]
    assert nn[TWIN] == train[TWIN_OF]
    assert len(set(pd.read_csv(runs / "most-frequent/predictions_test.csv")["report"])) == 1

    page = (runs / "nearest-neighbour/viewer_test.html").read_text()
    assert all(study in page for study in test_ids[:2]) and test_ids[2] not in page
    assert page.count("data:image/png;base64,") == 4 and "2 of 3 test studies shown" in page

    out = invoke("compare", "--dataset", "demo", "--artifacts", art)
    assert "most-frequent" in out and "nearest-neighbour" in out
    table = pd.read_csv(art / "demo/results_test.csv").set_index("run")
    assert {"most-frequent", "nearest-neighbour"} <= set(table.index)
    assert table.loc["most-frequent", "studies"] == 3 and 0 <= table.loc["nearest-neighbour", "BLEU-4"] <= 1
    assert (art / "demo/results_test.md").read_text().count("\n") == len(table) + 2
    assert table.loc["most-frequent", "BLEU-4 95%"].startswith("[")
    assert "--baseline nope" in invoke("compare", "--dataset", "demo", "--artifacts", art, "--baseline", "nope", code=1)
    invoke("compare", "--dataset", "demo", "--artifacts", art, "--baseline", "most-frequent")
    table = pd.read_csv(art / "demo/results_test.csv").set_index("run")
    assert table.loc["most-frequent", "CE micro F1 vs most-frequent"] == "-"
    assert table.loc["nearest-neighbour", "BLEU-4 vs most-frequent"][0] in "+-"

    run = runs / "mine"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"dataset": "demo", "model": "m"}))
    out = invoke("evaluate", "--run", run, code=1)
    assert "predictions_test.csv not found" in out
    assert "run.json says 'demo'" in invoke("evaluate", "--run", run, "--dataset", "iu_xray", code=2)


def test_nearest_neighbour_and_most_frequent_by_hand():
    pool = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert nearest_neighbours(pool, np.array([[0.0, 5.0], [3.0, 3.1], [2.0, 0.1]])).tolist() == [1, 2, 0]
    assert most_frequent_report(["b .", "a .", "b .", "a ."]) == "a ."


def test_viewer_overlays_masks():
    n = len(OBSERVATIONS)
    labels = np.zeros((1, n), dtype=np.uint8)
    labels[0, 1] = 1
    evaluation = Evaluation({"split": "test", "labeler": "rules", "nlg": dict.fromkeys(
        ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"], 0.5),
        "ce": {k: {"f1": 0.5} for k in ("micro", "macro", "example")}},
        ["s<1>"], ["cardiomegaly ."], ["normal ."], labels, np.zeros((1, n), dtype=np.uint8))
    images = np.zeros((2, 16, 16), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[:, 4:8, 4:8] = True
    page = render(evaluation, {"s<1>": (images, masks)}, "t", 200)
    assert page.count('class="mask"') == 2 and "s&lt;1&gt;" in page and 'id="m"' in page
    assert '<span class="label generated">Cardiomegaly</span>' in page


def test_dataset_mode_and_run_protocol(chain, tmp_path, monkeypatch):
    """Plumbing only (METEOR stubbed, no Java): dataset references, images in the viewer, run.json fields."""
    monkeypatch.setattr(NlgScorer, "meteor", lambda self, gts, res: 0.5)
    art = chain / "art"
    refs = from_dataset(art / "demo/dataset.h5", art / "demo/vocab.json", "test", "iu")
    preds = write_csv(tmp_path / "preds.csv", list(zip(refs.ids, refs.texts)))
    invoke("evaluate", "--predictions", preds, "--dataset", "demo", "--artifacts", art)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # the references were cut at 12 ids; cleaning gives each prediction back its closing " ."
    assert 0.9 < metrics["nlg"]["BLEU_4"] < 1 and metrics["references"]["max_length"] == 12
    assert (tmp_path / "viewer.html").read_text().count("data:image/png;base64,") == 2 * len(refs.ids)

    run = art / "demo/runs/beam"
    run.mkdir(parents=True)
    protocol = {"dataset": "demo", "model": "r2gen", "decoding": "beam-3", "checkpoint": "model_best.pth",
                "oracle": False, "seed": 7}
    (run / "run.json").write_text(json.dumps(protocol))
    shutil.copy(preds, run / "predictions_test.csv")
    invoke("evaluate", "--run", run)
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert {k: metrics[k] for k in protocol if k != "dataset"} == {k: v for k, v in protocol.items() if k != "dataset"}
    assert metrics["run"] == "beam" and (run / "viewer_test.html").exists()
    assert (run / "predictions_test.csv").read_text() == preds.read_text()
    assert "beam-3" in invoke("compare", "--dataset", "demo", "--artifacts", art)
    write_csv(run / "predictions_test.csv", [(i, "No acute findings.") for i in refs.ids])  # edited by hand
    assert "is stale" in invoke("compare", "--dataset", "demo", "--artifacts", art, code=1)
    assert "up to date" not in invoke("evaluate", "--run", run)
    assert "beam-3" in invoke("compare", "--dataset", "demo", "--artifacts", art)


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("stages.evaluation.nlg.shutil.which", lambda name: None)
    with NlgScorer() as scorer, pytest.raises(StageError, match="apt-get install -y default-jre-headless"):
        scorer.score(["no effusion ."], ["no effusion ."])
