"""The findings extractor against the radiologists' finding codes of the IU chest X-ray reports.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/findings_iu.py [--shared ../shared/data]

Reads ``iu_xray_reports_text/reports.csv`` (3,081 reports), extracts the 14 CheXpert observations from each
report's *findings* and *impression* sections (the indication is left out: it names what was asked, not what was
seen) and compares them with the observations the ``MeSH`` codes give through
:data:`medfoundry.tasks.findings_codes.CODE_TABLE`.

Split: a report is in the **development** part when ``sha256(uid) mod 5 >= 2`` (60 %), else in the **held-out**
part (40 %). The phrase tables were written looking at development reports only; the held-out part was scored
once, at the end. Reports the coders did not index ("No Indexing", unsatisfactory image) are left out.

Positive = the extractor says positive or uncertain (an uncertain mention names a finding, which the coders code;
"U-ones"); the "U-zeros" numbers (uncertain counted as not positive) are written too. Per observation P/R/F1 of
the positive class; micro and macro F1 over the observations that at least one reference code covers in the part.
Baseline: :func:`medfoundry.tasks.findings.keyword_findings` (same phrases, a 5-token negation window), measured
the same way. Writes ``benchmarks/results/findings_iu.json`` and ``findings_iu_confusion_{part}.html`` (how the
extractor labels each observation when the codes do or do not make it positive: negative vs not mentioned).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medfoundry.eval.provenance import collect  # noqa: E402
from medfoundry.tasks.findings import (  # noqa: E402
    LABELS,
    OBSERVATIONS,
    extract_findings_many,
    keyword_findings,
)
from medfoundry.tasks.findings_codes import (  # noqa: E402
    has_reference,
    reference_positives,
    unmapped_codes,
    unmapped_heads,
)


def part_of(uid: str) -> str:
    return "development" if int(hashlib.sha256(uid.encode()).hexdigest(), 16) % 5 >= 2 else "held-out"


def report_text(row: dict) -> str:
    return " ".join(t.strip() for t in (row.get("findings", ""), row.get("impression", "")) if t and t.strip())


def scores(refs: list[set[str]], preds: list[set[str]]) -> dict:
    covered = [o for o in OBSERVATIONS if any(o in r for r in refs)]
    per, tp_all, fp_all, fn_all = {}, 0, 0, 0
    for o in covered:
        tp = sum(o in r and o in p for r, p in zip(refs, preds, strict=True))
        fp = sum(o not in r and o in p for r, p in zip(refs, preds, strict=True))
        fn = sum(o in r and o not in p for r, p in zip(refs, preds, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[o] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "support": tp + fn,
                  "tp": tp, "fp": fp, "fn": fn}
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    micro_p = tp_all / (tp_all + fp_all) if tp_all + fp_all else 0.0
    micro_r = tp_all / (tp_all + fn_all) if tp_all + fn_all else 0.0
    micro = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0
    return {"micro_f1": round(micro, 4), "micro_precision": round(micro_p, 4), "micro_recall": round(micro_r, 4),
            "macro_f1": round(sum(v["f1"] for v in per.values()) / max(len(per), 1), 4),
            "observations": covered, "per_observation": per}


def confusion(refs: list[set[str]], results) -> dict:
    table = {}
    for o in OBSERVATIONS:
        cell = {"coded positive": dict.fromkeys(LABELS, 0), "not coded": dict.fromkeys(LABELS, 0)}
        for r, res in zip(refs, results, strict=True):
            cell["coded positive" if o in r else "not coded"][res.label(o)] += 1
        table[o] = cell
    return table


def write_html(path: Path, conf: dict, part: str) -> None:
    rows = []
    for o, cell in conf.items():
        for ref, counts in cell.items():
            tds = "".join(f"<td>{counts[lab]}</td>" for lab in LABELS)
            rows.append(f"<tr><td>{html.escape(o)}</td><td>{ref}</td>{tds}</tr>")
    head = "".join(f"<th>extractor: {lab}</th>" for lab in LABELS)
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>findings vs IU codes</title>"
        "<style>td,th{border:1px solid #999;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
        "table{border-collapse:collapse;font:13px sans-serif}</style>"
        f"<h3>Extractor labels vs the radiologists' codes ({part} part)</h3>"
        "<p>'not coded' reports may deny the finding (extractor: negative) or not talk about it (not mentioned): "
        "the codes cannot tell these apart, the extractor can.</p>"
        f"<table><tr><th>observation</th><th>codes</th>{head}</tr>{''.join(rows)}</table>", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--parts", default="development,held-out", help="parts to score (comma-separated)")
    ap.add_argument("--show-errors", default=None, metavar="OBS",
                    help="print development-part disagreements for one observation (rule writing only)")
    args = ap.parse_args()
    path = Path(args.shared) / "iu_xray_reports_text" / "reports.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [report_text(r) for r in rows]

    extract_findings_many(["warm up the pipeline."])
    t0 = time.perf_counter()
    ours = extract_findings_many(texts, check_language=False)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = [keyword_findings(t) for t in texts]
    base_s = time.perf_counter() - t0

    out = {"data": "iu_xray_reports_text/reports.csv", "reports": len(rows), "text": "findings + impression",
           "split": "development: sha256(uid) mod 5 >= 2; held-out: the rest (never read while writing rules)",
           "positive": "extractor positive or uncertain (U-ones); u_zeros: positive only",
           "speed": {"threads": 1, "load_average_1min": round(os.getloadavg()[0], 2),
                     "extractor_reports_per_s": round(len(rows) / ours_s, 1),
                     "baseline_reports_per_s": round(len(rows) / base_s, 1)},
           "unmapped_code_heads": dict(unmapped_heads(r["MeSH"] for r in rows).most_common()),
           "codes_mapping_to_no_observation": dict(unmapped_codes(r["MeSH"] for r in rows).most_common()),
           "parts": {},
           # no model (rules); the machine (CPU) of the speed numbers is the provenance's
           "provenance": collect(data=path, settings=args)}
    for part in args.parts.split(","):
        idx = [i for i, r in enumerate(rows) if part_of(r["uid"]) == part and has_reference(r["MeSH"])]
        refs = [reference_positives(rows[i]["MeSH"]) for i in idx]
        res = {
            "reports": len(idx),
            "extractor": scores(refs, [ours[i].positives("positive") for i in idx]),
            "extractor_u_zeros": scores(refs, [ours[i].positives("zero") for i in idx]),
            "baseline_keyword_negation_window": scores(refs, [base[i].positives("positive") for i in idx]),
            "extractor_empty_reports": sum(ours[i].empty for i in idx),
            "confusion": confusion(refs, [ours[i] for i in idx]),
        }
        out["parts"][part] = res
        write_html(Path(args.out) / f"findings_iu_confusion_{part}.html", res["confusion"], part)
        print(f"{part}: {len(idx)} reports  extractor micro-F1 {res['extractor']['micro_f1']} macro "
              f"{res['extractor']['macro_f1']}  (u-zeros {res['extractor_u_zeros']['micro_f1']})  baseline micro "
              f"{res['baseline_keyword_negation_window']['micro_f1']} macro "
              f"{res['baseline_keyword_negation_window']['macro_f1']}")
        for o, v in res["extractor"]["per_observation"].items():
            b = res["baseline_keyword_negation_window"]["per_observation"][o]
            print(f"  {o:28s} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f} n={v['support']:4d}"
                  f"   baseline F1 {b['f1']:.3f}")
        if args.show_errors and part == "development":
            o = args.show_errors
            for i, r in zip(idx, refs, strict=True):
                p = ours[i].positives("positive")
                if (o in r) != (o in p):
                    kind = "FN" if o in r else "FP"
                    fi = next(f for f in ours[i].findings if f.observation == o)
                    print(f"{kind} [{rows[i]['MeSH']}] {fi.label}: {fi.sentence or texts[i]}")
    print(f"speed: extractor {out['speed']['extractor_reports_per_s']} reports/s, baseline "
          f"{out['speed']['baseline_reports_per_s']} reports/s")
    Path(args.out, "findings_iu.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
