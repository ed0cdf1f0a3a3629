"""R2Gen report cleaning and vocabulary, checked against hand-worked examples."""

import pytest

from stages.text.clean import clean_report, is_empty
from stages.text.vocab import UNK, Vocabulary

IU_CASES = [
    # plain sentences: split on ". ", joined with " . ", closing " ."
    ("The heart is normal. The lungs are clear.", "the heart is normal . the lungs are clear ."),
    # list numbering: "1. " dropped, ". 2. " -> ". "
    ("1. No acute disease. 2. Stable cardiomegaly.", "no acute disease . stable cardiomegaly ."),
    # repeated periods collapse
    ("Heart normal... Lungs clear.", "heart normal . lungs clear ."),
    # the decimal point is punctuation: 1.5 -> 15
    ("A 1.5 cm nodule.", "a 15 cm nodule ."),
    # the class's range ':-[' also deletes < = > ? @ (spaces are not collapsed)
    ("Heart <normal> = ok? @home", "heart normal  ok home ."),
    # quotes, slashes and backslashes are deleted
    ('The "XXXX" is normal/stable. Don\'t worry\\ok.', "the xxxx is normalstable . dont worryok ."),
    # '-' is the range operator, not a member: hyphens survive; : ; ( ) , go
    ("Post-operative: changes; mild (stable) effusion, small.", "post-operative changes mild stable effusion small ."),
    # empty sentences survive as ". ."
    ("Normal. . Clear.", "normal .  . clear ."),
    # "1. " is replaced anywhere, also inside "T11. "
    ("Fracture of T11. Heart normal.", "fracture of t1heart normal ."),
]


@pytest.mark.parametrize("raw, expected", IU_CASES)
def test_iu_cleaning_matches_r2gen(raw, expected):
    assert clean_report(raw, "iu") == expected


def test_mimic_cleaning_collapses_newlines_underscores_and_spaces():
    raw = "FINDINGS:\n\nThe lungs are clear.  No effusion.__ "
    assert clean_report(raw, "mimic") == "findings the lungs are clear . no effusion ."


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown cleaning style"):
        clean_report("x", "chexpert")


def test_empty_reports_are_detected():
    assert is_empty(clean_report("", "iu"))
    assert is_empty(clean_report(". . .", "iu"))
    assert not is_empty(clean_report("Normal.", "iu"))


def test_vocabulary_follows_r2gen():
    train = ["b a .", "a c .", "a b ."]
    vocab = Vocabulary.build(train, min_count=2)
    # kept: a(3) b(2) .(3); c(1) dropped; sorted with <unk>; ids from 1
    assert vocab.tokens == [".", "<unk>", "a", "b"]
    assert vocab.token_to_id == {".": 1, UNK: 2, "a": 3, "b": 4}
    assert len(vocab) == 5
    assert vocab.encode("a c b .", max_length=60) == [0, 3, 2, 4, 1, 0]
    # truncation counts the leading 0 and can drop the closing one
    assert vocab.encode("a c b .", max_length=3) == [0, 3, 2]
    assert vocab.decode([3, 2, 4, 1, 0, 3]) == "a <unk> b ."
    ids, lengths = vocab.encode_batch(["a .", "b b b ."], max_length=4)
    assert ids.tolist() == [[0, 3, 1, 0], [0, 4, 4, 4]]
    assert lengths.tolist() == [4, 4]


def test_vocabulary_round_trips_through_json(tmp_path):
    vocab = Vocabulary.build(["x y .", "x y ."], min_count=1)
    (tmp_path / "vocab.json").write_text(vocab.to_json())
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.tokens == vocab.tokens and loaded.encode("x z .", 10) == vocab.encode("x z .", 10)
