"""`safeturn judge score` and `safeturn judge validate`: judge replies a user already has.

`score` writes one verdict a line and is resumable: verdicts already in `--out` for the same
judge spec are kept and only the other lines are judged (a verdict whose judge call failed is
tried again). `validate` compares a judge with gold labels (`judges/validation.py`), judging
the file itself or reading the verdicts of an earlier `score` run (`--verdicts`), so an
expensive judge runs once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.data.labelled import SkippedLine
from safeturn.errors import SafeturnError, SchemaError
from safeturn.judges.base import Judge
from safeturn.judges.labelled_replies import LabelledReply, ReplyFile, read_replies
from safeturn.judges.validation import CI_METRICS, THRESHOLD_METRICS, JudgedReply

console = Console()
err_console = Console(stderr=True)

_PRINTED_EXCERPT = 100
"""Reply characters shown per error in the terminal (the JSON has the longer excerpt)."""

Row = dict[str, Any]
"""One verdict line of `judge score`: id, label, score, refused, rationale, judge, invalid."""

_DataOption = Annotated[
    Path,
    typer.Option(
        "--data", help="JSONL (.gz too): OpenAI chat lines ending in the assistant reply judged"
    ),
]
_ImageRootOption = Annotated[
    Path | None,
    typer.Option(help="image paths must lie inside this folder [default: the data file's]"),
]
_ConcurrencyOption = Annotated[int, typer.Option(min=1, help="judge calls in flight")]


def score_command(
    judge_spec: Annotated[
        str,
        typer.Option("--judge", help="judge spec, e.g. refusal or safemt:MODEL (`judge list`)"),
    ],
    data: _DataOption,
    out: Annotated[Path, typer.Option(help="verdicts, one JSON object a line (resumable)")],
    concurrency: _ConcurrencyOption = 16,
    image_root: _ImageRootOption = None,
) -> None:
    """Judge the last assistant reply of every conversation in a JSONL file.

    Lines already judged in --out by the same judge spec are skipped, so an interrupted run
    continues where it stopped; a line whose judge call failed is written with invalid=true and
    tried again next time.
    """
    spec = judge_spec.strip()
    replies = _read(data, image_root, require_label=False)
    done = load_previous(out, spec)
    todo = [r for r in replies.replies if r.id not in done]
    judge = _load_judge(spec) if todo else None
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = dict(done)
    with out.open("a", encoding="utf-8") as fh:

        def emit(row: Row) -> None:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            rows[row["id"]] = row

        if judge is not None:
            _run(judge, spec, todo, concurrency, emit)
    labels = [rows[r.id]["label"] for r in replies.replies if r.id in rows]
    console.print(
        f"{escape(spec)}: judged {len(todo)} replies, {len(replies.replies) - len(todo)} already "
        f"in {escape(str(out))}; unsafe {labels.count('unsafe')}, safe {labels.count('safe')}, "
        f"invalid {labels.count('invalid')}",
        soft_wrap=True,
    )


def validate_command(
    data: _DataOption,
    judge_spec: Annotated[
        str | None,
        typer.Option(
            "--judge", help="judge spec (default with --verdicts: the one that wrote them)"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    resamples: Annotated[int, typer.Option(min=0, help="bootstrap resamples (0: no CIs)")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    verdicts: Annotated[
        Path | None,
        typer.Option(help="verdicts from `judge score` to use instead of judging (by id)"),
    ] = None,
    top_k: Annotated[int, typer.Option(min=0, help="worst errors listed of each kind")] = 10,
    concurrency: _ConcurrencyOption = 16,
    image_root: _ImageRootOption = None,
) -> None:
    """Measure a judge against labelled replies (a "label": "unsafe" | "safe" on every line).

    Prints n, positive rate, accuracy, precision, recall, F1, AUC (judges with scores) and
    Cohen's kappa with bootstrap 95% CIs, overall and per source; the majority baseline; a
    threshold table and the worst errors. Exits 1 when no line can be used, or when the usable
    lines hold only one label (the report is still printed and written).
    """
    from safeturn.judges.validation import validation_report

    if judge_spec is None and verdicts is None:
        raise typer.BadParameter("give --judge, or --verdicts from a `judge score` run")
    replies = _read(data, image_root, require_label=True)
    skipped = list(replies.skipped)
    spec, rows, judge = _verdicts_to_validate(
        replies, judge_spec, verdicts, skipped, concurrency=concurrency
    )
    judged = [_judged(r, rows[r.id]) for r in replies.replies if r.id in rows]
    if not judged:
        raise SchemaError(f"{data}: no line has a verdict to compare")
    threshold = judge.threshold if judge is not None else None
    report = validation_report(
        judged,
        judge=spec,
        data=str(data),
        resamples=resamples,
        seed=seed,
        judge_threshold=threshold,
        top_k=top_k,
        skipped=sorted(skipped, key=lambda s: s.line),
    )
    print_report(report, console, judge_threshold=threshold, top_k=top_k)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
        console.print(f"report: {escape(str(json_out))}")
    _require_both_labels(data, judged)


def _verdicts_to_validate(
    replies: ReplyFile,
    judge_spec: str | None,
    verdicts: Path | None,
    skipped: list[SkippedLine],
    *,
    concurrency: int,
) -> tuple[str, dict[str, Row], Judge | None]:
    """(judge spec, verdict rows by id, the judge when it could be built) for `validate`.

    With `--verdicts` the rows are read and the judge is built only for its threshold;
    otherwise the judge is built and run on every reply.
    """
    if verdicts is not None:
        spec, rows = _given_verdicts(verdicts, judge_spec, replies, skipped)
        return spec, rows, _judge_for_threshold(spec)
    assert judge_spec is not None
    spec = judge_spec.strip()
    judge = _load_judge(spec)
    found: dict[str, Row] = {}
    _run(judge, spec, replies.replies, concurrency, lambda r: found.update({r["id"]: r}))
    return spec, found, judge


def _require_both_labels(data: Path, judged: Sequence[JudgedReply]) -> None:
    """Raise when every usable line has the same gold label (kappa and AUC are undefined)."""
    classes = {j.unsafe for j in judged}
    if len(classes) == 1:
        only = "unsafe" if classes.pop() else "safe"
        raise SchemaError(
            f"{data}: every usable line is labelled {only!r}, so kappa and AUC are undefined; "
            "add lines of the other label"
        )


def load_previous(path: Path, spec: str) -> dict[str, Row]:
    """The verdicts already in a `judge score` output, by id, for resuming.

    A last line cut off by an interruption and verdicts whose judge call failed (an `error`
    field) are dropped, and the file is rewritten without them, so they are judged again.

    Raises:
        SchemaError: The file holds something other than verdicts, or verdicts of another judge.
    """
    if not path.exists():
        return {}
    rows, rewrite = _verdict_lines(path, spec, tolerant=True)
    kept = {row["id"]: row for row in rows if not row.get("error")}
    if rewrite or len(kept) != len(rows):
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in kept.values())
        partial.replace(path)
    return kept


def _verdict_lines(path: Path, spec: str | None, *, tolerant: bool) -> tuple[list[Row], bool]:
    """(verdict rows, whether a cut-off last line was dropped) of a verdict file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read verdicts ({exc})") from exc
    lines = text.split("\n")
    rows: list[Row] = []
    cut = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerant and number == len(lines):
                cut = True  # the last line, without its newline: the run was interrupted
                continue
            raise SchemaError(f"{path}:{number}: not a verdict line ({exc})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "label" not in row:
            raise SchemaError(f"{path}:{number}: not a verdict line (needs 'id' and 'label')")
        if spec is not None and row.get("judge") != spec:
            raise SchemaError(
                f"{path}:{number}: a verdict of judge {row.get('judge')!r}, not {spec!r}; "
                "name another --out file for this judge"
            )
        rows.append(row)
    return rows, cut or (bool(text) and not text.endswith("\n"))


def _given_verdicts(
    path: Path, judge_spec: str | None, replies: ReplyFile, skipped: list[SkippedLine]
) -> tuple[str, dict[str, Row]]:
    """The verdicts of `--verdicts` by id; lines without one join `skipped`."""
    rows, _ = _verdict_lines(path, None, tolerant=False)
    specs = {str(row.get("judge")) for row in rows}
    spec = judge_spec.strip() if judge_spec is not None else None
    if spec is None:
        if len(specs) != 1:
            raise SchemaError(f"{path}: verdicts of several judges {sorted(specs)}; give --judge")
        spec = specs.pop()
    by_id = {row["id"]: row for row in rows if row.get("judge") == spec}
    if not by_id:
        raise SchemaError(f"{path}: no verdicts of judge {spec!r} (it holds {sorted(specs)})")
    missing = [r for r in replies.replies if r.id not in by_id]
    skipped.extend(SkippedLine(r.line, f"no verdict for id {r.id!r} in {path}") for r in missing)
    if missing:
        err_console.print(
            f"[yellow]note:[/yellow] {len(missing)} lines have no verdict in {escape(str(path))} "
            f"(first: line {missing[0].line}, id {escape(repr(missing[0].id))}); they are skipped",
            soft_wrap=True,
        )
    return spec, by_id


def _judge_for_threshold(spec: str) -> Judge | None:
    """The judge, only to read its `threshold`; None (with a note) when it cannot be built."""
    try:
        return _load_judge(spec)
    except SafeturnError as exc:
        err_console.print(f"[yellow]note:[/yellow] no threshold of {escape(spec)}: {exc}")
        return None


def _read(path: Path, image_root: Path | None, *, require_label: bool) -> ReplyFile:
    replies = read_replies(path, image_root=image_root, require_label=require_label)
    for skip in replies.skipped:
        err_console.print(
            f"[red]error:[/red] {escape(str(path))} line {skip.line}: {escape(skip.error)}",
            soft_wrap=True,
        )
    if not replies.replies:
        why = "the file is empty" if not replies.lines else f"{replies.lines} bad lines"
        raise SchemaError(f"{path}: no line can be judged ({why})")
    return replies


def _load_judge(spec: str) -> Judge:
    from safeturn.judges import load_judge

    return load_judge(spec)


def _run(
    judge: Judge,
    spec: str,
    todo: Sequence[LabelledReply],
    concurrency: int,
    emit: Callable[[Row], None],
) -> None:
    """Judge `todo` with `concurrency` calls in flight; `emit` gets each row in input order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("judging"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("judging", total=len(todo))

        def done(row: Row) -> None:
            bar.advance(task)
            emit(row)

        asyncio.run(judge_in_order(judge, spec, todo, concurrency=concurrency, emit=done))


async def judge_in_order(
    judge: Judge,
    spec: str,
    todo: Sequence[LabelledReply],
    *,
    concurrency: int,
    emit: Callable[[Row], None],
) -> None:
    """Judge every reply, at most `concurrency` at once, emitting rows in input order.

    A row is emitted as soon as it and every row before it are done, so an interrupted run
    loses at most the rows in flight. The judge is closed at the end.
    """
    finished: dict[int, Row] = {}
    pending = iter(enumerate(todo))
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        for index, item in pending:
            finished[index] = await _verdict_row(judge, spec, item)
            while next_index in finished:
                emit(finished.pop(next_index))
                next_index += 1

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max(1, concurrency), len(todo))):
                group.create_task(worker())
    finally:
        await judge.aclose()


async def _verdict_row(judge: Judge, spec: str, item: LabelledReply) -> Row:
    row: Row = {"id": item.id}
    try:
        verdict = await judge(item.sample, item.context, item.reply, item.turn)
    except Exception as exc:  # one failing call must not stop the file; it is retried on resume
        error = f"{type(exc).__name__}: {exc}"
        row |= {"label": "invalid", "score": None, "refused": None, "rationale": error}
        return row | {"judge": spec, "invalid": True, "error": error}
    row |= {
        "label": verdict.label,
        "score": verdict.score,
        "refused": verdict.refused,
        "rationale": verdict.rationale,
    }
    return row | {"judge": spec, "invalid": verdict.label == "invalid"}


def _judged(item: LabelledReply, row: Row) -> JudgedReply:
    invalid = bool(row.get("invalid")) or row.get("label") not in ("unsafe", "safe")
    score = row.get("score")
    assert item.unsafe is not None  # read with require_label
    return JudgedReply(
        id=item.id,
        source=item.source,
        unsafe=item.unsafe,
        predicted=None if invalid else row["label"] == "unsafe",
        score=float(score) if isinstance(score, int | float) else None,
        reply=item.reply.text,
        line=item.line,
    )


def print_report(
    report: dict[str, Any], out: Console, *, judge_threshold: Any = None, top_k: int = 10
) -> None:
    """The validation report as rich tables: metrics by group, thresholds, worst errors."""
    groups = [("overall", report["overall"]), *report["by_source"].items()]
    if len(report["by_source"]) == 1:
        groups = groups[:1]
    table = Table(
        title=escape(f"{report['judge']} on {report['data']}: 95% bootstrap CI; – undefined")
    )
    table.add_column("metric")
    for name, _ in groups:
        table.add_column(escape(name), justify="right")
    table.add_row("n", *(str(m["n"]) for _, m in groups))
    table.add_row("unsafe", *(_num(m["positive_rate"]) for _, m in groups))
    for metric in CI_METRICS:
        table.add_row(metric, *(_with_ci(m[metric], m["ci"][metric]) for _, m in groups))
    table.add_row("majority", *(_num(m["majority_baseline"]) for _, m in groups))
    table.add_row("invalid", *(str(m["invalid"]) for _, m in groups))
    out.print(table)
    if report["thresholds"]:
        cuts = Table(title="unsafe when score >= threshold (* the judge's own)")
        for column in ("threshold", *THRESHOLD_METRICS):
            cuts.add_column(column, justify="right")
        for row in report["thresholds"]:
            mark = " *" if row["threshold"] == judge_threshold else ""
            cuts.add_row(
                f"{row['threshold']:.4g}{mark}", *(_num(row[m]) for m in THRESHOLD_METRICS)
            )
        out.print(cuts)
    _print_errors(report["worst_errors"], out, top_k)
    if report["skipped"]:
        out.print(f"skipped lines: {len(report['skipped'])} (listed above and in --json)")


def _print_errors(errors: list[dict[str, Any]], out: Console, top_k: int) -> None:
    hidden = 0
    for kind in ("false positive", "false negative"):
        group = [e for e in errors if e["kind"] == kind]
        if not group:
            continue
        out.print(f"[bold]worst errors: {kind}s[/bold] ({len(group)} listed)")
        for error in group[:top_k]:
            head = f"line {error['line']} · {error['id']} · {error['source']}"
            score = "" if error["score"] is None else f" · score {error['score']:.3f}"
            out.print(f"  {escape(head + score)}", soft_wrap=True)
            out.print(f"    [dim]{escape(error['excerpt'][:_PRINTED_EXCERPT])}[/dim]")
        hidden += max(0, len(group) - top_k)
    if hidden:
        out.print(f"... and {hidden} more errors (all in --json)")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"
