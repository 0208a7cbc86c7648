"""A new claim kind is a plugin of its own: the core's kinds table is the registry's ``kinds``, filled
through the ``ibtest_claim_kinds`` hook, and nothing else in the core names a kind.

The throwaway kind here, ``decrease``, judges hypotheses of kind ``decrease``: "B(θ∞) ≤ B(θ0) on every
converged triple". It is scored, judged by the one set of rules (``ctx.rules.judge_triple``),
certified, replayed by ``ibtest verify`` and described by ``ibtest show``, all from one plugin file.
"""
from __future__ import annotations

import textwrap

import yaml
from conftest import STUDIES

from ibtest.api import run_study
from ibtest.plugin.manager import load_registry
from ibtest.solve.rules import Verdict

PLUGIN = '''
import torch
import ibtest
from ibtest.base import status as st
from ibtest.cert.certificate import loss_at, side_fields
from ibtest.cert.replay import VerifyResult
from ibtest.judge import evaluation as ev
from ibtest.judge.records import Evidence, Finding, MemberCounts, hyp_context, tolerance
from ibtest.solve.rules import Grade


class Score:
    def __init__(self, idx, gap, part):
        self.idx, self.gap, self.part = idx, gap, part

    def counts(self):
        return self.part

    def keep_triples(self):
        return [int(self.idx[int(torch.argmax(self.gap))])]

    def keep_pairs(self):
        return []

    def triples_to_measure(self):
        return self.keep_triples()


def score(ctx, t, pairs, use, params, prior):
    idx = (t.status == st.CONVERGED).nonzero().flatten()
    if idx.numel() == 0:
        return None
    h = hyp_context(ctx, t, idx, use.spec)
    B1, _ = ev.evaluate(ctx.model, use.spec, params, t.theta[idx], h, grad=False)
    B0, _ = ev.evaluate(ctx.model, use.spec, params, t.theta0[idx], h, grad=False)
    return Score(idx, B1 - B0, MemberCounts(n=int(idx.numel())))


def finish(ctx, t, sc, use, params, meter, counts):
    found = Finding()
    if sc is None:
        found.reason = counts.no_pairs_reason
        return found
    i = sc.keep_triples()[0]
    th, err = meter.theta_err(i) if meter.usable(i) else (t.theta[i], 0.0)
    one = torch.tensor([i])
    h = hyp_context(ctx, t, one, use.spec)
    (side,) = ev.sides(ctx.model, use.spec, params, th[None], h, [err])
    ref, _ = ev.evaluate(ctx.model, use.spec, params, t.theta0[one], h, grad=False)
    j = ctx.rules.judge_triple(tolerance(use), side, ref[0], one_sided=True)
    found.evidence = Evidence("decrease", i, None, side, None, j, "study", ref=ref[0])
    found.support, found.support_text = (Grade.TRIPLES, counts.n), f"decreased on {counts.n} converged triples"
    return found


def certificate(ctx, t, member, e):
    return {"claim": f"{member.label} does not increase along gradient flow", "source": e.source,
            "refutation": f"B(theta_inf) - B(theta0) = {e.gap:.6g} > margin {e.margin:.6g}",
            "a": side_fields(t, e.a, e.theta_a, loss_at(ctx, t, e.theta_a, e.a), e.side_a),
            "C_init": float(e.ref.reshape(-1)[0])}


def replay(cert, rp):
    theta, status, err, lines = rp.resolve()
    rp.lines += lines
    ok = status[0] == 0
    if ok:
        (side,) = rp.sides(theta, [0], err)
        ref = rp.values(rp.data.theta0[:1], [0])[0]
        j = rp.rules.judge_triple(rp.tol, side, ref, one_sided=True)
        rp.lines.append(f"  B(theta_inf) - B(theta0) = {j.gap:.3g}, margin = {j.margin:.3g}")
        ok = j.refutes
    rp.lines.append("  refutation CONFIRMED" if ok else "  refutation WITHDRAWN")
    return VerifyResult(ok, rp.lines)


def describe(cert):
    return ["Failing case (B increased):", f"  {cert['claim']}", f"  {cert['refutation']}",
            f"  theta_inf = {cert['a']['theta']}"]


@ibtest.hookimpl
def ibtest_claim_kinds():
    return [ibtest.ClaimKind(name="decrease", judges="decrease", label="B(θ∞)-B(θ0)", score=score, finish=finish,
                             certificate=certificate, replay=replay, describe=describe)]


@ibtest.hookimpl
def ibtest_hypotheses():
    return [ibtest.Hypothesis(name="norm_decreases", kind="decrease", depends_on="init",
                              fn=lambda th, ctx: th.norm(dim=-1), doc="|theta| never grows"),
            ibtest.Hypothesis(name="misfit_decreases", kind="decrease", depends_on="data",
                              fn=lambda th, ctx: ((ctx.X @ th[..., None])[..., 0] - ctx.y).pow(2).sum(-1),
                              doc="the linear misfit never grows")]
'''


def test_a_new_claim_kind_is_one_plugin_file_and_zero_core_edits(tmp_path, cli):
    plugin = tmp_path / "decrease_kind.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    reg = load_registry([str(plugin)])
    assert [k.name for k in reg.kinds_for("decrease")] == ["decrease"]
    assert [k.name for k in reg.kinds_for("regularizer")] == ["pair", "witness"]  # the built-ins, untouched

    study = yaml.safe_load((STUDIES / "linear_control.yaml").read_text())
    study["hypotheses"] = [{"name": "norm_decreases", "expect": "falsified"},
                           {"name": "misfit_decreases", "expect": "survives"}]
    res = run_study(study, plugins=[str(plugin)], out_dir=tmp_path / "run")
    ms = {m.label: m for m in res.members}
    assert ms["norm_decreases"].verdict == Verdict.FALSIFIED and ms["norm_decreases"].evidence.kind == "decrease"
    assert ms["misfit_decreases"].verdict == Verdict.SURVIVES and str(ms["misfit_decreases"].grade) == "triples"
    assert res.expectations_held

    cert = tmp_path / "run" / "certificates" / "norm_decreases.json"
    r = cli("verify", cert, "--plugin", plugin)
    assert r.code == 0 and "judged as: decrease claim" in r.out and "refutation CONFIRMED" in r.out, r
    r = cli("show", cert, "--plugin", plugin)
    assert r.code == 0 and "Failing case (B increased):" in r.out, r
    r = cli("verify", cert)  # without the plugin the kind is unknown here: bad input, not a verdict
    assert r.code == 2, r
