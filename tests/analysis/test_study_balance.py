"""Counterbalanced user studies: sides even per rater and per item, and a rater who always clicks
the left side ("A") cannot make a method preference; the tally reports position bias and the
per-rater agreement. Uses the synthetic sweep of test_study.py."""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
from test_study import ITEMS, results  # noqa: F401  (the module-scoped synthetic sweep fixture)

from analysis.study import build_study, main, tally, tally_markdown
from analysis.study.votes import position_bias, rater_agreement


def _tasks(study: Path) -> list[dict]:
    con = sqlite3.connect(study / "study.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(
            """SELECT t.rater_id, t.item_id, t.first_left, i.method_1, i.method_2, i.question, i.subject, i.prompt
               FROM tasks t JOIN items i ON i.id = t.item_id""")]
    finally:
        con.close()


def _within_one_of_half(count: int, n: int) -> bool:
    return n // 2 <= count <= (n + 1) // 2


@pytest.mark.parametrize("raters", [1, 2, 3, 5, 8])
def test_sides_are_balanced_per_rater_per_pair_and_question_and_per_item(results, tmp_path, raters):  # noqa: F811
    study = build_study(results, tmp_path / "s", raters=raters, seed=raters)
    tasks = _tasks(study)
    assert len(tasks) == raters * ITEMS
    per_rater, per_block, per_item = defaultdict(list), defaultdict(list), defaultdict(list)
    for t in tasks:
        per_rater[t["rater_id"]].append(t["first_left"])
        per_block[t["rater_id"], t["method_1"], t["method_2"]].append(t["first_left"])
        per_block[t["rater_id"], t["method_1"], t["method_2"], t["question"]].append(t["first_left"])
        per_item[t["item_id"]].append(t["first_left"])
    for group in (per_rater, per_block, per_item):
        for key, sides in group.items():
            assert _within_one_of_half(sum(sides), len(sides)), (key, sides)
    if raters == 5:
        left = Counter(sum(s) for s in per_item.values())
        print(f"\n5 raters, {ITEMS} items: method_1 on the left per rater "
              f"{sorted(sum(s) for s in per_rater.values())} of {ITEMS}; per item {dict(sorted(left.items()))} "
              f"(raters of 5: items)")


def _answer_all(study: Path, choose) -> pd.DataFrame:
    """Answers as export_answers writes them, from choose(rater, left, right) -> 'A' | 'B'."""
    rows = []
    for t in _tasks(study):
        left, right = (t["method_1"], t["method_2"]) if t["first_left"] else (t["method_2"], t["method_1"])
        choice = choose(t["rater_id"], left, right)
        rows.append({"rater": f"r{t['rater_id']}", "item": t["item_id"], "question": t["question"],
                     "subject": t["subject"], "prompt": t["prompt"], "method_left": left, "method_right": right,
                     "chosen_method": left if choice == "A" else right, "choice": choice})
    return pd.DataFrame(rows)


def test_an_all_a_rater_yields_no_method_preference(results, tmp_path):  # noqa: F811
    study = build_study(results, tmp_path / "s", raters=1, seed=3)
    answers = _answer_all(study, lambda rater, left, right: "A")
    t = tally(answers)
    assert len(t) == 9 and (t["items"] == 2).all()
    assert (t["pct_a"] == 50.0).all() and (t["ci_low"] < 50).all() and (t["ci_high"] > 50).all(), t
    bias = position_bias(answers)
    assert bias["pct_left"] == 100.0 and bias["ci_low"] > 50  # the side preference is visible as such
    assert "Position bias: 18 of 18 answers chose the left side (100.0%" in tally_markdown(t, answers=answers)


def test_one_side_clicker_among_five_raters_is_outvoted_and_shows_in_its_agreement(results, tmp_path):  # noqa: F811
    study = build_study(results, tmp_path / "s", raters=5, seed=0)
    # raters 1-4 prefer dreambooth3d, else the alphabetically first method; rater 5 always clicks A
    answers = _answer_all(study, lambda r, left, right: "A" if r == 5 or min(left, right) == left else "B")
    t = tally(answers, reference="dreambooth3d")
    assert (t["pct_a"] == 100.0).all()
    agreement = rater_agreement(answers).set_index("rater")
    assert list(agreement.loc[["r1", "r2", "r3", "r4"], "pct_agree"]) == [100.0] * 4
    assert agreement.loc["r5", "pct_left"] == 100.0
    assert 40.0 <= agreement.loc["r5", "pct_agree"] <= 60.0  # it agrees only where its side happens to be right
    assert agreement.loc["r5", "n_compared"] == ITEMS
    bias = position_bias(answers)
    assert bias["left"] == ITEMS + (answers["choice"][answers["rater"] != "r5"] == "A").sum()


def test_build_prints_the_balance_and_export_writes_bias_and_agreement(results, tmp_path, capsys):  # noqa: F811
    assert main(["build", str(results), f"out={tmp_path / 's'}", "raters=5"]) == 0
    out = capsys.readouterr().out
    assert f"on the left in 9-9 of {ITEMS} items" in out and "for 2-3 of 5 raters" in out
