"""The findings extractor: mentions, negation and uncertainty scopes, aggregation, bad input, the code table."""

from __future__ import annotations

import pytest

pytest.importorskip("negspacy")

from medfoundry.errors import InputContractError
from medfoundry.tasks.findings import (
    OBSERVATIONS,
    extract_findings,
    extract_findings_many,
    keyword_findings,
    read_report_texts,
)
from medfoundry.tasks.findings_codes import CODE_TABLE, reference_positives, unmapped_heads


@pytest.mark.parametrize(("text", "expected"), [
    ("No pneumothorax or pleural effusion.", {"Pneumothorax": "negative", "Pleural Effusion": "negative"}),
    ("Mild cardiomegaly.", {"Cardiomegaly": "positive", "No Finding": "negative"}),
    ("Heart size is normal.", {"Cardiomegaly": "negative", "No Finding": "positive"}),
    ("Stable heart size.", {"Cardiomegaly": "not mentioned"}),
    ("The heart is enlarged.", {"Cardiomegaly": "positive"}),
    ("Possible left basilar atelectasis.", {"Atelectasis": "uncertain", "No Finding": "negative"}),
    ("Cannot exclude a small right pleural effusion.", {"Pleural Effusion": "uncertain"}),
    ("Bilateral pleural effusions.", {"Pleural Effusion": "positive"}),
    ("Small pericardial effusion.", {"Pleural Effusion": "not mentioned"}),
    ("Right PICC line tip in the SVC.", {"Support Devices": "positive", "No Finding": "positive"}),
    ("Calcified granuloma in the right upper lobe.", {"No Finding": "negative", "Lung Lesion": "not mentioned"}),
    ("No typical findings of pulmonary edema.", {"Edema": "negative"}),
    ("Heart size upper limits of normal.", {"Cardiomegaly": "negative"}),
])
def test_labels(text, expected):
    labels = extract_findings(text).labels()
    assert list(labels) == list(OBSERVATIONS)
    for obs, lab in expected.items():
        assert labels[obs] == lab, (text, obs, labels[obs])


def test_deciding_sentence_and_aggregation():
    r = extract_findings("No focal consolidation. Right lower lobe consolidation has developed since the prior.")
    f = next(f for f in r.findings if f.observation == "Consolidation")
    assert f.label == "positive" and f.sentence.startswith("Right lower lobe")


def test_empty_and_heading_only_reports_claim_nothing():
    for text in ("", "   ", "FINDINGS: IMPRESSION:", "XXXX XXXX."):
        r = extract_findings(text)
        assert r.empty and set(r.labels().values()) == {"not mentioned"}


def test_non_english_is_an_error_single_and_skipped_in_batches():
    de = "Kein Pneumothorax, kein Erguss. Herz normal groß, keine Infiltrate."
    with pytest.raises(InputContractError, match="English"):
        extract_findings(de)
    with pytest.raises(InputContractError, match="English"):
        extract_findings("気胸なし。胸水なし。心拡大あり。")
    out = extract_findings_many([de, "Cardiomegaly."], check_language=False)
    assert out[0].empty and out[1].label("Cardiomegaly") == "positive"
    assert extract_findings("Cardiomegaly. Atelectasis. Edema.").label("Edema") == "positive"  # terse English


def test_csv_without_the_column(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("uid,findings\n1,No effusion.\n", encoding="utf-8")
    with pytest.raises(InputContractError, match=r"no column 'text'.*uid, findings"):
        read_report_texts(p, ["text"])
    texts, rows = read_report_texts(p, ["findings"])
    assert texts == ["No effusion."] and rows[0]["uid"] == "1"
    empty = tmp_path / "e.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputContractError, match="empty"):
        read_report_texts(empty)


def test_baseline_negation_window():
    assert keyword_findings("No pleural effusion.").label("Pleural Effusion") == "negative"
    assert keyword_findings("Large pleural effusion.").label("Pleural Effusion") == "positive"
    # the window is short: a far negation is missed (the extractor's scope is the sentence)
    far = "No focal airspace consolidation, pneumothorax or large pleural effusion."
    assert keyword_findings(far).label("Pleural Effusion") == "positive"
    assert extract_findings(far).label("Pleural Effusion") == "negative"


def test_code_table():
    assert reference_positives("normal") == {"No Finding"}
    assert reference_positives("Opacity/lung/base/left;Cardiomegaly/mild") == {"Lung Opacity", "Cardiomegaly"}
    assert reference_positives("Opacity/ribs/anterior") == set()
    assert reference_positives("Calcified Granuloma/lung") == set()  # listed, maps to none
    assert unmapped_heads(["Calcified Granuloma", "Made Up Code/x"]) == {"made up code": 1}
    assert all(o is None or o in OBSERVATIONS for _, _, o in CODE_TABLE)


@pytest.mark.shared_data
def test_iu_reports_fast_and_mostly_right(shared_data):
    import csv
    import time

    with open(shared_data / "iu_xray_reports_text" / "reports.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:300]
    texts = [f"{r['findings']} {r['impression']}" for r in rows]
    extract_findings_many(texts[:2], check_language=False)
    t0 = time.perf_counter()
    out = extract_findings_many(texts, check_language=False)
    assert time.perf_counter() - t0 < 10
    normal = [o for o, r in zip(out, rows, strict=True) if r["MeSH"] == "normal"]
    agree = sum(o.label("No Finding") == "positive" for o in normal) / len(normal)
    assert agree > 0.8


def test_cli_text_csv_and_errors(tmp_path, capsys):
    import csv
    import json

    from medfoundry.cli.main import main

    t = tmp_path / "r.txt"
    t.write_text("FINDINGS: Mild cardiomegaly. No pneumothorax.", encoding="utf-8")
    assert main(["findings", str(t), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f["observation"]: f["label"] for f in out["findings"]}["Cardiomegaly"] == "positive"
    c = tmp_path / "r.csv"
    c.write_text("uid,findings,impression\n7,Small left effusion.,\n8,,\n", encoding="utf-8")
    labels = tmp_path / "labels.csv"
    assert main(["findings", str(c), "--column", "findings,impression", "--id-column", "uid",
                 "--out", str(labels)]) == 0
    rows = list(csv.DictReader(labels.open(encoding="utf-8")))
    assert rows[0]["id"] == "7" and rows[0]["Pleural Effusion"] == "positive"
    assert rows[1]["empty"] == "True" and rows[1]["No Finding"] == "not mentioned"
    assert main(["findings", str(c)]) == 2
    assert "no column 'text'" in capsys.readouterr().err
