"""The long hostile-input run: mutated copies of a corpus of real files through ``read_image`` (+ ``to_display``
and ``summary``) and through the web app's upload route, in worker subprocesses with an address-space limit.

Corpus: every test file pydicom and nibabel ship, a few samples of each ``../shared/data`` folder when present,
two DICOM series folders (pydicom's CT5N and MR700, read as folders and as zips) and a DICOM SEG written by
medfoundry on CT5N. Each case applies one mutation of ``medfoundry.io.fuzz.MUTATIONS`` (truncation, bit flips,
byte insertions/deletions, swapped or duplicated DICOM elements, wrong lengths, huge declared dimensions; zero-
and one-byte files come from truncation) with its own seed, under a name whose extension lies in 15 % of cases.

Outcome classes: ``success``, ``typed:<Error>`` (4xx JSON for the server), ``untyped:<Exception>`` (500 or a
crash for the server) and ``hang`` (over ``--timeout`` seconds, or a worker that stops answering).

    nice -n 10 python tools/fuzz_readers.py --cases 6000 --out benchmarks/results/fuzz_readers.json

Baseline (``benchmarks/results/fuzz_readers_baseline.json``): the same cases against the readers before issue 21,
with this harness's ``io/fuzz.py`` added to that tree::

    git archive 2578831 src | tar -x -C BASE && cp src/medfoundry/io/fuzz.py BASE/src/medfoundry/io/
    nice -n 10 python tools/fuzz_readers.py --cases 6000 --src BASE/src --label "readers of commit 2578831 \
        (before issue 21), same harness" --out benchmarks/results/fuzz_readers_baseline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERIES = ("98892001/CT5N", "98892003/MR700")


# -- corpus --------------------------------------------------------------------------------------------------
def corpus(shared: Path | None, generated: Path) -> list[tuple[str, str]]:
    """(label, path) pairs: labels are what the results file shows (no machine paths)."""
    import nibabel
    import pydicom.data

    from medfoundry.io import fuzz

    pyd, nib = Path(pydicom.data.__file__).parent, Path(nibabel.__file__).parent
    out = []
    for p in fuzz.package_corpus():
        label = f"pydicom:{p.relative_to(pyd)}" if p.is_relative_to(pyd) else f"nibabel:{p.relative_to(nib)}"
        out.append((label, str(p)))
    for p in fuzz.shared_corpus(shared):
        out.append((f"shared:{p.relative_to(shared)}", str(p)))
    for name in SERIES:
        out.append((f"series:{name}", str(pyd / "test_files" / "dicomdirtests" / name)))
        out.append((f"zip-series:{name}", str(pyd / "test_files" / "dicomdirtests" / name)))
    seg = _write_seg(pyd / "test_files" / "dicomdirtests" / SERIES[0], generated)
    if seg is not None:
        out.append(("generated:CT5N_seg.dcm", str(seg)))
    return out


def _write_seg(series: Path, folder: Path) -> Path | None:
    """A DICOM SEG of a box in the CT5N series, written by medfoundry (None without highdicom)."""
    import numpy as np

    try:
        from medfoundry.io.dicom_seg import write_dicom_seg

        mask = np.zeros((5, 16, 16), bool)
        mask[1:4, 4:12, 5:11] = True
        return write_dicom_seg(mask, series, folder / "CT5N_seg.dcm", overwrite=True)
    except ImportError:
        return None


def scrub(text: str) -> str:
    """A detail without the worker's temporary folder (the results name cases by label, not by machine path)."""
    return re.sub(r"\S*mf-fuzz-[^/\s]+/[^/\s]+/", "", text)


# -- worker: runs cases, one JSON line each ------------------------------------------------------------------
def _materialise(label: str, source: str, mutation: str, seed: int, tmp: Path) -> tuple[Path, bytes | None, str]:
    """Write one mutated case under ``tmp``; returns (path to read, bytes to upload or None, upload name)."""
    from medfoundry.io import fuzz

    rng = random.Random(seed)
    mutate = fuzz.MUTATIONS[mutation]
    if label.startswith(("series:", "zip-series:")):
        folder = tmp / "series"
        shutil.copytree(source, folder)
        victim = rng.choice(sorted(folder.iterdir()))
        victim.write_bytes(mutate(victim.read_bytes(), rng))
        if label.startswith("series:"):
            return folder, None, ""
        target = tmp / "series.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                z.write(f, f"series/{f.name}")
        return target, target.read_bytes(), "series.zip"
    data = mutate(Path(source).read_bytes(), rng)
    name = fuzz.mutated_name(Path(source), rng)
    target = tmp / name
    target.write_bytes(data)
    return target, data, name


def _upload(client, name: str, data: bytes, timeout_s: float) -> tuple[str, str]:
    import signal

    from medfoundry.io import fuzz

    previous = signal.signal(signal.SIGALRM, fuzz._alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        r = client.post("/api/images", files={"file": (name, data, "application/octet-stream")})
        if r.status_code == 200:
            p = client.get(f"/api/images/{r.json()['id']}/preview.png")
            return ("success", "") if p.status_code == 200 else (f"untyped:preview-{p.status_code}", p.text[:300])
        try:
            body = r.json()
        except ValueError:
            body = {}
        if 400 <= r.status_code < 500 and "detail" in body:
            return f"typed:{r.status_code}:{body.get('error', 'validation')}", str(body["detail"])[:300]
        return f"untyped:http-{r.status_code}", r.text[:300]
    except fuzz.CaseTimeout:
        return "hang", f"over {timeout_s} s"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return f"untyped:{type(exc).__name__}", str(exc)[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def worker(batch_file: str) -> None:
    """Run the cases listed in ``batch_file``; print one JSON line before and after each."""
    warnings.simplefilter("ignore")
    spec = json.loads(Path(batch_file).read_text())
    limit = spec["rlimit_as"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from fastapi.testclient import TestClient

    from medfoundry.io import fuzz
    from medfoundry.serve.app import create_app
    from medfoundry.serve.workbench import Workbench

    base = tempfile.mkdtemp(prefix="mf-fuzz-")
    bench = Workbench(store=Path(base) / "store", max_upload_bytes=64 << 20, max_images=2)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ready": True, "rss_kib": baseline_rss}), flush=True)
    with TestClient(create_app(bench), raise_server_exceptions=False) as client:
        for case in spec["cases"]:
            print(json.dumps({"start": case["i"]}), flush=True)
            tmp = Path(tempfile.mkdtemp(dir=base))
            t0 = time.perf_counter()
            path, data, name = _materialise(case["label"], case["source"], case["mutation"], case["seed"], tmp)
            direct, detail = fuzz.probe(path, spec["timeout"])
            t1 = time.perf_counter()
            server, sdetail = _upload(client, name, data, spec["timeout"]) if data is not None else ("skipped", "")
            t2 = time.perf_counter()
            shutil.rmtree(tmp, ignore_errors=True)
            print(json.dumps({"i": case["i"], "direct": direct, "detail": scrub(detail), "server": server,
                              "server_detail": scrub(sdetail), "read_s": t1 - t0, "upload_s": t2 - t1,
                              "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
            if "hang" in (direct, server) or (server.startswith("untyped:") and "http-" not in server
                                              and "preview-" not in server):
                os._exit(3)  # a timed-out call may still run, or the test client broke: start a fresh worker
    bench.close()
    shutil.rmtree(base, ignore_errors=True)


# -- parent --------------------------------------------------------------------------------------------------
def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _run_batch(cases: list[dict], args: argparse.Namespace, env: dict) -> tuple[list[dict], list[int]]:
    """Run ``cases`` in workers (restarting after a hang or a crash); returns (results, per-worker peak KiB)."""
    results: dict[int, dict] = {}
    peaks = []
    pending = list(cases)
    while pending:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump({"cases": pending, "timeout": args.timeout, "rlimit_as": args.rlimit_gib << 30}, fh)
        proc = subprocess.Popen([sys.executable, __file__, "--worker", fh.name], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, peak = None, 0
        while True:
            try:
                line = lines.get(timeout=args.timeout * 3 + 30)
            except queue.Empty:  # the worker stopped answering: the current case hangs
                proc.kill()
                line = None
                if current is not None:
                    results[current] = {"i": current, "direct": "hang", "detail": "worker stopped answering",
                                        "server": "hang", "server_detail": ""}
            if line is None:
                break
            msg = json.loads(line)
            peak = max(peak, msg.get("rss_kib", 0))
            if "start" in msg:
                current = msg["start"]
            elif "i" in msg:
                results[msg["i"]] = msg
                current = None
        proc.wait()
        os.unlink(fh.name)
        peaks.append(peak)
        if current is not None and current not in results:  # the worker died inside a case
            results[current] = {"i": current, "direct": f"untyped:worker-exit-{proc.returncode}", "detail": "",
                                "server": "skipped", "server_detail": ""}
        pending = [c for c in pending if c["i"] not in results]
    return [results[c["i"]] for c in cases], peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cases", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=20260521)
    ap.add_argument("--batch", type=int, default=500, help="cases per worker process")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per read and per upload")
    ap.add_argument("--rlimit-gib", type=int, default=4, help="address-space limit of each worker (GiB)")
    ap.add_argument("--max-image-mib", type=int, default=512, help="MEDFOUNDRY_MAX_IMAGE_BYTES for the run")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--src", default=str(ROOT / "src"), help="medfoundry source tree the workers import")
    ap.add_argument("--label", default="this checkout", help="what --src is, for the results file")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_readers.json"))
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    sys.path.insert(0, args.src)
    warnings.simplefilter("ignore")
    env = {**os.environ, "PYTHONPATH": args.src, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MEDFOUNDRY_MAX_IMAGE_BYTES": str(args.max_image_mib << 20)}
    shared = Path(args.shared) if (Path(args.shared) / "INDEX.md").is_file() else None
    with tempfile.TemporaryDirectory() as generated:
        files = corpus(shared, Path(generated))
        from medfoundry.io import fuzz

        rng = random.Random(args.seed)
        mutations = sorted(fuzz.MUTATIONS)
        cases = []
        for i in range(args.cases):
            label, source = files[i % len(files)] if i < len(files) else rng.choice(files)
            cases.append({"i": i, "label": label, "source": source, "mutation": rng.choice(mutations),
                          "seed": rng.randrange(2**32)})
        t0 = time.time()
        results, peaks = [], []
        for start in range(0, len(cases), args.batch):
            part, part_peaks = _run_batch(cases[start : start + args.batch], args, env)
            results += part
            peaks += part_peaks
            print(f"{start + len(part)}/{len(cases)} cases, {time.time() - t0:.0f} s", flush=True)
        wall = time.time() - t0
        provenance = _provenance(args, files)  # while the generated corpus files still exist
    write_results(args, files, cases, results, peaks, wall, shared is not None, provenance)


def _provenance(args, files) -> dict:
    """collect()'s record of the run (corpus hash, arguments, code, machine). For an older tree given as --src
    (the baseline, which has no provenance module) it is collected by this checkout's src in a subprocess:
    its ``code`` is then the harness's checkout, and the results' ``code`` (--label) says which readers ran."""
    paths = [path for _, path in files]
    try:
        from medfoundry.eval.provenance import collect
    except ImportError:
        script = ("import json, sys; from pathlib import Path; from medfoundry.eval.provenance import collect; "
                  "a = json.load(sys.stdin); sys.argv = a['argv']; "
                  "print(json.dumps(collect(data=[Path(p) for p in a['paths']], settings=a['settings'])))")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                              input=json.dumps({"argv": sys.argv, "paths": paths, "settings": vars(args)}))
        return json.loads(done.stdout)
    return collect(data=[Path(p) for p in paths], settings=args)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        return platform.processor()


def write_results(args, files, cases, results, peaks, wall, shared_present, provenance=None) -> None:
    import nibabel
    import numpy
    import PIL
    import pydicom
    import tifffile

    by_direct = Counter(r["direct"] for r in results)
    by_server = Counter(r["server"] for r in results)
    bad = [{"case": c["label"], "mutation": c["mutation"], "seed": c["seed"], "direct": r["direct"],
            "detail": r.get("detail", ""), "server": r["server"], "server_detail": r.get("server_detail", "")}
           for c, r in zip(cases, results, strict=True)
           if not (r["direct"] == "success" or r["direct"].startswith("typed:"))
           or not (r["server"] in ("success", "skipped") or r["server"].startswith("typed:"))]
    per_mutation: dict[str, Counter] = {}
    for c, r in zip(cases, results, strict=True):
        per_mutation.setdefault(c["mutation"], Counter())[r["direct"].split(":")[0]] += 1
    read_s = [r["read_s"] for r in results if "read_s" in r]
    kinds = Counter(label.split(":")[0] for label, _ in files)
    summary = {
        "what": "mutated corpus files through medfoundry.io.read_image (+ to_display, summary) and the web app's "
                "upload route (+ preview); tools/fuzz_readers.py",
        "code": args.label,
        "command": f"nice -n 10 python tools/fuzz_readers.py --cases {args.cases} --seed {args.seed}",
        "cases": len(results),
        "corpus_files": len(files), "corpus_by_kind": dict(kinds), "shared_data_present": shared_present,
        "mutations": sorted(per_mutation),
        "outcomes_read_image": dict(by_direct.most_common()),
        "outcomes_upload_route": dict(by_server.most_common()),
        "outcome_class_by_mutation": {k: dict(v) for k, v in sorted(per_mutation.items())},
        "untyped_read_image": sum(v for k, v in by_direct.items() if k.startswith("untyped")),
        "untyped_upload_route": sum(v for k, v in by_server.items() if k.startswith("untyped")),
        "hangs": by_direct.get("hang", 0) + by_server.get("hang", 0),
        "failures": bad[:50],
        "time_s": round(wall, 1),
        "read_seconds_mean": round(sum(read_s) / max(len(read_s), 1), 4),
        "read_seconds_max": round(max(read_s, default=0.0), 3),
        "slowest_read": max(((r.get("read_s", 0.0), c["label"], c["mutation"]) for c, r in zip(cases, results,
                                                                                              strict=True)),
                            default=None),
        "per_case_timeout_s": args.timeout,
        "peak_rss_mib": round(max(peaks, default=0) / 1024, 1),
        "worker_address_space_limit_gib": args.rlimit_gib,
        "MEDFOUNDRY_MAX_IMAGE_BYTES": args.max_image_mib << 20,
        "workers": len(peaks),
        "cpu_model": _cpu_model(),
        "versions": {"python": platform.python_version(), "pydicom": pydicom.__version__,
                     "nibabel": nibabel.__version__, "Pillow": PIL.__version__, "numpy": numpy.__version__,
                     "tifffile": tifffile.__version__},
        "provenance": provenance,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("cases", "outcomes_read_image", "outcomes_upload_route",
                                               "untyped_read_image", "untyped_upload_route", "hangs",
                                               "peak_rss_mib", "time_s")}, indent=2))


if __name__ == "__main__":
    main()
