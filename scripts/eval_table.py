"""The evaluation table of the README: every method on a fixed evaluation set -> docs/evaluation.md.

Runs `neuroscope.evaluation.evaluate` with every registered method that fits the model (default
parameters, the CONTRACT's default layer), a random-map reference row, and the cascading
sanity check on the set's first item; writes the Markdown table (methods that do not beat a
random map on the pointing game are flagged; sanity failures listed) and a JSON file with the
numbers. Work is split over `--jobs` processes (one torch thread each: on a shared 2-core
machine that beats one process with two threads).

    python scripts/eval_table.py                               # drivescene-seg on drivescene-eval
    python scripts/eval_table.py --model mobilenet_v2-imagenet --set photos-eval \
        --out docs/evaluation-photos.md
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Rough relative cost of a method on the evaluation set (for splitting the work).
COST = {"pda": 4, "occlusion": 4, "rise": 4, "score-cam": 3, "ablation-cam": 3, "integrated-gradients": 2,
        "segmented-score-map": 2, "guided-segmented-score-map": 2, "similarity-map": 2}
#: Settings of the two sliding-window methods in the table (their defaults cost ~2000 model
#: passes per 256x512 scene each); `--default-params` uses the registry defaults instead.
TABLE_PARAMS = {"occlusion": {"window": 32, "stride": 16}, "pda": {"window": 32, "stride": 32}}
#: Cheaper settings of the slowest methods for the sanity check only (it runs every method
#: once per randomisation step); the table itself uses the defaults.
SANITY_PARAMS = {"pda": {"stride": 32}, "occlusion": {"window": 32, "stride": 32}, "rise": {"masks": 100},
                 "score-cam": {"top": 32}, "ablation-cam": {"top": 32}}


def worker(task: tuple) -> tuple:
    """("eval", methods, with_random) -> Report; ("sanity", methods) -> ({method: SanityResult}, errors)."""
    kind, model, set_name, methods, steps, with_random, sanity_steps, threads, index, table_params = task
    import torch
    torch.set_num_threads(threads)
    from neuroscope import Explainer, load_model
    from neuroscope.evaluation import evaluate, get_eval_set, resolve_item, sanity_per_method
    ex = Explainer(load_model(model))
    items = get_eval_set(set_name).build()
    last = [0.0]

    def progress(f: float, msg: str) -> bool:
        now = time.time()
        if now - last[0] > 60:
            last[0] = now
            print(f"[task {index}] {f:6.1%} {msg}", file=sys.stderr, flush=True)
        return True

    t0 = time.time()
    if kind == "eval":
        out = evaluate(ex, items, methods, steps=steps, with_random=with_random, params=table_params,
                       progress=progress, strict=False)
    else:
        prep, _, rt = resolve_item(ex, items[0])
        params = {n: {**table_params.get(n, {}), **SANITY_PARAMS.get(n, {})} for n in methods}
        results, errors = sanity_per_method(ex, prep, rt, methods, max_steps=sanity_steps, params=params,
                                            progress=progress)
        out = (results, [f"{n}: sanity check: {e}" for n, e in errors.items()])
    print(f"[task {index}] {kind} done in {time.time() - t0:.0f} s: {', '.join(methods)}", file=sys.stderr, flush=True)
    return index, kind, out


def split(methods: list[str], parts: int) -> list[list[str]]:
    """Greedy balance by estimated cost."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for m in sorted(methods, key=lambda m: -COST.get(m, 1)):
        i = min(range(parts), key=lambda j: load[j])
        groups[i].append(m)
        load[i] += COST.get(m, 1)
    return [g for g in groups if g]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--set", dest="eval_set", default="drivescene-eval")
    ap.add_argument("--methods", default="all", help="comma list or 'all'")
    ap.add_argument("--steps", type=int, default=50, help="deletion/insertion steps")
    ap.add_argument("--sanity-steps", type=int, default=6, help="cascade steps of the sanity check (0: none)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--default-params", action="store_true",
                    help="registry defaults for occlusion and pda too (about 4x slower on 256x512 scenes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--out", default=str(ROOT / "docs" / "evaluation.md"))
    ap.add_argument("--json", help="numbers as JSON (default: --out with .json)")
    args = ap.parse_args()

    from neuroscope.errors import NeuroscopeError
    from neuroscope.evaluation import EVAL_SETS, Report, markdown, methods_for, sanity_markdown
    from neuroscope.zoo import bundled_specs, read_spec
    specs = bundled_specs()
    if args.model not in specs and not args.model.endswith(".toml"):
        print(f"model {args.model} is not bundled yet (assets/models/{args.model}.toml): run this script once "
              f"it is", file=sys.stderr)
        return 2
    spec = read_spec(specs.get(args.model, args.model))
    if args.eval_set not in EVAL_SETS or EVAL_SETS[args.eval_set].task != spec.task:
        print(f"set {args.eval_set} does not fit {spec.name} ({spec.task})", file=sys.stderr)
        return 2
    if args.methods == "all":
        methods = [m.name for m in methods_for(spec.task, spec.framework)]
    else:
        methods = [m for m in args.methods.split(",") if m]
    jobs = max(1, args.jobs)
    common = (args.model, args.eval_set)
    table_params = {} if args.default_params else {m: p for m, p in TABLE_PARAMS.items() if m in methods}
    tasks = [("eval", *common, g, args.steps, i == 0, 0, args.threads, i, table_params)
             for i, g in enumerate(split(methods, 2 * jobs))]
    if args.sanity_steps > 0:
        tasks += [("sanity", *common, g, args.steps, False, args.sanity_steps, args.threads, len(tasks) + i,
                   table_params) for i, g in enumerate(split(methods, 2))]
    t0 = time.time()
    try:
        if jobs == 1:
            results = [worker(t) for t in tasks]
        else:
            with mp.get_context("spawn").Pool(jobs) as pool:
                results = list(pool.imap_unordered(worker, tasks))
    except NeuroscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.time() - t0
    reports = [out for _, kind, out in sorted(results, key=lambda r: r[0]) if kind == "eval"]
    sanity, sanity_errors = {}, []
    for _, kind, out in results:
        if kind == "sanity":
            sanity.update(out[0])
            sanity_errors += out[1]
    merged = Report({m: next(r.methods[m] for r in reports if m in r.methods) for m in methods},
                    reports[0].random, reports[0].random_pointing_game,
                    {m: sanity[m] for m in methods if m in sanity}, reports[0].items)
    table = markdown(merged, with_random=True, flag_pointing=True).split("\n\n")[0]
    ref = merged.random_pointing_game
    flagged = [n for n, r in merged.methods.items() if r.mean("pointing_game") is not None
               and ref is not None and r.mean("pointing_game") <= ref]
    failing = [n for n, s in merged.sanity.items() if not s.passed]
    errors = [f"- {n}: {e}" for n, r in merged.methods.items() for e in r.errors] + [f"- {e}" for e in sanity_errors]
    es = EVAL_SETS[args.eval_set]
    lines = [
        f"# Evaluation of the explanation methods: {spec.name} on `{args.eval_set}`", "",
        f"Produced by `python scripts/eval_table.py --model {args.model} --set {args.eval_set}` "
        f"({len(merged.items)} items: {es.description}; {elapsed / 60:.0f} min on {os.cpu_count()} CPUs). "
        "Each method runs with its default parameters and the default layer"
        + (" except " + ", ".join(f"{m} {' '.join(f'{k}={v}' for k, v in p.items())}" for m, p in table_params.items())
           + " (the defaults cost ~2000 model passes per scene)" if table_params else "")
        + ". Metrics (METHODS.md §9): "
        f"deletion / insertion AUC of the target's probability over {args.steps} steps (deletion to black, "
        "insertion from the blurred image; lower deletion and higher insertion are better), pointing game "
        "(15 px tolerance) and energy pointing game against the object's instance mask, localisation IoU "
        "(map / max|map| thresholded at 0.1 … 0.9; best and mean), explanation time. Means over the items.",
        "",
        f"The `random` row is a seeded uniform random map; its pointing game is the exact expected hit rate "
        f"of a random map ({ref:.3f})." if ref is not None else "",
        "", table, "",
    ]
    lines.append(f"**Methods that do not beat a random map on the pointing game:** "
                 f"{', '.join(flagged) if flagged else 'none'}.")
    if merged.sanity:
        cheap = ", ".join(f"{m} {' '.join(f'{k}={v}' for k, v in p.items())}" for m, p in SANITY_PARAMS.items()
                          if m in methods)
        lines += ["", f"## Sanity check (cascading randomisation, first item, {args.sanity_steps} steps)", "",
                  "Weights re-drawn from a Gaussian with each tensor's mean and std, top layer first, on a copy "
                  "of the model; Spearman rank correlation with the original map."
                  + (f" Cheaper settings here only: {cheap}." if cheap else ""), "", sanity_markdown(merged.sanity), "",
                  f"**Methods that fail the sanity check** (rank correlation ≥ 0.5 after full randomisation): "
                  f"{', '.join(failing) if failing else 'none'}."]
    if errors:
        lines += ["", "## Errors", "", *errors]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    data = {"model": spec.name, "set": args.eval_set, "items": merged.items, "steps": args.steps,
            "random_pointing_game": ref, **merged.as_json(),
            "random": merged.random.as_json() if merged.random else None,
            "per_item": {n: [s.as_json() for s in r.items] for n, r in merged.methods.items()},
            "flagged_pointing": flagged, "sanity_failures": failing, "minutes": elapsed / 60}
    Path(args.json or out.with_suffix(".json")).write_text(json.dumps(data, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
