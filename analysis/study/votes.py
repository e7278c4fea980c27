"""Answers out of the study database, and the paper's tally.

`export_answers` writes DIR/answers.parquet, one row per answer:
    rater, item, question, subject, prompt, method_left, method_right, chosen_method, timestamp
(plus choice A/B and the two trial ids).

`tally` follows the paper: per question and method pair, each item (one comparison shown to every
rater) is decided by the majority of its raters' votes; the preference for method_a is the share
of items it won, with a Wilson score 95% interval. Ties (an even split, possible with an even
number of raters or a missing answer) are excluded by default (`ties="exclude"`: n = decided
items); `ties="half"` counts each tied item as half a win for each side (n = all items).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..stats import wilson_interval
from . import store

QUESTION_ORDER = ("subject_fidelity", "3d_consistency", "prompt_fidelity")
ANSWER_SCHEMA = pa.schema([
    ("rater", pa.string()), ("item", pa.int64()), ("question", pa.string()), ("subject", pa.string()),
    ("prompt", pa.string()), ("method_left", pa.string()), ("method_right", pa.string()),
    ("chosen_method", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")), ("choice", pa.string()),
    ("trial_left", pa.string()), ("trial_right", pa.string()),
])


def read_answers(study_dir: Path) -> pd.DataFrame:
    """Every stored answer with the hidden mapping resolved (works while the server runs)."""
    store.check(Path(study_dir) / store.DB_NAME)  # never creates a database in a non-study folder
    con = store.connect(Path(study_dir) / store.DB_NAME)
    try:
        rows = con.execute(
            """SELECT r.label AS rater, i.id AS item, i.question, i.subject, i.prompt, t.first_left,
                      i.method_1, i.method_2, i.trial_1, i.trial_2, a.choice, a.answered_at
               FROM answers a JOIN tasks t ON t.id = a.task_id JOIN items i ON i.id = t.item_id
               JOIN raters r ON r.id = a.rater_id ORDER BY r.id, a.answered_at""").fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        left, right = (r["method_1"], r["method_2"]) if r["first_left"] else (r["method_2"], r["method_1"])
        tl, tr = (r["trial_1"], r["trial_2"]) if r["first_left"] else (r["trial_2"], r["trial_1"])
        out.append({"rater": r["rater"], "item": r["item"], "question": r["question"], "subject": r["subject"],
                    "prompt": r["prompt"], "method_left": left, "method_right": right,
                    "chosen_method": left if r["choice"] == "A" else right,
                    "timestamp": pd.Timestamp(r["answered_at"]), "choice": r["choice"],
                    "trial_left": tl, "trial_right": tr})
    return pa.Table.from_pylist(out, schema=ANSWER_SCHEMA).to_pandas()


def export_answers(study_dir: Path, out: Path | None = None) -> Path:
    """Write the answers to Parquet (default DIR/answers.parquet, atomically) and return the path."""
    out = Path(out) if out is not None else Path(study_dir) / "answers.parquet"
    table = pa.Table.from_pandas(read_answers(study_dir), schema=ANSWER_SCHEMA, preserve_index=False)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def wilson(successes: float, n: float) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (analysis.stats.wilson_interval)."""
    return wilson_interval(successes, n)


def tally(answers: pd.DataFrame, ties: str = "exclude", reference: str | None = None) -> pd.DataFrame:
    """Per question and method pair: items, wins by majority vote, ties, and method_a's preference
    in percent with its Wilson 95% interval. method_a is `reference` when the pair has it, else the
    alphabetically first method. See the module docstring for `ties`."""
    if ties not in ("exclude", "half"):
        raise ValueError(f"ties={ties!r}: use 'exclude' or 'half'")
    rows = []
    for (question, item), votes in answers.groupby(["question", "item"], sort=False):
        pair = sorted({*votes["method_left"], *votes["method_right"]})
        if len(pair) != 2:
            raise ValueError(f"item {item}: expected one method pair, got {pair}")
        if reference in pair:
            pair = [reference] + [m for m in pair if m != reference]
        a, b = pair
        va, vb = int((votes["chosen_method"] == a).sum()), int((votes["chosen_method"] == b).sum())
        rows.append({"question": question, "method_a": a, "method_b": b, "item": item, "votes": va + vb,
                     "raters": votes["rater"].nunique(), "win_a": va > vb, "win_b": vb > va, "tie": va == vb})
    cols = ["question", "method_a", "method_b", "items", "wins_a", "wins_b", "ties", "n", "pct_a", "ci_low",
            "ci_high", "votes", "raters"]
    if not rows:
        return pd.DataFrame(columns=cols)
    per_item = pd.DataFrame(rows)
    out = []
    for (question, a, b), g in per_item.groupby(["question", "method_a", "method_b"], sort=False):
        wa, wb, nt = int(g["win_a"].sum()), int(g["win_b"].sum()), int(g["tie"].sum())
        s, n = (wa, wa + wb) if ties == "exclude" else (wa + 0.5 * nt, wa + wb + nt)
        lo, hi = wilson(s, n)
        out.append({"question": question, "method_a": a, "method_b": b, "items": len(g), "wins_a": wa, "wins_b": wb,
                    "ties": nt, "n": n, "pct_a": 100 * s / n if n else math.nan, "ci_low": 100 * lo,
                    "ci_high": 100 * hi, "votes": int(g["votes"].sum()), "raters": int(g["raters"].max())})
    table = pd.DataFrame(out, columns=cols)
    rank = {q: i for i, q in enumerate(QUESTION_ORDER)}
    table["_q"] = table["question"].map(lambda q: rank.get(q, len(rank)))
    return table.sort_values(["_q", "question", "method_a", "method_b"]).drop(columns="_q").reset_index(drop=True)


def position_bias(answers: pd.DataFrame) -> dict:
    """Share of answers that chose the left side ("A"), with its Wilson 95% interval. With sides
    counterbalanced, 50% means no side preference; far from it, raters clicked a side."""
    n, left = len(answers), int((answers["choice"] == "A").sum()) if len(answers) else 0
    lo, hi = wilson(left, n)
    return {"answers": n, "left": left, "pct_left": 100 * left / n if n else math.nan,
            "ci_low": 100 * lo, "ci_high": 100 * hi}


def rater_agreement(answers: pd.DataFrame) -> pd.DataFrame:
    """Per rater: answers, share of left answers, and agreement with the others: the share of the
    rater's items on which the other raters had a strict majority and the rater chose the same
    method (n_compared such items). A rater clicking one side whatever is shown agrees ~50%."""
    cols = ["rater", "answers", "pct_left", "n_compared", "pct_agree"]
    if not len(answers):
        return pd.DataFrame(columns=cols)
    out = []
    for rater, mine in answers.groupby("rater", sort=True):
        agree = compared = 0
        for row in mine.itertuples(index=False):
            others = answers[(answers["item"] == row.item) & (answers["rater"] != rater)]["chosen_method"]
            counts = others.value_counts()
            if len(counts) == 0 or (len(counts) > 1 and counts.iloc[0] == counts.iloc[1]):
                continue  # nobody else, or the others are split
            compared += 1
            agree += int(counts.index[0] == row.chosen_method)
        out.append({"rater": rater, "answers": len(mine), "pct_left": 100 * float((mine["choice"] == "A").mean()),
                    "n_compared": compared, "pct_agree": 100 * agree / compared if compared else math.nan})
    return pd.DataFrame(out, columns=cols)


def tally_markdown(table: pd.DataFrame, ties: str = "exclude", answers: pd.DataFrame | None = None) -> str:
    """The tally as a Markdown table (percentages: items where method A won the majority vote);
    with `answers`, also the position bias and the per-rater agreement."""
    lines = ["| question | method A | method B | items | A preferred | 95% CI (Wilson) | ties |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        pct = "n/a" if math.isnan(r.pct_a) else f"{r.pct_a:.1f}%"
        ci = "n/a" if math.isnan(r.ci_low) else f"{r.ci_low:.1f}-{r.ci_high:.1f}%"
        lines.append(f"| {r.question.replace('_', ' ')} | {r.method_a} | {r.method_b} | {r.items} | {pct} | {ci} "
                     f"| {r.ties} |")
    note = ("ties excluded (n = items with a majority)" if ties == "exclude"
            else "ties counted as half a win for each method")
    lines.append("")
    lines.append(f"Majority vote of the raters per item; {note}.")
    if answers is not None:
        bias = position_bias(answers)
        ci = "n/a" if math.isnan(bias["ci_low"]) else f"{bias['ci_low']:.1f}-{bias['ci_high']:.1f}%"
        pct = "n/a" if math.isnan(bias["pct_left"]) else f"{bias['pct_left']:.1f}%"
        lines += ["", f"Position bias: {bias['left']} of {bias['answers']} answers chose the left side ({pct}, "
                  f"95% CI {ci}; 50% = no side preference; sides are counterbalanced).", "",
                  "| rater | answers | left | agreement with the others' majority | items compared |",
                  "|---|---:|---:|---:|---:|"]
        for r in rater_agreement(answers).itertuples(index=False):
            agree = "n/a" if math.isnan(r.pct_agree) else f"{r.pct_agree:.1f}%"
            lines.append(f"| {r.rater} | {r.answers} | {r.pct_left:.1f}% | {agree} | {r.n_compared} |")
    return "\n".join(lines) + "\n"
