"""`rrg-stage label` standalone mode on a CSV a user writes by hand."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from stages.cli import main

CSV = """id,Report Impression
1,"Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
2,"Moderate cardiomegaly. Small left pleural effusion. Possible right lower lobe pneumonia."
3,""
4,"Left PICC line with tip in the SVC. Stable right upper lobe nodule."
"""


def test_label_csv(tmp_path):
    (tmp_path / "reports.csv").write_text(CSV)
    result = CliRunner().invoke(main, ["label", "--input", str(tmp_path / "reports.csv"),
                                       "--output", str(tmp_path / "labels.csv")])
    assert result.exit_code == 0, result.output
    assert "1 empty report(s)" in result.output and "rows [4]" in result.output
    out = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False).set_index("id")
    assert out.loc["1", "No Finding"] == "1" and out.loc["1", "Pleural Effusion"] == "0"
    assert out.loc["2", "Cardiomegaly"] == "1" and out.loc["2", "Pleural Effusion"] == "1"
    assert out.loc["2", "Pneumonia"] == "-1" and out.loc["2", "No Finding"] == ""
    assert all(out.loc["3", c] == "" for c in out.columns if c != "Report Impression")
    assert out.loc["4", "Support Devices"] == "1" and out.loc["4", "Lung Lesion"] == "1"


def test_label_csv_errors(tmp_path):
    (tmp_path / "reports.csv").write_text("id,notes\n1,hello\n")
    result = CliRunner().invoke(main, ["label", "--input", str(tmp_path / "reports.csv"),
                                       "--output", str(tmp_path / "labels.csv")])
    assert result.exit_code == 1 and "no report column" in result.output and "--report-column" in result.output
    result = CliRunner().invoke(main, ["label", "--input", str(tmp_path / "reports.csv"),
                                       "--output", str(tmp_path / "o.csv"), "--report-column", "notes"])
    assert result.exit_code == 0
    result = CliRunner().invoke(main, ["label", "--input", str(tmp_path / "reports.csv")])
    assert result.exit_code == 2 and "needs both --input and --output" in result.output
    result = CliRunner().invoke(main, ["label", "--labeler", "chexbert", "--input", str(tmp_path / "reports.csv"),
                                       "--output", str(tmp_path / "o.csv"), "--report-column", "notes"])
    assert result.exit_code == 1 and "--checkpoint" in result.output
