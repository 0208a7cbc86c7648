"""What a person reads after a run (issue 28): markdown that renders to the same cells, sweeps in
every format with their expectations, tables that fit 100 columns, ``-v``, ``-x``, ``-k``, the
exit codes in ``--help`` and the interrupt message naming the run's directory."""
from __future__ import annotations

import json
import signal

import pytest
import yaml
from markdown_it import MarkdownIt

from ibtest.out import report
from ibtest.out.cells import fit_widths, md_cell


def _study(name: str, **extra) -> str:
    """A tiny linear study (about a second): l2 and lp are refuted by two inits on one dataset,
    dist_to_init survives, so its ``expect: falsified`` does not hold."""
    return yaml.safe_dump({
        "study": name, "model": {"name": "linear"}, "init": {"name": "gaussian", "scale": 1.0, "count": 2},
        "datasets": [{"name": "gaussian", "n": 2, "d": 3, "count": 2, "labels": "teacher_linear"}],
        "solver": {"name": "exact"},
        "hypotheses": [{"name": "l2_norm", "expect": "falsified"},
                       {"name": "lp_norm", "params": {"p": [1, 3]}, "expect": "falsified"},
                       {"name": "dist_to_init", "expect": "falsified"}], **extra}, sort_keys=False)


SINGLE = _study("lin-single")
SWEEP = _study("lin-sweep", sweep={"path": "init.scale", "values": [0.5, 2]})


def gfm_tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown document as a GFM renderer reads it: rows of cell texts."""
    md = MarkdownIt("commonmark").enable("table")
    tables: list[list[list[str]]] = []
    row: list[str] = []
    for tok in md.parse(text):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and tables and tok.map is not None and tok.level >= 4:
            row.append("".join(c.content if c.type in ("text", "code_inline") else
                               ("\n" if c.type == "html_inline" and c.content == "<br>" else "")
                               for c in tok.children or []))
        elif tok.type == "tr_close":
            tables[-1].append(row)
    return tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished single run (dist_to_init misses its expectation) and a two-value sweep."""
    from ibtest.api import run_study

    root = tmp_path_factory.mktemp("readable")
    (root / "single.yaml").write_text(SINGLE)
    (root / "sweep.yaml").write_text(SWEEP)
    run_study(root / "single.yaml", out_dir=root / "single")
    run_study(root / "sweep.yaml", out_dir=root / "sweep")
    return root


# 1. markdown
def test_md_cell_round_trips_through_a_gfm_renderer():
    hostile = ["|ΔR|=0.01988 > margin 5.1e-09", "a\\|b", "*not bold* _nor this_", "`tick`", "<b>x</b>",
               "[link](http://x)", "two\nlines", "&amp;", "my_reg_p=1.json", ""]
    doc = report.table([{"cell": h, "next": "after"} for h in hostile], "github")
    (rows,) = gfm_tables(doc)
    assert rows[0] == ["cell", "next"]
    assert [r[0] for r in rows[1:]] == hostile  # the text comes back, in its own cell
    assert all(r[1] == "after" for r in rows[1:])  # nothing spilled into the next column
    assert md_cell("a|b") == "a\\|b"


def test_report_md_keeps_the_evidence_and_the_certificate_in_their_cells(runs, cli):
    verdicts = json.loads((runs / "single" / "results.json").read_text())["verdicts"]
    for text in ((runs / "single" / "report.md").read_text(), cli("report", runs / "single", "--format", "markdown").out):
        head, *body = gfm_tables(text)[0]
        assert len(head) == 10 and head[-2:] == ["evidence", "certificate"]
        cells = {r[0]: dict(zip(head, r)) for r in body}
        for v in verdicts:
            row = cells[v["label"]]
            assert row["evidence"] == report.evidence_text(v)
            assert row["certificate"] == (v["certificate"] or "")
        assert cells["l2_norm"]["evidence"].startswith("|ΔR|=")


# 2, 3. sweeps: every format, expectations as in a single run
def test_a_sweep_renders_in_every_format_with_its_expectations(runs, cli):
    table = cli("report", runs / "sweep")
    assert "survives ✗" in table.out and "falsified ✓" in table.out
    assert "expectations that did not hold: dist_to_init at init.scale=0.5 (expected falsified, got survives)" \
        in table.out
    md = cli("report", runs / "sweep", "--format", "markdown")
    head, *body = gfm_tables(md.out)[0]
    assert head[0] == "init.scale" and [r[0] for r in body] == ["0.5", "2"]
    col = head.index("dist_to_init")
    assert all(r[col] == "survives ✗ expected falsified" for r in body)
    assert "expectations that did not hold" in md.out
    page = cli("report", runs / "sweep", "--format", "html").out
    assert page.startswith("<!doctype html>") and page.count("<tr>") == 3 and "✗ expected falsified" in page
    assert json.loads(cli("report", runs / "sweep", "--format", "json").out)["sweep"] == "init.scale"


def test_run_prints_a_sweeps_failed_expectations_and_x_stops_it(runs, cli):
    r = cli("run", runs / "sweep.yaml", "--out", runs / "swx", "-q", "-x")
    assert r.code == 1
    assert "stopped after init.scale=0.5 (-x): 1 of 2 values run" in r.out
    assert "expectations that did not hold: dist_to_init at init.scale=0.5" in r.out
    assert len(json.loads((runs / "swx" / "results.json").read_text())["runs"]) == 1


# 9. width
def test_tables_fit_100_columns_unless_wide(runs, cli):
    narrow = cli("report", runs / "single").out
    tables = narrow.split("certificates:")[0] + narrow.split("\nphases")[1]  # the verdict and phase tables
    assert max(len(line) for line in tables.splitlines()) <= 100
    assert "certificates:\n  l2_norm: " in narrow  # the full paths, one a line, under the table
    wide = cli("report", runs / "single", "--wide").out
    assert max(len(line) for line in wide.splitlines()) > 100
    cert = json.loads((runs / "single" / "results.json").read_text())["verdicts"][0]["certificate"]
    assert any(line.startswith("l2_norm ") and line.endswith(cert) for line in wide.splitlines())


def test_fit_widths_keeps_words_whole_while_it_can():
    rows = [{"a": "x" * 30, "b": "one two three four five six seven eight nine ten"}]
    widths = fit_widths(rows, 60)
    assert widths == [None, 28]  # 30 + 2 + 28
    assert max(len(line) for line in report.table(rows, width=60).splitlines()) <= 60
    assert fit_widths(rows, 200) == [None, None]


def test_subopt_near_zero_is_an_absolute_gap():
    v = {"search": {"searched": 4, "worst_suboptimality": 30.0, "label": "lower bound", "relative": False,
                    "worst_gap": 0.0123}}
    assert report._subopt(v) == "abs 0.012 (lower bound)"
    v["search"]["relative"] = True
    assert report._subopt(v) == "30 (lower bound)"


# 11. CLI habits
def test_k_selects_members_and_v_says_each_reason(runs, cli):
    r = cli("run", runs / "single.yaml", "--out", runs / "k", "-q", "-v", "-k", "lp_norm and not 3")
    labels = [v["label"] for v in json.loads((runs / "k" / "results.json").read_text())["verdicts"]]
    assert labels == ["lp_norm[p=1]"]
    assert "  lp_norm[p=1]: FALSIFIED ✓: |ΔR|=" in r.err
    bad = cli("run", runs / "single.yaml", "--out", runs / "k2", "-k", "nothing_like_this")
    assert bad.code == 2 and "selects no hypothesis member (members: l2_norm, lp_norm[p=1]" in bad.err
    assert cli("run", runs / "single.yaml", "-k", "(l2_norm").code == 2


def test_help_lists_the_exit_codes(cli, capsys):
    from ibtest.cli import build_parser

    for argv in ([], ["run"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv + ["--help"])
        out = capsys.readouterr().out
        assert "exit codes" in out and "130  interrupted" in out and "1    an expectation did not hold" in out


def test_an_interrupt_names_the_runs_directory(runs, cli, monkeypatch):
    import ibtest.out.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_loaded", interrupted)
    r = cli("run", runs / "single.yaml", "--out", runs / "stopped", "-q")
    assert r.code == 128 + signal.SIGINT
    assert f"'ibtest run --resume {runs / 'stopped'}'" in r.err


# 8. dead ends
def test_dead_ends_say_what_to_do_and_what_they_mean(tmp_path, cli):
    from ibtest.out.dead_ends import MEANING, dead_end_notes

    study = tmp_path / "budget.yaml"
    data = yaml.safe_load(SINGLE)
    data["solver"] = {"name": "adaptive", "max_steps": 5}
    study.write_text(yaml.safe_dump(data))
    r = cli("run", study, "--out", tmp_path / "run", "-q", "-k", "l2_norm")
    assert ("note: 4 triples hit the solver's budget before a limit was certified (not judged): raise t_max "
            "(now 1e+07) or max_steps (now 5) under solver: {name: adaptive}") in r.out
    assert "- 4 triples hit the solver's budget" in (tmp_path / "run" / "report.md").read_text()
    from ibtest.study.schema import load_study

    st_, _ = load_study(study)
    stalled, diverged = dead_end_notes(st_, {"converged": 3, "stalled": 2, "diverged": 1})
    assert stalled.startswith("2 triples stalled: GF reached a stationary point with loss above fit_tol")
    assert "the verdicts rest on the converged ones" in stalled
    assert diverged.startswith("1 triple diverged: ") and "count for no verdict" in diverged
    from ibtest.base import status

    (ambiguous,) = dead_end_notes(st_, {"ambiguous": 2})  # every status the solvers can give has a meaning
    assert ambiguous.startswith("2 triples ambiguous: the flow is not unique") and "not judged" in ambiguous
    assert all(name in MEANING for name in status.NAMES.values() if name not in ("converged", "budget"))


# 9. labels
def test_two_entries_of_one_init_plugin_get_distinct_labels():
    from ibtest.api import run_study

    data = yaml.safe_load(SINGLE)
    data["init"] = [{"name": "gaussian", "scale": 0.1, "count": 1}, {"name": "gaussian", "scale": 1.0, "count": 1}]
    data["hypotheses"] = [{"name": "l2_norm"}]
    res = run_study(data, write=False)
    assert sorted({t["init"] for t in res.to_json()["triples"]}) == ["gaussian(scale=0.1)", "gaussian(scale=1)"]
    assert [v["depends_on"] for v in res.to_json()["verdicts"]] == ["params"]


# 4. every printed replay command runs as printed
def _printed_commands(text: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in text.splitlines()
            if line.strip().startswith(("replay: ibtest ", "confirmed by: ibtest "))]


def test_every_printed_replay_command_runs(tmp_path, cli, monkeypatch):
    """From ``ibtest new`` to a shrunk certificate with a plugin file: each command that ``shrink``
    and ``show`` print (and each certificate's replay field) names ``--plugin`` and exits 0."""
    import shlex

    monkeypatch.chdir(tmp_path)
    assert cli("new", "hypothesis", "my_reg").code == 0
    assert cli("run", "my_reg_study.yaml", "--plugin", "my_reg.py", "--out", "runs/r", "-q", "-k", "p=2").code == 0
    cert = "runs/r/certificates/my_reg_p=2.json"
    shrunk = cli("shrink", cert, "--plugin", "my_reg.py")
    shown = [cli("show", c, "--plugin", "my_reg.py").out for c in (cert, cert.replace(".json", ".shrunk.json"))]
    stored = [json.loads((tmp_path / c).read_text())["replay"] for c in (cert, cert.replace(".json", ".shrunk.json"))]
    commands = _printed_commands(shrunk.out) + [c for s in shown for c in _printed_commands(s)] + stored
    assert len(commands) == 5, commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["ibtest", "verify"] and argv[-2:] == ["--plugin", "my_reg.py"], command
        r = cli(*argv[1:])
        assert r.code == 0 and "refutation CONFIRMED" in r.out, (command, r)


# 7. options
def test_list_name_shows_every_option(cli):
    relu = cli("list", "two_layer_relu").out
    assert relu.splitlines()[0].startswith("model two_layer_relu  from models.two_layer_relu (")
    rows = {line.split()[0]: line for line in relu.splitlines() if line[:1].isalpha()}
    assert rows["width"].split()[1:5] == ["int", ">=", "1", "1"] and "number m of hidden units" in rows["width"]
    gauss = cli("list", "gaussian").out
    assert "dataset gaussian" in gauss and "init gaussian" in gauss  # both plugins of that name
    assert "labels  one of 'teacher_relu'," in gauss and "'gaussian'" in gauss
    adaptive = cli("list", "adaptive").out
    assert any(line.startswith("max_steps ") and "200000" in line and "step budget" in line
               for line in adaptive.splitlines())
    assert any(line.startswith("rtol ") and "float > 0" in line for line in adaptive.splitlines())
    lp = cli("list", "lp_norm").out
    assert "kind regularizer, depends on params, on theta" in lp and any(
        line.split()[:3] == ["p", "float", "2.0"] for line in lp.splitlines())
    missing = cli("list", "no_such_plugin")
    assert missing.code == 2 and "no plugin of that name" in missing.err
    overview = cli("list").out
    assert max(len(line) for line in overview.splitlines()) <= 100
    assert "ibtest list NAME" in overview


# 6. the Python API takes what the CLI takes
TWO_HYPOTHESES = '''\
import ibtest


def elastic(theta, ctx, lam=0.1):
    return (theta * theta).sum(-1) + lam * theta.abs().sum(-1)


def sq(theta, ctx):
    return (theta * theta).sum(-1)


@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="elastic", fn=elastic, params={"lam": 0.1}, doc="elastic net"),
            ibtest.Hypothesis(name="sq", fn=sq, doc="squared norm")]
'''


def test_api_takes_built_in_names_and_shows_tables(runs):
    import ibtest
    from ibtest.base.errors import UserError

    res = ibtest.run_study("linear_zero_init", write=False)
    page = res._repr_html_()
    assert page.startswith("<table>") and all(f"<td>{m.label}" in page for m in res.members)
    with pytest.raises(UserError, match="not a built-in study"):
        ibtest.run_study("no_such_study", write=False)
    from ibtest.api import load_results
    from ibtest.out.result import SweepResult

    sweep = ibtest.run_study(runs / "sweep.yaml", write=False)
    assert isinstance(sweep, SweepResult) and "<th>init.scale" in sweep._repr_html_()
    assert "expectations that did not hold" in sweep._repr_html_()
    assert load_results(runs / "sweep")["sweep"] == "init.scale"


def test_run_hypothesis_gives_each_parameter_to_the_hypotheses_that_take_it(tmp_path):
    from ibtest.base.errors import UserError
    from ibtest.testing import run_hypothesis

    plugin = tmp_path / "two.py"
    plugin.write_text(TWO_HYPOTHESES)
    res = run_hypothesis(plugin, "linear", params={"lam": [0, 1]})
    assert sorted(res.verdicts) == ["elastic[lam=0]", "elastic[lam=1]", "sq"]
    with pytest.raises(UserError) as bad:
        run_hypothesis(plugin, "linear", params={"mu": 1})
    assert str(bad.value) == ("run_hypothesis(params=...): elastic, sq take no parameter 'mu' "
                              "(parameters: elastic: lam; sq: none)")
    with pytest.raises(UserError, match="sq takes no parameter 'lam'"):
        run_hypothesis(plugin, "linear", names=["elastic", "sq"], params={"lam": 1})
    with pytest.raises(UserError) as dict_err:  # a dict study's problems name its fields, not dump lines
        run_hypothesis(plugin, "linear", solver={"name": "exact", "no_such_option": 1})
    assert "study dict: solver.no_such_option" in str(dict_err.value) and "<dict>:" not in str(dict_err.value)


# 5. figures: titles that fit and say what they should, a witness figure that shows the refutation
@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test, drawn (so text has its extent)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        save(self, *args, **kwargs)
        figures.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _titles_fit(fig) -> list[str]:
    """The figure's titles (suptitle and each panel's), checked: inside the figure, no two overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving: draw it again, as saved
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = ([fig._suptitle] if fig._suptitle is not None else []) + [a.title for a in fig.axes if a.get_title()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    width, height = fig.bbox.width, fig.bbox.height
    for t, b in zip(texts, boxes):
        assert b.x0 >= 0 and b.x1 <= width and b.y1 <= height, f"title cut off: {t.get_text()!r}"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"titles overlap: {texts[boxes.index(a)].get_text()!r}"
    return [t.get_text() for t in texts]


def test_a_pair_figure_has_its_members_title_and_titles_that_fit(runs, saved_figures, tmp_path):
    from ibtest.cert.schema import load
    from ibtest.out.plots import plot_certificate

    plot_certificate(load(runs / "single" / "certificates" / "l2_norm.json"), tmp_path / "pair.png")
    (fig,) = saved_figures
    titles = _titles_fit(fig)
    assert titles[0].startswith("l2_norm: FALSIFIED")
    assert not any("path and" in t for t in titles)  # no legend label leaks into a title
    assert "l2_norm along the paths" in titles
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("level set R = R(θ_a) = ") for t in legend)


def test_the_witness_figure_shows_both_points_on_z_and_the_drop_of_r(tmp_path, saved_figures):
    import ibtest
    from ibtest.cert.schema import load
    from ibtest.out.plots import plot_certificate

    res = ibtest.run_study("vardi_shamir_gamma5_witness", out_dir=tmp_path / "run", select="l2_norm")
    cert = load(res.members[0].certificate)
    plot_certificate(cert, tmp_path / "witness.png")
    (fig,) = saved_figures
    titles = _titles_fit(fig)
    assert titles[0].startswith("l2_norm: FALSIFIED by a witness")
    plane, along = fig.axes[0], fig.axes[1]  # axes[2] is the loss colorbar
    labels = [t.get_text() for t in plane.get_legend().get_texts()]
    assert labels[0].startswith("Z(D): zero loss") and "θ∞: where gradient flow ends" in labels
    assert "θ': witness, also on Z(D)" in labels
    span = float(torch_norm(cert["witness"]["theta"], cert["a"]["theta"]))
    lo, hi = plane.get_xlim()
    assert lo < 0 < span < hi  # both points inside the picture, the axis sized by their distance
    assert plane.get_ylim()[1] == pytest.approx(0.5 * span, rel=0.05)
    r_inf, r_w = cert["a"]["R"], cert["witness"]["R"]
    y0, y1 = along.get_ylim()
    assert y0 < r_w < r_inf < y1 and (r_inf - r_w) > 0.2 * (y1 - y0)  # the drop of R fills the panel
    assert along.get_ylabel() == "R" and "not the argmin of R on Z(D)" in along.get_title()


def torch_norm(a, b) -> float:
    import math

    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def test_the_run_figure_title_fits(tmp_path, saved_figures):
    from ibtest.api import run_study
    from ibtest.out.plots import plot_run

    res = run_study(yaml.safe_load(SINGLE), write=False)
    plot_run(res, tmp_path / "run.png")
    (fig,) = saved_figures
    (title,) = _titles_fit(fig)
    assert title.startswith("hypothesis members: gaps over pairs against the margin")
    assert max(len(line) for line in title.splitlines()) <= 80
