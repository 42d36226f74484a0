"""Print the README's table of built-in benchmark results from benchmarks/results/eval/*/results.json.

    python tools/results_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "eval"
SHOW = {"auroc": "AUROC", "balanced_accuracy": "bal. acc.", "map": "mAP", "recall@1": "R@1", "recall@10": "R@10",
        "precision@10": "P@10", "accuracy": "acc.", "recall@5": "R@5", "dice": "Dice", "nsd": "NSD@2", "hd95": "HD95",
        "bleu": "BLEU-4", "rouge_l": "ROUGE-L", "cider": "CIDEr"}


def main() -> None:
    print("| benchmark (built-in spec) | task | model | cases | result, 95 % bootstrap interval | no-model baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in sorted(ROOT.glob("*/results.json")):
        r = json.loads(path.read_text())
        names = [n for n in r["metrics"] if n in SHOW][:3]
        value = ", ".join(f"{SHOW[n]} {r['metrics'][n]['value']:.3f} [{r['metrics'][n]['ci95'][0]:.3f}, "
                          f"{r['metrics'][n]['ci95'][1]:.3f}]" for n in names)
        base = ", ".join(f"{SHOW[n]} {r['baseline'][n]:.3f}" for n in names if r["baseline"].get(n) is not None)
        link = f"[`{r['benchmark']}`](benchmarks/results/eval/{path.parent.name}/report.html)"
        model = path.parent.name.split("__", 1)[1]  # the folder names the weights (e.g. ...-v1) beside the model
        print(f"| {link} | {r['task']} | {model} | {r['config']['cases']} | {value} | "
              f"{r.get('baseline_name', '')}: {base} |")
        if "raw_pixel_baseline" in r:
            pix = r["raw_pixel_baseline"]
            print(f"| ↳ raw-pixel baseline | | | | logistic regression on 32×32 pixels, fit on {pix['train_cases']} "
                  "labelled training images: " + ", ".join(f"{SHOW[n]} {pix[n]['value']:.3f}" for n in names)
                  + " | |")
        if "mask_of_truth" in r:
            m = r["mask_of_truth"]
            print(f"| ↳ mask of truth | | | | probability shift when the lungs are hidden "
                  f"{m['shift_truth_hidden']['value']:.3f} vs an equal area elsewhere "
                  f"{m['shift_control_hidden']['value']:.3f} | |")


if __name__ == "__main__":
    main()
