"""The ``ibtest`` command line: run, fit, list, verify, shrink, show.

Exit codes, like pytest: 0 every expected verdict held (or the certificate was confirmed),
1 an expectation did not hold (or the refutation was withdrawn), 2 a usage or input error.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ibtest.base.errors import UserError
from ibtest.base.guard import user_interrupts
from ibtest.base.outpath import output_dir, output_file, save_figure, writing
from ibtest.base.textsafe import clean, clean_tree as _clean_tree, fit_stream

MULTILINE = frozenset({"description", "summary"})  # stored free text whose line breaks are its own


def clean_tree(obj):
    """Stored results made safe to print (see :mod:`ibtest.base.textsafe`); paragraphs keep their breaks."""
    return _clean_tree(obj, MULTILINE)

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


def cmd_run(args) -> int:
    from ibtest._startup import gc_paused

    with gc_paused():  # pydantic, the plugins: long-lived import-time objects
        from ibtest.api import resume_run, run_study
        from ibtest.base.progress import Progress
        from ibtest.out import report

    progress = Progress(enabled=False if args.quiet else None)
    plot = output_file(args.plot, flag="--plot", default_name="gaps.png", suffix=".png") if args.plot else None
    if args.resume:
        if args.study:
            raise UserError("give either a study or --resume RUN, not both")
        results = resume_run(args.resume, plugins=args.plugin, progress=progress, executor=args.executor)
    else:
        results = run_study(resolve_study(args.study), plugins=args.plugin, out_dir=args.out, progress=progress,
                            executor=args.executor)
    if isinstance(results, list):
        return _print_sweep(results, args)
    res = results
    print(report.render_table(clean_tree(res.json_cache or res.to_json()), verbose=not args.quiet))
    if plot is not None:
        from ibtest.out.plots import plot_run

        print(f"\nfigure written to {clean(save_figure(plot_run, plot, res))}")
    for e in res.errors:
        print(f"error: {clean(e)}", file=sys.stderr)
    print(f"\nrun directory: {clean(res.run_dir)}")
    failed = [m for m in res.members if m.held is False]
    if failed:
        print("expectations that did not hold: "
              + ", ".join(f"{clean(m.label)} (expected {m.expect}, got {m.verdict})" for m in failed))
    return res.exit_code


def _print_sweep(results, args) -> int:
    from ibtest.out import report

    payload = clean_tree(results.to_json())
    print(report.render_sweep(payload["runs"], payload["sweep"], payload.get("limits")))
    print(f"\nrun directory: {clean(results[0].run_dir.parent) if results[0].run_dir else '-'}")
    failed = [f"{clean(m.label)} at {payload['sweep']}={clean(str(r.sweep_value))} (expected {m.expect}, got {m.verdict})"
              for r in results for m in r.members if m.held is False]
    failed += [f"{clean(v.label)} as {payload['sweep']} -> {v.toward} (expected {v.expect}, got {v.verdict})"
               for v in results.limits if v.held is False]
    if failed:
        print("expectations that did not hold: " + ", ".join(failed))
    return results.exit_code


def _rendering(runs: str) -> contextlib.AbstractContextManager[None]:
    """Stored results that pass the shape check but still break the renderer are damaged."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise UserError(f"run {runs}: the stored results are damaged and cannot be rendered "
                            f"({type(exc).__name__}: {exc})") from None

    return guard()


def cmd_report(args) -> int:
    from ibtest.api import load_results
    from ibtest.out import report

    res = clean_tree(load_results(args.run))  # a stored run is data: no control characters reach the terminal
    with _rendering(args.run):
        if "runs" in res:  # a sweep
            if args.format == "json":
                import json

                text = json.dumps(res, indent=1)
            else:
                text = report.render_sweep(res["runs"], res["sweep"], res.get("limits"))
        else:
            text = report.render(res, args.format)
    print(text)
    return 0


def cmd_diff(args) -> int:
    from ibtest.api import load_results
    from ibtest.out import report

    a, b = clean_tree(load_results(args.run_a)), clean_tree(load_results(args.run_b))
    with _rendering(f"{args.run_a} or {args.run_b}"):
        why = report.sweep_mismatch(a, b, (clean(args.run_a), clean(args.run_b)))
        if why is not None:
            raise UserError(f"diff compares two single runs, or two sweeps over the same values: {why}")
        lines = report.diff_sweeps(a, b) if "runs" in a else report.diff(a, b)
    if not lines:
        print(f"no differences between {clean(args.run_a)} and {clean(args.run_b)}")
        return 0
    print(f"differences from {clean(args.run_a)} (A) to {clean(args.run_b)} (B):")
    print("\n".join(f"  {l}" for l in lines))
    return 1


def cmd_new(args) -> int:
    from ibtest.templates import write_template

    d = output_dir(args.dir, flag="--dir")
    with writing(d, "the template into"):
        paths = write_template(args.kind, args.name, d)
    for p in (paths if isinstance(paths, (list, tuple)) else [paths]):
        print(f"wrote {clean(p)}")
    return 0


def cmd_list(args) -> int:
    from ibtest.out import report
    from ibtest.plugin.manager import load_registry

    reg = load_registry(args.plugin)
    for kind in ("models", "datasets", "inits", "solvers", "constructions", "hypotheses", "executors", "families"):
        rows = []
        for name in reg.names(kind):
            item = reg.items[kind][name]
            doc = (item.spec.doc or "").strip().splitlines()[0] if (item.spec.doc or "").strip() else ""
            extra = ""
            if kind == "hypotheses":
                extra = f"[{item.spec.kind}, depends on {item.spec.depends_on}, on {item.spec.on}] "
            # a plugin's name, doc and file name are its own text: shown inert, one line each
            rows.append({"name": clean(name), "doc": clean(extra + doc), "source": clean(f"{item.plugin} ({item.source})")})
        print(f"{kind}:")
        print(report.table(rows))
        print()
    studies = builtin_studies()
    if studies:
        print("built-in studies: " + ", ".join(sorted(studies)))
    return 0


def cmd_verify(args) -> int:
    from ibtest.cert.replay import verify

    res = verify(args.certificate, args.plugin)
    print("\n".join(clean(line) for line in res.lines))
    return 0 if res.holds else 1


def cmd_shrink(args) -> int:
    from ibtest.cert.shrink import DEFAULT_BUDGET, NotRefuted, shrink_file, summary

    out = None
    if args.out:
        stem = Path(args.certificate).stem
        out = output_file(args.out, flag="-o", default_name=f"{stem}.shrunk.json")
    try:
        dest, res = shrink_file(args.certificate, out, args.budget if args.budget is not None else DEFAULT_BUDGET,
                                plugins=args.plugin)
    except NotRefuted as exc:
        print(f"ibtest shrink: {clean(args.certificate)}: {clean(exc)}")
        return 1
    print("\n".join(clean(line) for line in summary(dest, res)))
    return 0


def cmd_fit(args) -> int:
    from ibtest.propose.study import fit_study

    families = None if not args.family else (args.family[0] if len(args.family) == 1 else list(args.family))
    res = fit_study(resolve_study(args.study), family=families, plugins=args.plugin, out_dir=args.out,
                    strict=args.strict)
    reports = res if isinstance(res, list) else [res]
    for r in reports:
        print("\n".join(r.lines()))
    where = reports[0].run_dir
    if where is not None:
        print(f"\nrun directory: {where.parent if len(reports) > 1 else where}")
    failed = [f"{f.family.name}: {c.what}" for r in reports for f in r.fits for c in f.checks if not c.held]
    if failed:
        print("expectations that did not hold: " + "; ".join(failed))
    return 0 if not failed else 1


def cmd_show(args) -> int:
    from ibtest.out.show import show

    plot = None
    if args.plot:
        plot = output_file(args.plot, flag="--plot", default_name=f"{Path(args.certificate).stem}.png", suffix=".png")
    return show(args.certificate, plot=plot, plugins=args.plugin)


def _nonneg_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ibtest", description="Test conjectures about the implicit regularization of gradient flow.")
    from ibtest import __version__

    p.add_argument("--version", action="version", version=f"ibtest {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    plug = argparse.ArgumentParser(add_help=False)
    plug.add_argument("--plugin", action="append", default=[], metavar="FILE", help="load a local plugin file (repeatable)")

    r = sub.add_parser("run", parents=[plug], help="run a YAML study (default: the paper's Theorem 3 study)")
    r.add_argument("study", nargs="?", help=f"study file or built-in study name (default {DEFAULT_STUDY})")
    r.add_argument("--out", help="run directory (default runs/<study>-<time>)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no triples or phase table")
    r.add_argument("--resume", metavar="RUN", help="finish an interrupted run from its results store")
    r.add_argument("--executor", metavar="NAME", help="where the blocks run: local (default), ray, or a plugin's "
                   "executor; overrides the study's executor: key")
    r.add_argument("--plot", metavar="FILE.png", help="draw R(theta_b) - R(theta_a) over admissible pairs against the margin")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="re-render a finished run without solving anything")
    rep.add_argument("run", metavar="RUN")
    rep.add_argument("--format", choices=["table", "markdown", "json", "html"], default="table")
    rep.set_defaults(func=cmd_report)

    d = sub.add_parser("diff", help="compare two runs (two sweeps: value by value): verdicts that changed, numbers that moved")
    d.add_argument("run_a", metavar="RUN_A")
    d.add_argument("run_b", metavar="RUN_B")
    d.set_defaults(func=cmd_diff)

    n = sub.add_parser("new", help="write a commented, working template plugin and its test")
    n.add_argument("kind", choices=["hypothesis", "model", "dataset"])
    n.add_argument("name")
    n.add_argument("--dir", default=".", help="directory to write into (default: .)")
    n.set_defaults(func=cmd_new)

    lst = sub.add_parser("list", parents=[plug], help="list every registered plugin with its source and doc")
    lst.set_defaults(func=cmd_list)

    v = sub.add_parser("verify", parents=[plug], help="re-solve a certificate and confirm or withdraw it")
    v.add_argument("certificate")
    v.set_defaults(func=cmd_verify)

    sh = sub.add_parser("shrink", parents=[plug],
                        help="shrink a pair or witness certificate to its core (same member still refuted)")
    sh.add_argument("certificate")
    sh.add_argument("-o", "--out", help="output file (default: CERT with suffix .shrunk.json)")
    sh.add_argument("--budget", type=int, metavar="N", help="most instance solves to spend (default 6000)")
    sh.set_defaults(func=cmd_shrink)

    f = sub.add_parser("fit", parents=[plug], help="fit a regularizer family to a study's triples (or prove none fits)")
    f.add_argument("study", help="study file or built-in study name")
    f.add_argument("--family", action="append", default=[], metavar="NAME",
                   help="the family to fit (repeatable; default: the study's fit: block)")
    f.add_argument("--out", help="run directory (default runs/<study>-fit-<time>)")
    f.add_argument("--strict", type=_nonneg_float, metavar="MU", help="only strictly convex members: R - MU|x - x0|^2/2 "
                   "convex, with R normalized to grow like |x - x0|^2/2 (0: no strictness; overrides the study)")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("show", parents=[plug], help="print a certificate's counterexample (and plot it)")
    s.add_argument("certificate")
    s.add_argument("--plot", metavar="FILE.png", help="draw the counterexample into a PNG file")
    s.set_defaults(func=cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        fit_stream(stream)  # an ASCII terminal gets "theta" for θ, "ok" for ✓: never a UnicodeEncodeError
    try:
        with user_interrupts():  # a KeyboardInterrupt a plugin raises is its failure; Ctrl-C is the user's
            code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except UserError as exc:
        print(f"ibtest: error: {clean(exc, keep_newlines=exc.multiline)}", file=sys.stderr)
        return exc.exit_code
    except RecursionError:  # a JSON or YAML input nested beyond what the parser can follow
        print("ibtest: error: input nested too deeply", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ibtest: interrupted (a run keeps what it stored: finish it with 'ibtest run --resume RUN')",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0
    except OSError as exc:  # writing the output failed (stdout on a full disk, /dev/full)
        return _output_failed(exc)


def _output_failed(exc: OSError) -> int:
    """Exit 2 with one line when what ibtest printed could not be written (every file it writes
    itself reports its own failure as a UserError; what is left is standard output, or an
    unforeseen file-system failure, named as such)."""
    if exc.filename is None:  # a write to a stream: standard output could not take what was printed
        what = f"cannot write to standard output: {clean(exc.strerror or exc)}"
    else:
        what = f"{clean(exc.strerror or exc)}: {clean(exc.filename)}"
    try:
        print(f"ibtest: error: {what}", file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):  # drop what could not be written: no second error at exit
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process ends right after
    return 2


def run() -> None:  # pragma: no cover (exercised by every subprocess test of the console script)
    """The ``ibtest`` console script: :func:`main`, then a fast exit.

    When :func:`main` returns, the command is done: every file it wrote is closed (results
    store, JSON, report, certificates, figures). Interpreter teardown would then spend ~0.3 s
    (a tenth of a main-job run) freeing torch's import-time objects and running its atexit
    hooks, none of which a finished command needs, so the process ends with ``os._exit`` once
    stdout and stderr are flushed. An exception escaping :func:`main` takes the normal path.
    """
    import os

    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to deliver
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
