"""NLG metrics computed as R2Gen's `compute_scores` does, so numbers compare with the papers.

pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr on dicts {i: [text]}, without the PTB
tokenizer (the texts are already cleaned the R2Gen way). METEOR runs in Java, whose start costs
seconds: a `NlgScorer` starts it once and scores any number of prediction sets with it.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from stages.core.errors import StageError

NLG_METRICS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
JAVA_INSTALL = "sudo apt-get install -y default-jre-headless"

Captions = dict[int, list[str]]


def as_captions(references: Sequence[str], generated: Sequence[str]) -> tuple[Captions, Captions]:
    """R2Gen's scorer input: {i: [reference]} and {i: [generated]} in the same order."""
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} generated reports")
    return ({i: [text] for i, text in enumerate(references)}, {i: [text] for i, text in enumerate(generated)})


def bleu(gts: Captions, res: Captions) -> dict[str, float]:
    """Corpus BLEU-1..4 (pycocoevalcap's 'closest' reference length, as R2Gen)."""
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU_{n + 1}": float(score) for n, score in enumerate(scores)}


def bleu_statistics(references: Sequence[str], generated: Sequence[str], n: int = 4) -> np.ndarray:
    """(studies, 2 + 2n) pycocoevalcap's per-study BLEU counts: generated length, reference length,
    n-gram guesses (1..n) and clipped matches (1..n). Corpus BLEU is a function of their sums, so a
    bootstrap resample of studies needs no rescoring."""
    rows = []
    for reference, text in zip(references, generated, strict=True):
        counts = cook_test(text, cook_refs([reference], n=n), eff="closest", n=n)
        rows.append([counts["testlen"], counts["reflen"], *counts["guess"], *counts["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 + 2 * n)


def corpus_bleu(statistics: np.ndarray, n: int = 4) -> float:
    """BLEU-n of summed `bleu_statistics` rows, as pycocoevalcap's BleuScorer combines them."""
    total = statistics.sum(axis=0)
    orders = (len(total) - 2) // 2
    if not 1 <= n <= orders:
        raise ValueError(f"the statistics count n-grams up to {orders}, not {n}")
    testlen, reflen, guess, correct = total[0], total[1], total[2:2 + n], total[2 + orders:2 + orders + n]
    precision = float(np.prod((correct + 1e-15) / (guess + 1e-9))) ** (1 / n)
    ratio = (testlen + 1e-15) / (reflen + 1e-9)
    return precision * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def rouge_l(gts: Captions, res: Captions) -> float:
    return float(Rouge().compute_score(gts, res)[0])


def cider(gts: Captions, res: Captions) -> float:
    """CIDEr-D's document frequencies come from the references of the set being scored."""
    return float(Cider().compute_score(gts, res)[0])


class NlgScorer:
    """All NLG metrics over one Java (METEOR) process, started on first use and stopped when the
    `with` block ends, so several prediction sets (or none) cost at most one JVM start."""

    def __init__(self) -> None:
        self._meteor: Meteor | None = None

    def __enter__(self) -> "NlgScorer":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _start(self) -> Meteor:
        if shutil.which("java") is None:
            raise StageError(f"METEOR needs Java 11+, and `java` is not on PATH; install it with: {JAVA_INSTALL}")
        try:
            self._meteor = Meteor()
        except OSError as error:
            raise StageError(f"cannot start Java for METEOR ({error}); check `java -version` "
                             f"(install: {JAVA_INSTALL})") from None
        return self._meteor

    def close(self) -> None:
        """Close METEOR's stdin so the JVM exits, then reap it (killed if it does not exit)."""
        if self._meteor is None:
            return
        meteor, self._meteor = self._meteor, None
        if meteor.lock.locked():  # a failed compute_score keeps it; Meteor.__del__ would then wait forever
            meteor.lock.release()
        process = meteor.meteor_p
        try:
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def meteor(self, gts: Captions, res: Captions) -> float:
        meteor = self._meteor or self._start()
        try:
            return float(meteor.compute_score(gts, res)[0])
        except (ValueError, OSError) as error:  # Java died: an empty line where a score should be, or a broken pipe
            process = meteor.meteor_p
            process.kill()
            stderr = process.stderr.read().decode(errors="replace").strip()[-2000:]
            self.close()
            raise StageError(f"METEOR's Java process failed ({error}): {stderr or 'no message'}; check that "
                             f"`java -version` works (install: {JAVA_INSTALL})") from None

    def score(self, references: Sequence[str], generated: Sequence[str]) -> dict[str, float]:
        """BLEU-1..4, METEOR, ROUGE-L and CIDEr of `generated` against `references` (same order)."""
        gts, res = as_captions(references, generated)
        return {**bleu(gts, res), "METEOR": self.meteor(gts, res), "ROUGE_L": rouge_l(gts, res),
                "CIDEr": cider(gts, res)}
