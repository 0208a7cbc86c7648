"""The ``ibtest`` command line: run, list, verify, show.

Exit codes, like pytest: 0 every expected verdict held (or the certificate was confirmed),
1 an expectation did not hold (or the refutation was withdrawn), 2 a usage or input error.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

from .errors import UserError

DEFAULT_STUDY = "vardi_shamir_theorem3"


def builtin_studies() -> dict[str, Path]:
    """The YAML studies shipped in the ``ibtest_hypotheses`` package, by stem."""
    try:
        root = resources.files("ibtest_hypotheses")
    except ModuleNotFoundError:
        return {}
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_study(arg: str | None) -> Path:
    if arg is None:
        arg = DEFAULT_STUDY
    p = Path(arg)
    if p.exists():
        return p
    known = builtin_studies()
    if arg in known:
        return known[arg]
    raise UserError(f"study {arg}: no such file, and not a built-in study (built-in: {', '.join(sorted(known))})")


def _progress_factory(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    bars: dict[str, object] = {}

    def progress(phase: str, n: int):
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(desc=phase, unit="inst", leave=False, file=sys.stderr)
        bar.update(n)

    return progress


def cmd_run(args) -> int:
    from . import report
    from .api import run_study

    path = resolve_study(args.study)
    results = run_study(path, plugins=args.plugin, out_dir=args.out, progress=_progress_factory(args.quiet))
    if isinstance(results, list):
        return _print_sweep(results, args)
    res = results
    if not args.quiet:
        tt = res.triples_table()
        if tt:
            print(f"Solved triples ({res.study.solver.name} solver):")
            print(tt)
            print()
    print(res.table())
    print()
    print(res.summary())
    if not args.quiet:
        print("\nphases:")
        print(report.table(report.phase_rows(res.phases)))
    for e in res.errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"\nrun directory: {res.run_dir}")
    failed = [m for m in res.members if m.held is False]
    if failed:
        print("expectations that did not hold: " + ", ".join(f"{m.label} (expected {m.expect}, got {m.verdict})" for m in failed))
    return res.exit_code


def _print_sweep(results, args) -> int:
    from . import report

    head = results[0].study.sweep.path
    rows = []
    for r in results:
        row = {head: report.fmt_num(r.sweep_value) if isinstance(r.sweep_value, float) else r.sweep_value}
        counts = report.status_counts(r.triples)
        row["statuses"] = ", ".join(f"{k} {v}" for k, v in counts.items())
        t = r.triples
        study_idx = [i for i in range(len(t)) if t.origin[i] == "study"]
        if len(study_idx) <= 6:
            model = r.study.model.spec.factory(**r.study.model.options)
            for i in study_idx:
                row[f"predictor: {t.labels[i]}"] = report.fmt_vec(model.predictor(t.theta[i][None])[0], 5)
        for m in r.members:
            row[m.label] = m.verdict
        rows.append(row)
    print(f"Sweep over {head}:")
    print(report.table(rows))
    for r in results:
        for m in r.members:
            if m.certificate:
                print(f"  {head}={r.sweep_value}: {m.label}: certificate {m.certificate}")
    print(f"\nrun directories: {results[0].run_dir.parent if results[0].run_dir else '-'}")
    return 0 if all(r.expectations_held for r in results) else 1


def cmd_list(args) -> int:
    from . import report
    from .manager import load_registry

    reg = load_registry(args.plugin)
    for kind in ("models", "datasets", "inits", "solvers", "constructions", "hypotheses"):
        rows = []
        for name in reg.names(kind):
            item = reg.items[kind][name]
            doc = (item.spec.doc or "").strip().splitlines()[0] if item.spec.doc else ""
            extra = ""
            if kind == "hypotheses":
                extra = f"[{item.spec.kind}, depends on {item.spec.depends_on}, on {item.spec.on}] "
            rows.append({"name": name, "doc": extra + doc, "source": f"{item.plugin} ({item.source})"})
        print(f"{kind}:")
        print(report.table(rows))
        print()
    studies = builtin_studies()
    if studies:
        print("built-in studies: " + ", ".join(sorted(studies)))
    return 0


def cmd_verify(args) -> int:
    from .certificate import verify

    res = verify(args.certificate, args.plugin)
    print("\n".join(res.lines))
    return 0 if res.holds else 1


def cmd_show(args) -> int:
    from .show import show

    return show(args.certificate, plot=args.plot, plugins=args.plugin)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ibtest", description="Test conjectures about the implicit regularization of gradient flow.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"ibtest {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    plug = argparse.ArgumentParser(add_help=False)
    plug.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a local plugin file (repeatable)")

    r = sub.add_parser("run", parents=[plug], help="run a YAML study (default: the paper's Theorem 3 study)")
    r.add_argument("study", nargs="?", help=f"study file or built-in study name (default {DEFAULT_STUDY})")
    r.add_argument("--out", help="run directory (default runs/<study>-<time>)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no triples table")
    r.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", parents=[plug], help="list every registered plugin with its source and doc")
    lst.set_defaults(func=cmd_list)

    v = sub.add_parser("verify", parents=[plug], help="re-solve a certificate and confirm or withdraw it")
    v.add_argument("certificate")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("show", parents=[plug], help="print a certificate's counterexample (and plot it)")
    s.add_argument("certificate")
    s.add_argument("--plot", metavar="FILE.png", help="draw the counterexample into a PNG file")
    s.set_defaults(func=cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ibtest: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ibtest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
