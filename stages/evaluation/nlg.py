"""NLG metrics computed as R2Gen's `compute_scores` does, so numbers compare with the papers.

pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr on dicts {i: [text]}, without the PTB
tokenizer (the texts are already cleaned the R2Gen way). METEOR runs in Java, whose start costs
seconds: a `NlgScorer` starts it once and scores any number of prediction sets with it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

from pycocoevalcap.bleu.bleu import Bleu
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
