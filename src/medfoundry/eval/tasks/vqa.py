"""Closed-ended visual question answering: every case gets the spec's ``question``; the answer's first word is
compared with the answer its label expects (``answers``: label → ``yes``/``no`` or any closed set of words).

An answer that does not start with one of the allowed words counts as wrong and as unanswered
(``answer_rate``). Baseline: the most frequent expected answer, given to every case.

Contrastive models (the embedded CLIP ...) answer as zero-shot classifiers: each label of ``answers`` is scored
against the image (its prompts from the record's label set ``label_set`` when it has one, else the record's
templates, as the zero-shot specs do) and the best label's answer is the model's answer.
"""

from __future__ import annotations

import re

import numpy as np

from medfoundry.eval.tasks import Summary, read_2d, run_cases


def parse_answer(text: str, allowed: list[str]) -> str | None:
    """The allowed answer a generated text starts with (case and punctuation ignored), else None."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if not words:
        return None
    for answer in sorted(allowed, key=len, reverse=True):  # longest first: "no finding" before "no"
        parts = re.findall(r"[a-z0-9]+", answer.lower())
        if words[: len(parts)] == parts:
            return answer
    return None


def vqa_metric(name: str, predicted: list[str | None], expected: list[str]) -> float:
    """``accuracy``, ``balanced_accuracy`` (mean per-answer recall) or ``answer_rate`` of parsed answers."""
    pred = np.array([p if p is not None else "" for p in predicted], dtype=object)
    want = np.array(expected, dtype=object)
    if name == "accuracy":
        return float(np.mean(pred == want))
    if name == "balanced_accuracy":
        return float(np.mean([np.mean(pred[want == a] == a) for a in sorted(set(want))]))
    if name == "answer_rate":
        return float(np.mean([p is not None for p in predicted]))
    raise ValueError(f"unknown VQA metric {name!r}")


def _predict_zero_shot(spec, cases, model, weights, cache_path, progress):
    """A contrastive model as a closed-question answerer: the zero-shot label's answer."""
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.zero_shot import label_set, zero_shot_classify

    predictor = open_contrastive(model, weights)
    labels = list(spec.answers)
    prompts = None
    if spec.label_set and spec.label_set in predictor.record.label_sets:
        prompts = {lab: texts for lab, texts in label_set(predictor, spec.label_set).items() if lab in labels}
    allowed = sorted(set(spec.answers.values()))

    def predict_one(case: dict) -> dict:
        image = read_2d(case["image"], spec.dataset.image_key)
        probs = zero_shot_classify(predictor, [image], labels, templates=spec.templates or None,
                                   prompts=prompts).probs[0]
        text = spec.answers[labels[int(np.argmax(probs))]]
        return {"answer": text, "parsed": parse_answer(text, allowed), "expected": spec.answers[case["label"]],
                "answerer": "zero-shot", "probs": probs.round(6).tolist()}

    return run_cases(spec.name, cases, cache_path, predict_one, progress, model=predictor), predictor.record


def predict(spec, cases, model, weights, cache_path, progress):
    from medfoundry.predict.conversational import open_chat
    from medfoundry.registry.loading import resolve_model

    record, _ = resolve_model(model, weights)
    if "vqa" not in record.tasks and "zero-shot-classification" in record.tasks:
        return _predict_zero_shot(spec, cases, model, weights, cache_path, progress)
    chat = open_chat(model, weights)
    allowed = sorted(set(spec.answers.values()))

    def predict_one(case: dict) -> dict:
        answer = chat.ask(read_2d(case["image"], spec.dataset.image_key), spec.question, max_new_tokens=16)
        return {"answer": answer.text, "parsed": parse_answer(answer.text, allowed),
                "expected": spec.answers[case["label"]]}

    return run_cases(spec.name, cases, cache_path, predict_one, progress, model=chat), chat.record


def summarise(spec, results: list[dict]) -> Summary:
    expected = [r["expected"] for r in results]
    parsed = [r["parsed"] for r in results]
    values, counts = np.unique(np.array(expected, dtype=object), return_counts=True)
    majority = str(values[np.argmax(counts)])

    def metric(name: str, predictions: list[str | None]):
        return lambda idx: vqa_metric(name, [predictions[i] for i in idx], [expected[i] for i in idx])

    per_case = [{"id": r["id"], "image": r["image"], "group": r.get("group"), "subgroups": r.get("subgroups", {}),
                 "label": r["label"], "expected": r["expected"], "answer": r["answer"], "parsed": r["parsed"],
                 **({"probs": r["probs"]} if "probs" in r else {})}
                for r in results]
    constant = [majority] * len(results)
    return Summary(per_case, {m: metric(m, parsed) for m in spec.metrics},
                   {m: metric(m, constant) for m in spec.metrics},
                   f"the most frequent expected answer ({majority!r}) for every case")
