"""Report-generation benchmarks: each test case gets a report retrieved from the bank of the training rows'
texts (:mod:`medfoundry.tasks.report`), scored against the case's own text with BLEU-4, BLEU-1, ROUGE-L and
CIDEr (:mod:`medfoundry.eval.text_metrics`) and, when the spec asks for ``ce_precision``/``ce_recall``/``ce_f1``,
clinical-efficacy precision/recall/F1 (:mod:`medfoundry.eval.clinical_metrics`: the findings extractor on the
retrieved and the written text, micro-averaged over the 14 CheXpert observations; per-observation numbers and the
fraction of written texts that name any finding go into ``extra``). Baseline: the bank's most frequent text,
given to every case, scored the same way.

The bank holds only ``dataset.train_filter`` rows, so a test case's own text is never in it unless another
image carries the same text.
"""

from __future__ import annotations

import numpy as np

from medfoundry.eval.tasks import Summary, read_2d, run_cases


def predict(spec, cases, model, weights, cache_path, progress):
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.report import build_report_bank, generate_report, most_frequent_text

    predictor = open_contrastive(model, weights)
    bank_texts = [c["text"] for c in cases if c["role"] == "train"]
    bank = build_report_bank(predictor, bank_texts)
    constant = most_frequent_text(bank_texts)

    def predict_one(case: dict) -> dict:
        report = generate_report(predictor, read_2d(case["image"], spec.dataset.image_key), bank)
        return {"generated": report.text, "similarity": round(report.sources[0].score, 5), "baseline": constant,
                "bank_size": len(bank)}

    test = [c for c in cases if c["role"] == "test"]
    return run_cases(spec.name, test, cache_path, predict_one, progress, model=predictor), predictor.record


def summarise(spec, results: list[dict]) -> Summary:
    from medfoundry.eval.text_metrics import text_metric

    refs = [r["text"] for r in results]
    generated = [r["generated"] for r in results]
    constant = [r["baseline"] for r in results]

    def metric(name: str, predictions: list[str]):
        return lambda idx: text_metric(name, [predictions[i] for i in idx], [refs[i] for i in idx])

    per_case = [{"id": r["id"], "image": r["image"], "group": r.get("group"), "subgroups": r.get("subgroups", {}),
                 "reference": r["text"], "generated": r["generated"], "similarity": r["similarity"]} for r in results]
    extra = {"bank_size": results[0]["bank_size"] if results else 0,
             "exact_matches": int(np.sum([g.strip(" .") == t.strip(" .")
                                          for g, t in zip(generated, refs, strict=True)]))}
    if any(m.startswith("ce_") for m in spec.metrics) and results:
        from medfoundry.eval.clinical_metrics import ce_coverage, ce_per_observation

        extra["clinical_efficacy"] = {
            "references_naming_a_finding": round(ce_coverage(refs), 4),
            "per_observation": ce_per_observation(generated, refs),
            "baseline_per_observation": ce_per_observation(constant, refs),
            "positive": "extractor label positive (uncertain, negative, not mentioned: not positive)",
        }
    return Summary(per_case, {m: metric(m, generated) for m in spec.metrics},
                   {m: metric(m, constant) for m in spec.metrics}, "the bank's most frequent report for every case",
                   extra=extra)
