"""The ``leadpulse`` command line.

Subcommands: ``simulate``, ``backtest`` (offline, in process); ``worker``,
``replay``, ``demo`` (live, Kafka + Redis). Every subcommand is a small
function over the packages, so the same things can be done from Python.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import lzma
import os
import signal
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import tzinfo
from pathlib import Path
from typing import IO, Any

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
PROGRESS_LOG_S = 60.0  # off a terminal, long runs log their progress this often


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


@contextmanager
def progress(
    label: str, total: int | None = None, log_every_s: float = 0.0, count: Callable[[], int] | None = None,
) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal. Elsewhere (a log, a script's pipe), with ``log_every_s``,
    a line on stderr at most that often, once the run has lasted that long: how far, and
    about how long is left (``count`` gives the total then, when ``total`` is None, so a
    short run never pays for counting).

    >>> import io, contextlib
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err), progress("backtest", 1_000, log_every_s=1e-9) as tick:
    ...     tick(250)
    >>> err.getvalue().startswith("backtest: 250 lines of 1,000 (25%), 0 s; about 0 s left")
    True
    """
    if not sys.stderr.isatty():
        if log_every_s <= 0:
            yield lambda _n: None
            return
        start = last = time.monotonic()
        known = total

        def log(n: int) -> None:
            nonlocal last, known
            now = time.monotonic()
            if now - last < log_every_s:
                return
            last = now
            if known is None and count is not None:
                known = count()
            elapsed = now - start
            line = f"{label}: {n:,} lines"
            if known and 0 < n <= known:
                left = elapsed * (known - n) / n
                line += f" of {known:,} ({100 * n / known:.0f}%), {_duration(elapsed)}; about {_duration(left)} left"
            else:
                line += f", {_duration(elapsed)}"
            print(line, file=sys.stderr, flush=True)

        yield log
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,} lines"),
        TimeElapsedColumn(), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, completed=n)


def _duration(seconds: float) -> str:
    """
    >>> _duration(42.4), _duration(754), _duration(7_380)
    ('42 s', '12 min 34 s', '2 h 3 min')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3_600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3_600} h {s % 3_600 // 60} min"


# How packed files begin (open_input unpacks them; auto_workers counts them unpacked).
GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"PK\x03\x04"


def open_input(path: Path) -> IO[bytes]:
    r"""Open a data file for reading bytes, decompressing it on the fly when it is packed.

    Told by content, not by name: gzip, bzip2 and xz, and a zip archive that holds one
    data file (as dataset downloads often come). Excel workbooks and Parquet files
    (which the imports read, see :mod:`features.workbook` and :mod:`features.parquet`)
    are refused with what to do instead, rather than read as garbled rows.

    >>> import gzip, tempfile, zipfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = folder / "events.jsonl.gz"
    >>> _ = path.write_bytes(gzip.compress(b'{"a": 1}\n'))
    >>> with open_input(path) as handle:
    ...     handle.read()
    b'{"a": 1}\n'
    >>> with zipfile.ZipFile(folder / "archive.zip", "w") as z:
    ...     z.writestr("orders.csv", "customer,time\n")
    >>> with open_input(folder / "archive.zip") as handle:
    ...     handle.read()
    b'customer,time\n'
    """
    with open(path, "rb") as probe:
        head = probe.read(8)
    if head.startswith(GZIP_MAGIC):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if head.startswith(BZIP2_MAGIC):
        import bz2

        return bz2.open(path, "rb")
    if head.startswith(XZ_MAGIC):
        import lzma

        return lzma.open(path, "rb")
    if head.startswith(ZIP_MAGIC):
        return _open_zip_member(path)
    if head.startswith(b"PAR1"):
        raise ValueError(
            f"{path.name} is a Parquet file: turn its rows into events first with "
            "`leadpulse import-transactions` or `import-events`, which read Parquet with pyarrow "
            "installed (pip install 'leadpulse[parquet]')")
    from features.sqlite_table import MAGIC as SQLITE_MAGIC

    if head.startswith(SQLITE_MAGIC[:8]):
        raise ValueError(
            f"{path.name} is a SQLite database: turn a table of it into events first with "
            "`leadpulse import-transactions` or `import-events` (--table NAME, or --query 'select ...')")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise ValueError(_EXCEL.format(name=path.name))
    return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it


_EXCEL = ("{name} is an Excel 97-2003 workbook: save the sheet as .xlsx or CSV (File > Save As > CSV UTF-8, "
          "or pandas: pd.read_excel(f).to_csv(out, index=False)) and import that")


def _open_zip_member(path: Path) -> IO[bytes]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path.name} is a zip archive (or an .xlsx) that is damaged or cut short ({exc})") from None
    names = zip_data_members(archive)
    if "xl/workbook.bin" in names or "content.xml" in names and "mimetype" in names:
        archive.close()
        kind = "an Excel binary workbook (.xlsb)" if "xl/workbook.bin" in names else "an OpenDocument file (.ods)"
        raise ValueError(f"{path.name} is {kind}: save the sheet as .xlsx (which the imports read) or CSV")
    if any(n == "xl/workbook.xml" for n in names) or (len(names) == 1 and names[0].lower().endswith(".xlsx")):
        archive.close()
        raise ValueError(f"{path.name} is an Excel workbook: turn its rows into events first with "
                         "`leadpulse import-transactions` or `import-events`, which read .xlsx, "
                         "or save the sheet as CSV")
    if len(names) != 1:
        archive.close()
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(f"{path.name} is a zip archive of {len(names)} files ({shown}): "
                         "unzip it and give one of them")
    member = archive.open(names[0])
    member.close = _closing(member.close, archive.close)  # type: ignore[method-assign]
    return member


def zip_data_members(archive: zipfile.ZipFile) -> list[str]:
    """The files of a zip archive, without folders and what macOS and editors add (``__MACOSX/``, dot files)."""
    return [i.filename for i in archive.infolist()
            if not i.is_dir() and not i.filename.startswith("__MACOSX/")
            and not i.filename.rsplit("/", 1)[-1].startswith(".")]


def _closing(*closers: Callable[[], None]) -> Callable[[], None]:
    def close() -> None:
        for fn in closers:
            fn()

    return close


def count_lines(path: Path) -> int:
    with open_input(path) as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


@contextmanager
def time_ordered_lines(path: Path, window_ms: int, zone: tzinfo | None = None) -> Iterator[Iterable[bytes]]:
    """The file's lines in event-time order.

    A file in time order (within ``window_ms``, the lateness the replay absorbs) is
    streamed as it is. Any other order (by customer, as SQL exports often are)
    would advance the event-time clock ahead of customers still to come and
    corrupt every label, so such a file is sorted in memory first, and stderr
    says so. With ``zone``, times without a UTC offset are read in it
    (:func:`features.events.with_zone`).
    """
    from features.events import out_of_order, time_sorted, with_zone, without_bom

    def lines(handle: Iterable[bytes]) -> Iterable[bytes]:
        handle = without_bom(handle)
        return handle if zone is None else (with_zone(line, zone) for line in handle)

    with open_input(path) as handle:
        behind = out_of_order(lines(handle), window_ms)
    with open_input(path) as handle:
        if not behind:
            yield lines(handle)
            return
        print(f"{path.name}: {behind:,} events are more than {window_ms / 60_000:g} min older than a "
              "line above them (not in time order): sorting the file in memory first", file=sys.stderr)
        yield time_sorted(lines(handle))


def zone_arg(text: str) -> tzinfo:
    """``--timezone``: UTC or an IANA zone name, read as the imports read theirs.

    >>> zone_arg("utc"), zone_arg("Europe/Paris").key
    (datetime.timezone.utc, 'Europe/Paris')
    """
    from features.importer import ImportFailed, time_zone

    try:
        return time_zone(text)
    except ImportFailed as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


NAIVE_HINT = ("hint: event times without a UTC offset; give --timezone with the zone they were written in "
              "(UTC, Europe/Paris, America/New_York, ...) to read them in it")


@command("simulate")
def cmd_simulate(args: argparse.Namespace) -> int:
    from scoring.simulator import SimulationConfig, write_jsonl

    cfg = SimulationConfig(
        customers=args.customers, days=args.days, seed=args.seed,
        regime_change=args.regime_change or args.regime is not None,
        regime=args.regime or "behaviour", dirty=args.dirty if args.dirty is not None else 0.0,
        web=not args.purchases_only, campaigns=not args.purchases_only,
    )
    summary = write_jsonl(cfg, args.out)
    print(json.dumps({"out": str(args.out), **_plain(summary)}, indent=2))
    return 0


def _ratio_cell(k: Mapping[str, Any]) -> str:
    """A kind's top/bottom decile ratio for the summary table: its 95% lower bound, marked,
    when the bottom decile holds too few outcomes for the point figure to mean much.

    >>> _ratio_cell({"top_bottom_decile_ratio": 1245.9, "top_bottom_ratio_low": 2.43, "bottom_decile_positives": 0})
    '>=2.4'
    >>> _ratio_cell({"top_bottom_decile_ratio": 8.04, "top_bottom_ratio_low": 6.1, "bottom_decile_positives": 40})
    '8.0'
    >>> _ratio_cell({"top_bottom_decile_ratio": 5.8, "top_bottom_ratio_low": 0.4, "bottom_decile_positives": 1})
    '?'
    """
    from scoring.metrics import loose_ratio_bound

    low = loose_ratio_bound(k)
    if low is not None:
        return f">={low:.1f}" if low >= 1.0 else "?"
    return _f(k.get("top_bottom_decile_ratio"), 1)


def _has_loose_ratio(k: Mapping[str, Any]) -> bool:
    """Whether a kind's line or its lines by scoring moment quote a ratio's bound (or ``?``).

    >>> _has_loose_ratio({"by_moment": {"idle": {"batch_weekly": {"top_bottom_ratio_low": 0.3,
    ...                                                            "bottom_decile_positives": 2}}}})
    True
    """
    from scoring.metrics import loose_ratio_bound

    moments = (k.get("by_moment") or {}).values()
    figures = [k, *moments, *(m.get(part) or {} for m in moments
                              for part in ("online_on_batch_examples", "batch_weekly"))]
    return any(loose_ratio_bound(f) is not None for f in figures)


def _plain(obj: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


class Terminated(BaseException):
    """SIGTERM (timeout, systemd, docker stop) in a command that must stop its worker processes."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@command("backtest")
def cmd_backtest(args: argparse.Namespace) -> int:
    # Stopped as Ctrl-C stops it, through the replay's cleanup: its worker processes go too.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _backtest(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _backtest(args: argparse.Namespace) -> int:
    from scoring.backtest import BacktestConfig, run_backtest, write_report
    from scoring.config import load_scoring_config
    from scoring.parallel import ShardedCore, fork_cores
    from streams.runtime import tune_gc

    tune_gc()  # a replay allocates by the million and frees nearly all of it at once
    out_dir = Path(args.out)
    # Said before the replay, naming the option: an OSError later read as "cannot read the input".
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out {out_dir} is a file; give a directory for report.json and report.html", file=sys.stderr)
        return 2
    for option, given in (("--scores-out", args.scores_out), ("--customers-out", args.customers_out)):
        if given and Path(given).is_dir():
            print(f"error: {option} {given} is a directory; give a file name", file=sys.stderr)
            return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.scores_out:
        Path(args.scores_out).parent.mkdir(parents=True, exist_ok=True)
    # Both read first: a mistake in --compare's file stops the command before, not after, a replay.
    configs = [load_scoring_config(path) for path in [args.config] + ([args.compare] if args.compare else [])]
    reports = []
    total = count_lines(Path(args.file)) if sys.stderr.isatty() else None
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.sample <= 100:
        print("error: --sample is a percent of the customers, 1 to 100", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers > 1 and args.redis:
        print("error: --workers replays on the in-process store; leave out --redis or --workers",
              file=sys.stderr)
        return 2
    workers = args.workers or auto_workers(Path(args.file), configs, bool(args.redis))
    sharded = workers > 1
    if sharded and not args.workers:
        print(f"replaying on {workers} worker processes, customers hashed over them (a large file, "
              f"{fork_cores()} cores; --workers 1 for one process)", file=sys.stderr)
    for i, scfg in enumerate(configs):
        core = _core(scfg, args.redis)
        bcfg = BacktestConfig(
            batch_size=args.batch_size,
            reorder_window_ms=scfg.lateness_ms,
            drop_types=tuple(args.drop_types or ()) + (("web", "campaign") if args.purchases_only else ()),
            batch_baseline=not args.no_batch_baseline,
            group_by=args.group_by,
            change_at_ms=_change_at_ms(args.change_at),
            scores_out=Path(args.scores_out) if args.scores_out and i == 0 else None,
            customers_out=Path(args.customers_out) if args.customers_out and i == 0 else None,
            sample_pct=args.sample,
        )
        runner: Any = core
        if sharded:
            try:
                runner = ShardedCore(core, workers)
            except OSError as exc:  # no process to fork (a container's limit, memory)
                if args.workers or i > 0:  # asked for, or --compare's first replay had them
                    print(f"error: could not start {workers} worker processes: {exc}", file=sys.stderr)
                    return 2
                print(f"note: could not start {workers} worker processes ({exc}); replaying in one",
                      file=sys.stderr)
                workers, sharded = 1, False
        # Off a terminal, a line a minute on a long replay: a script's log says it is alive and when it ends.
        with progress(f"backtest {scfg.name}", total, log_every_s=PROGRESS_LOG_S,
                      count=lambda: count_lines(Path(args.file))) as tick, \
                time_ordered_lines(Path(args.file), scfg.lateness_ms, args.timezone) as lines:
            bcfg.progress = tick
            report = run_backtest(lines, bcfg, runner)
            # Line numbers in the report are the file's own unless it had to be sorted.
            report["input_sorted"] = isinstance(lines, list)
            numbers: list[int] = getattr(lines, "numbers", [])
            for bad in report.get("invalid_examples", ()) if numbers else ():
                bad["first_line"] = numbers[bad["first_line"] - 1]  # the file's own line, not the sorted order's
        report["config"]["name"] = scfg.name
        report["config"]["workers_chosen"] = "given" if args.workers else "auto"
        report["input"] = getattr(args, "given_file", args.file)  # a pipe's own name, not its copy's
        reports.append(report)
    if len(reports) == 1:
        path = write_report(reports[0], out_dir)
    else:
        for name, rep in zip(("a", "b"), reports, strict=True):
            write_report(rep, out_dir / name)
        path = write_report({"compare": True, "a": reports[0], "b": reports[1]}, out_dir)
    _write_html(out_dir, reports)
    print(_headline(reports))
    naive = any("no UTC offset" in e["reason"] for e in reports[0].get("invalid_examples", ()))
    none_read = not reports[0]["events"] and reports[0]["invalid"]
    if none_read and _looks_like_csv(Path(args.file)):
        print("hint: this looks like a CSV table, not JSON Lines events: turn it into purchase events "
              "with 'leadpulse import-transactions' first (see its --help)", file=sys.stderr)
    elif none_read and _all_ahead_of_the_clock(reports[0]):
        print("hint: every line's time is more than a day ahead of this machine's clock: a history shifted "
              "into the future, or a clock here set in the past ('date' says which); event times may not lie "
              "ahead of the clock", file=sys.stderr)
    elif none_read and not naive:
        print("hint: no line is a leadpulse event; JSON Lines of another shape (an analytics or CDP "
              "export) become events with 'leadpulse import-events' (or import-transactions), naming "
              "its keys as columns, nested ones as a.b", file=sys.stderr)
    if naive:
        print(NAIVE_HINT, file=sys.stderr)
    for note in _option_notes(reports[0], args.group_by, _change_at_ms(args.change_at)) + _history_notes(reports[0]):
        print(note)
    print(f"report: {path}")
    written = reports[0].get("customers_out")
    first = f" with {args.config or 'the defaults'} (the first configuration)" if args.compare else ""
    if written:
        n = written["customers"]
        print(f"customers: {written['path']} ({n:,} customer{'s' if n != 1 else ''} scored as of {written['as_of']}"
              f"{first})")
    if args.scores_out and args.compare:
        print(f"scores: {args.scores_out}{first}")
    return 0


def _write_html(out_dir: Path, reports: list[dict[str, Any]]) -> None:
    try:
        from scoring.report import write_html
    except ImportError:
        return
    write_html(reports, out_dir / "report.html")


# A replay of a file this large or larger shards over two processes by default: below it,
# forking and meeting the workers cost what the second core gives (measured: 10,000 events,
# 2.3 MB, the same wall time either way; 30,000 events, 7 MB, 10% quicker sharded).
AUTO_WORKERS_MIN_BYTES = 4 << 20
# A packed file (gzip, bzip2, xz, zip) counts as this many times its size: JSON Lines of
# events pack 6-10 to 1 (the 2k-customer simulation: 44 MB, 5.1 MB gzipped).
PACKED_MAGIC = (GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC, ZIP_MAGIC)
PACKED_RATIO = 6


def auto_workers(path: Path, configs: list[Any], redis: bool, cores: int | None = None) -> int:
    """The worker processes ``backtest`` uses without ``--workers``: 2 or 1.

    Two where they are known to be quicker and to give the report any worker count gives:
    a file of at least :data:`AUTO_WORKERS_MIN_BYTES` on the in-process store, two or more
    cores to fork onto (:func:`~scoring.parallel.fork_cores`: Linux), and learned kinds that are logistic and
    learn at horizon close (a tree or forest is shipped whole to the workers each round,
    and ``learn_at: fresh`` loses its freshness to the rounds). More than two were not
    measured here: ``--workers N`` asks for them.

    >>> from scoring.config import load_scoring_config
    >>> auto_workers(Path("no-such-file"), [load_scoring_config(None)], redis=False, cores=2)
    1
    """
    from scoring.parallel import fork_cores

    cores = fork_cores() if cores is None else cores
    if redis or cores < 2:
        return 1
    try:
        if not path.is_file():
            return 1  # a pipe: its size is unknown
        size = path.stat().st_size
        with open(path, "rb") as probe:
            if probe.read(6).startswith(PACKED_MAGIC):
                size *= PACKED_RATIO  # what open_input will unpack
    except OSError:
        return 1
    if size < AUTO_WORKERS_MIN_BYTES:
        return 1
    for scfg in configs:
        for kind in scfg.kinds:
            if kind.learned and (kind.model != "logistic" or kind.learn_at != "horizon"):
                return 1
    return 2


def _core(scfg: Any, redis_url: str | None) -> Any:
    from features.engine import FeatureEngine
    from scoring.core import ScoringCore
    from scoring.state import InMemoryStateStore

    engine = FeatureEngine(scfg.catalog, scfg.sensitive)
    if redis_url:
        from features.redis_store import RedisFeatureStore

        store: Any = RedisFeatureStore.from_url(redis_url, lateness_ms=scfg.lateness_ms)
    else:
        from features.store import InMemoryFeatureStore

        store = InMemoryFeatureStore(scfg.lateness_ms)
    return ScoringCore(
        engine, store, InMemoryStateStore(), kinds=scfg.kinds, policy=scfg.policy,
        lateness_ms=scfg.lateness_ms, sensitive=scfg.sensitive,
    )


def _looks_like_csv(path: Path) -> bool:
    """A first line with separators and no JSON object: a table given where events belong."""
    with open_input(path) as handle:
        first = handle.readline(4096).strip()
    return not first.startswith(b"{") and any(sep in first for sep in (b",", b";", b"\t", b"|"))


def _headline(reports: list[dict[str, Any]]) -> str:
    from features.importer import one_order_each_note
    from scoring.parallel import fork_cores
    from scoring.report import interval_text

    lines = []
    for rep in reports:
        name = rep["config"].get("name", "default")
        lines.append(
            f"[{name}] {rep['events']:,} events ({rep['invalid']:,} invalid, {rep['duplicates']:,} duplicates) "
            f"in {rep['seconds']:.1f}s"
        )
        if "sample_pct" in rep:
            lines.append(f"  a {rep['sample_pct']}% sample of the customers (by a hash of the id): "
                         f"{rep['sampled_out']:,} events of the others left out")
        currencies = rep.get("purchase_currencies") or {}
        if len(currencies) > 1:
            shown = ", ".join(f"{code} {n:,}" for code, n in list(currencies.items())[:5])
            lines.append(f"  note: purchases in {len(currencies)} currencies ({shown}) are summed as given; "
                         "convert them first (import-transactions --convert-to)")
        for bad in rep.get("invalid_examples", [])[:3]:
            # A sorted file's invalid lines come in time order, not the file's: one of them, not the first.
            first = "for one, line" if rep.get("input_sorted") else "first at line"
            where = f", {first} {bad['first_line']:,}" if "first_line" in bad else ""
            lines.append(f"  invalid: {bad['count']:,} x {bad['reason'][:110]}{where}")
        lines.append(
            f"  {'kind':<22}{'labels':>9}{'pos':>8}{'AUC':>7}{'rule':>7}{'top/bot':>9}"
            f"   {'online':>7}{'batch':>7}  (on the batch model's examples)"
        )
        for kind, k in rep["kinds"].items():
            b = k["baselines"]
            batch = b.get("batch_weekly", {})
            same = batch.get("online_on_same_examples", {})
            lines.append(
                f"  {kind:<22}{k['labels']:>9,}{k['positives']:>8,}{_f(k['auc']):>7}"
                f"{_f(b['rule']['auc']):>7}{_ratio_cell(k):>9}"
                f"   {_f(same.get('auc')):>7}{_f(batch.get('auc')):>7}"
            )
        if any(_has_loose_ratio(k) for k in rep["kinds"].values()):
            from scoring.metrics import FEW_BOTTOM_OUTCOMES

            lines.append(f"  note: >=: the bottom decile holds fewer than {FEW_BOTTOM_OUTCOMES} outcomes, so its "
                         "top/bot is the ratio's 95% lower bound; ?: too few to bound it above 1 (the point "
                         "figures are in report.json)")
        for kind, k in rep["kinds"].items():
            if k["auc"] is None:  # a "-" in the table says nothing of why
                lines.append(f"  {kind}: no AUC: {k['labels']:,} labels, {k['positives']:,} positive; it needs "
                             "positive and negative labels both (a longer history or more customers)")
        if once := one_order_each_note(rep.get("buyers", 0), rep.get("repeat_buyers", 0)):
            lines.append(f"  note: {once}")
        for kind, k in rep["kinds"].items():
            b = k["baselines"]
            on_rule = b["rule"].get("online_minus_rule_ci95")
            batch = b.get("batch_weekly", {})
            same = batch.get("online_on_same_examples", {})
            text = ""
            sources = k.get("sources") or {}
            if sources and not sources.get("model"):
                # Every score the rule's: "online - rule" would compare the rule before and after
                # its one calibration with itself.
                text += "the model never served: every score is the cold-start rule's"
            elif on_rule and k["auc"] is not None and b["rule"]["auc"] is not None:
                text += f"online - rule {k['auc'] - b['rule']['auc']:+.3f}" + interval_text(on_rule)
            if batch.get("online_minus_batch_ci95") and same.get("auc") is not None and batch.get("auc") is not None:
                text += ("; " if text else "") + f"online - batch {same['auc'] - batch['auc']:+.3f}" + interval_text(
                    batch["online_minus_batch_ci95"])
            if text:
                lines.append(f"  {kind}: {text}")
        for kind, k in rep["kinds"].items():
            pooled = (k.get("change") or {}).get("after_pooled") or {}
            on, ba, fr = pooled.get("online_auc"), pooled.get("batch_auc"), pooled.get("frozen_auc")
            if on is None or ba is None:
                continue
            text = (f"  after the change, {kind}: online - batch {on - ba:+.3f}"
                    + interval_text(pooled.get("online_minus_batch_ci95")))
            if fr is not None:
                text += f", online - frozen {on - fr:+.3f}" + interval_text(pooled.get("online_minus_frozen_ci95"))
            hs = pooled.get("hindsight_auc")
            if hs is not None:
                text += f", online - hindsight fit {on - hs:+.3f}" + interval_text(
                    pooled.get("online_minus_hindsight_ci95"))
            lines.append(text)
        for kind, k in rep["kinds"].items():
            if k.get("by_moment"):
                lines.append(f"  {kind} by scoring moment: " + _moments(k["by_moment"]))
        for hint in (_idle_hint(rep), _workers_hint(rep, fork_cores()), _sample_hint(rep)):
            if hint:
                lines.append(hint)
        lines.extend(_ceiling_hints(rep))
        for kind, m in (rep.get("models") or {}).items():
            if not m["labels"]:
                continue  # e.g. campaign response on a purchases-only history
            state = "serving" if m["serving"] else "not serving (cold start or on trial)"
            line = f"  {kind} model at the end: {m['labels']:,} labels ({m['positives']:,} positive), {state}"
            if m.get("weights") and m.get("positives"):  # weights learned from one class say nothing
                line += "; weighs most: " + ", ".join(f"{w['feature']} {w['weight']:+.2f}" for w in m["weights"][:4])
            lines.append(line)
        lines.extend(_unlabelled(rep))
    return "\n".join(lines)


def _option_notes(rep: dict[str, Any], group_by: str | None, change_at_ms: int | None) -> list[str]:
    """What a --group-by or --change-at given could not show: a field no event has, a change outside the history.

    >>> rep = {"first_event": "2024-01-01T00:00:00+00:00", "last_event": "2024-06-30T00:00:00+00:00",
    ...        "kinds": {"churn_risk": {"fairness": {"groups": {"unknown": {}}}}}}
    >>> for line in _option_notes(rep, "segmnt", 4_102_444_800_000): print(line)
      note: no event carries segmnt: every example is in the group 'unknown' (a field of the events, as in the README)
      note: the change at 2100-01-01 is outside the history (2024-01-01 to 2024-06-30): no figures before and after it
    """
    from features.events import ms_to_iso, parse_ts_ms

    notes = []
    groups = [set((k.get("fairness") or {}).get("groups") or ()) for k in (rep.get("kinds") or {}).values()]
    if group_by and groups and all(g <= {"unknown"} for g in groups):
        notes.append(f"  note: no event carries {group_by}: every example is in the group 'unknown' "
                     "(a field of the events, as in the README)")
    first, last = rep.get("first_event"), rep.get("last_event")
    if change_at_ms is not None and first and last and not parse_ts_ms(first) < change_at_ms <= parse_ts_ms(last):
        notes.append(f"  note: the change at {ms_to_iso(change_at_ms)[:10]} is outside the history "
                         f"({first[:10]} to {last[:10]}): no figures before and after it")
    return notes


def _all_ahead_of_the_clock(rep: dict[str, Any]) -> bool:
    """Whether every invalid line was refused for a time ahead of the clock.

    >>> _all_ahead_of_the_clock({"invalid": 3, "invalid_examples": [
    ...     {"reason": "validation: ts: timestamp more than a day ahead of the clock", "count": 3}]})
    True
    """
    examples = rep.get("invalid_examples") or []
    return bool(examples) and sum(e["count"] for e in examples) == rep.get("invalid") and all(
        "ahead of the clock" in e["reason"] for e in examples)


def _history_notes(rep: dict[str, Any]) -> list[str]:
    """What the history's shape does to the figures (scoring.report.history_notes), as notes."""
    from scoring.report import history_notes

    return [f"  note: {note}" for note in history_notes(rep, currencies=False)]


def _unlabelled(rep: dict[str, Any]) -> list[str]:
    """A note for each learned kind that got no label: the table leaves such a kind out.

    >>> _unlabelled({"models": {"churn_risk": {"labels": 5}, "signup": {"labels": 0}},
    ...              "config": {"drop_types": ["web", "campaign"]}, "dropped_by_type": 120})
    ['  note: signup has no labels (web and campaign events were dropped: it may be scored at or labelled by them)']

    Dropping types the history does not hold is not why (a purchase table has none to drop):

    >>> _unlabelled({"models": {"signup": {"labels": 0}}, "config": {"drop_types": ["web"]}, "dropped_by_type": 0})
    ['  note: signup has no labels (the history has none of the events it is scored at, or no horizon closed)']
    """
    dropped = " and ".join((rep.get("config") or {}).get("drop_types") or ()) if rep.get("dropped_by_type") else ""
    why = (f"{dropped} events were dropped: it may be scored at or labelled by them" if dropped
           else "the history has none of the events it is scored at, or no horizon closed")
    return [f"  note: {kind} has no labels ({why})"
            for kind, m in (rep.get("models") or {}).items() if not m["labels"]]


def _workers_hint(rep: dict[str, Any], cores: int) -> str | None:
    """On a machine with cores to spare, a long replay says how to use them.

    >>> _workers_hint({"seconds": 140.0, "config": {"workers": None}}, 4)
    '  note: 140 s on one core of 4: --workers 3 shards the replay by customer over more (README: more cores)'
    >>> _workers_hint({"seconds": 140.0, "config": {"workers": 2, "workers_chosen": "given"}}, 4) is None
    True
    >>> _workers_hint({"seconds": 140.0, "config": {"workers": None, "workers_chosen": "given"}}, 4) is None
    True
    >>> _workers_hint({"seconds": 140.0, "config": {"workers": 2, "workers_chosen": "auto"}}, 8)
    '  note: 140 s on 2 workers of 8 cores: --workers 7 may be quicker (README: more cores)'
    """
    config = rep.get("config") or {}
    if cores < 2 or rep.get("seconds", 0) < 60 or (not config.get("workers") and config.get("workers_chosen") == "given"):
        return None  # --workers 1 asked for the plain replay
    # The replay's own process reads and learns beside the workers: one core for it.
    more = max(cores - 1, 2)
    if not config.get("workers"):
        return (f"  note: {rep['seconds']:.0f} s on one core of {cores}: --workers {more} shards the "
                "replay by customer over more (README: more cores)")
    if config.get("workers_chosen") == "auto" and more > config["workers"]:
        return (f"  note: {rep['seconds']:.0f} s on {config['workers']} workers of {cores} cores: "
                f"--workers {more} may be quicker (README: more cores)")
    return None


def _sample_hint(rep: dict[str, Any]) -> str | None:
    """After a replay of ten minutes or more: a sample of the customers is a quicker first look.

    >>> _sample_hint({"seconds": 634.0})
    '  note: --sample 10 replays a tenth of the customers (each with all of their events) in about a tenth of the time'
    >>> _sample_hint({"seconds": 634.0, "sample_pct": 10}), _sample_hint({"seconds": 100.0})
    (None, None)
    """
    if rep.get("seconds", 0) < 600 or "sample_pct" in rep:
        return None
    return ("  note: --sample 10 replays a tenth of the customers (each with all of their events) "
            "in about a tenth of the time")


def _ceiling_hints(rep: dict[str, Any]) -> list[str]:
    """A note for each kind whose outcome rate caps the top/bottom decile ratio below 3.

    >>> _ceiling_hints({"kinds": {"churn_risk": {"labels": 1000, "positives": 986}, "x": {"labels": 0}}})
    ['  note: churn_risk: 98.6% of its labels are positive, so no score can reach a top/bottom decile ratio above 1.16 (read its AUC)']
    """
    from scoring.metrics import USEFUL_RATIO, ratio_ceiling

    notes = []
    for kind, k in rep["kinds"].items():
        ceiling = ratio_ceiling(k.get("labels"), k.get("positives"))
        if ceiling is not None and ceiling < USEFUL_RATIO:
            notes.append(f"  note: {kind}: {100 * k['positives'] / k['labels']:.1f}% of its labels are positive, "
                         f"so no score can reach a top/bottom decile ratio above {ceiling:.2f} (read its AUC)")
    return notes


def _idle_hint(rep: dict[str, Any]) -> str | None:
    """A note when idle rescores make most of the work and some ticking kind rescores weekly.

    >>> _idle_hint({"events": 100, "config": {"tick_growth": {"purchase_propensity": 1.0}},
    ...   "kinds": {"purchase_propensity": {"by_moment": {"idle": {"labels": 900}, "event": {"labels": 50}}}}})
    '  note: idle rescores made 900 labels, 9.0 per event (silent customers rescored on every tick): tick_growth: 2 on purchase_propensity spaces them out with the silence (README: your own configuration)'
    """
    idle = sum(((k.get("by_moment") or {}).get("idle") or {}).get("labels", 0) for k in rep["kinds"].values())
    steady = [name for name, growth in (rep["config"].get("tick_growth") or {}).items() if growth <= 1.0]
    if not steady or not rep["events"] or idle < 5 * rep["events"]:
        return None
    return (f"  note: idle rescores made {idle:,} labels, {idle / rep['events']:.1f} per event (silent "
            f"customers rescored on every tick): tick_growth: 2 on {', '.join(steady)} spaces them out "
            "with the silence (README: your own configuration)")


def _moments(by_moment: dict[str, Any]) -> str:
    """Examples scored at an event and at an idle rescore, apart: two populations (see README).

    >>> _moments({"event": {"labels": 10, "auc": 0.7, "top_bottom_decile_ratio": 4.0,
    ...   "online_on_batch_examples": {"auc": 0.71, "top_bottom_decile_ratio": 4.2},
    ...   "batch_weekly": {"auc": 0.69, "top_bottom_decile_ratio": 4.1}}})
    'at events 10 labels, AUC 0.700, top/bot 4.0 (online / batch on the same examples 0.710 / 0.690, 4.2 / 4.1)'
    """
    parts = []
    for moment, name in (("event", "at events"), ("idle", "at idle rescores")):
        m = by_moment.get(moment)
        if not m:
            continue
        text = f"{name} {m['labels']:,} labels, AUC {_f(m['auc'])}, top/bot {_ratio_cell(m)}"
        on, ba = m.get("online_on_batch_examples") or {}, m.get("batch_weekly") or {}
        if on.get("auc") is not None and ba.get("auc") is not None:
            text += (f" (online / batch on the same examples {_f(on['auc'])} / {_f(ba['auc'])}, "
                     f"{_ratio_cell(on)} / {_ratio_cell(ba)})")
        parts.append(text)
    return "; ".join(parts)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadpulse",
        description="Streaming customer and lead scoring: simulate, import and backtest histories "
        "offline; run live workers on Kafka and Redis. Start with 'leadpulse demo'; for a table of "
        "your own, 'leadpulse inspect FILE' suggests the import.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write realistic events with ground truth (JSON Lines)")
    p.add_argument("--customers", type=int, default=1000, help="customers simulated (default %(default)s)")
    p.add_argument("--days", type=int, default=365, help="days of history (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same file (default %(default)s)")
    p.add_argument("--out", required=True)
    p.add_argument("--regime-change", action="store_true", help="behaviour drivers change halfway")
    p.add_argument("--regime", choices=("behaviour", "privacy"),
                   help="what changes halfway (implies --regime-change): behaviour (the default) or "
                   "privacy, mail apps of 45%% of customers opening every email on delivery")
    p.add_argument("--dirty", type=float, nargs="?", const=0.02, default=None,
                   help="mix in malformed and duplicate lines (fraction, default 0.02)")
    p.add_argument("--purchases-only", action="store_true", help="no web or campaign events")

    p = sub.add_parser("backtest", help="replay a JSON Lines file through the scoring core")
    p.add_argument("file", help="JSON Lines events, in any order (sorted by ts first when needed); gzip is fine")
    p.add_argument("--out", required=True, help="directory for report.json / report.html")
    p.add_argument("--config", help="scoring config YAML (kinds, policy, lateness)")
    p.add_argument("--compare", help="a second config YAML, run on the same events side by side")
    p.add_argument("--redis", help="use RedisFeatureStore at this URL instead of the in-process store")
    p.add_argument("--scores-out", help="write every labelled example (JSON Lines)")
    p.add_argument("--customers-out", metavar="FILE",
                   help="write every customer's scores as of the last event, with bands and reasons "
                   "(.csv: a column per kind and figure; otherwise JSON Lines)")
    p.add_argument("--purchases-only", action="store_true", help="drop web and campaign events")
    p.add_argument("--drop-types", nargs="*", choices=["web", "purchase", "campaign"],
                   help="drop events of these types before the replay (--purchases-only: web and campaign)")
    p.add_argument("--group-by", help="event extra field for the fairness table (e.g. segment)")
    p.add_argument("--change-at", metavar="TIME",
                   help="a known change (ISO date or time): AUC before and after it, online vs batch")
    p.add_argument("--batch-size", type=int, default=500,
                   help="events per batch at most (a batch also ends after an hour of event time; default 500)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="replay on N processes, customers hashed over them (in-process store only; "
                   "see the README: the same report for any N > 1). Default: 2 for a file of 4 MB "
                   "or more on a machine with two or more cores, else 1 (the plain replay)")
    p.add_argument("--no-batch-baseline", action="store_true", help="skip the weekly batch LR baseline")
    p.add_argument("--sample", type=int, default=100, metavar="PCT",
                   help="replay PCT%% of the customers, each with all of their events (a hash of the id: "
                   "the same customers every run), for a first look at a large history")
    p.add_argument("--timezone", type=zone_arg, metavar="ZONE",
                   help="read event times without a UTC offset (and bare dates) in this zone "
                   "(UTC, Europe/Paris, ...); without it such events are invalid")

    for extend in EXTRA_PARSERS:
        extend(sub)
    return parser


def _change_at_ms(text: str | None) -> int | None:
    """``--change-at``: an RFC 3339 time, or a bare date (midnight UTC).

    >>> _change_at_ms("2024-07-01"), _change_at_ms("2024-07-01T02:00:00+02:00"), _change_at_ms(None)
    (1719792000000, 1719792000000, None)
    >>> _change_at_ms(" 2024-07-01 ")
    1719792000000
    >>> _change_at_ms("2024-07-01T10:00")
    Traceback (most recent call last):
    ...
    ValueError: --change-at 2024-07-01T10:00: timestamp has no UTC offset (a date, 2024-07-01, or a time with its offset)
    """
    from features.events import parse_ts_ms

    text = (text or "").strip()
    if not text:
        return None
    try:
        return parse_ts_ms(f"{text}T00:00:00Z" if len(text) == 10 else text)
    except ValueError as exc:
        raise ValueError(f"--change-at {text}: {exc} (a date, 2024-07-01, or a time with its offset)") from None


# Other modules add subcommands here (live worker, replay, demo, import).
EXTRA_PARSERS: list[Callable[[Any], None]] = []


def main(argv: list[str] | None = None) -> int:
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        with _spooled(args):
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"leadpulse {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"leadpulse {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except BrokenPipeError:
        # Whoever read stdout went away (| head): stop quietly, as other command line tools do,
        # and point stdout at nothing so the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (FileNotFoundError, ValueError) as exc:
        print(f"leadpulse {args.command}: {_reason(exc)}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # a service it needs is unreachable: not a usage error
        print(f"leadpulse {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, EOFError, csv.Error, zlib.error, lzma.LZMAError) as exc:
        # An input that cannot be read (a directory, a compressed file cut short): a reason, not a traceback.
        cut = " (a compressed file cut short?)" if isinstance(exc, EOFError | zlib.error | lzma.LZMAError) else ""
        print(f"leadpulse {args.command}: cannot read the input{cut}: {exc}", file=sys.stderr)
        return 2


@contextmanager
def _spooled(args: argparse.Namespace) -> Iterator[None]:
    """A pipe given as the input file (``<(head -n 100000 big.jsonl)``) is copied to a temporary file.

    Commands read their file more than once (its order, then its events; an import's
    date order, then its rows), and a pipe can be read once: a second reading found it
    empty, and a backtest reported 0 events. The copy goes where temporary files go
    (``TMPDIR``) and is removed after.
    """
    name = getattr(args, "file", None)
    # "-" is standard input: the imports stream it themselves, other commands read a copy.
    stdin = name == "-" and args.command not in ("import-transactions", "import-events")
    path = Path(name) if isinstance(name, str) and name != "-" else None
    if not stdin and (path is None or not path.is_fifo()):  # a directory or a missing file: the command says so
        yield
        return
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="leadpulse-input-") as copy:
        with open(path, "rb") if path is not None else nullcontext(sys.stdin.buffer) as pipe:
            shutil.copyfileobj(pipe, copy, 1 << 20)
        copy.flush()
        print(f"{path or 'standard input'}: a pipe, read into a temporary file first", file=sys.stderr)
        args.given_file, args.file = args.file, copy.name
        yield


def _reason(exc: Exception) -> str:
    """An error in one line; for invalid settings, each variable and what is wrong with it.

    Not pydantic's own text: it repeats each input, and an input can be a secret (a Redis
    URL holds its password).
    """
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    settings = exc.title == "Settings"
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = "__".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        name = f"LEADPULSE_{where.upper()}" if settings else where
        problems.append(f"{name}: {message}" if where else message)
    return "invalid settings: " + "; ".join(problems) if settings else "; ".join(problems)


def _load_extensions() -> None:
    import importlib

    for module in ("streams.live_cli", "streams.import_cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


if __name__ == "__main__":
    sys.exit(main())
