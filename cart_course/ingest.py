"""The ingest engine: record numbered JSON lines in batched transactions, in this process or in
several worker processes partitioned by patient.

Every line gets the same treatment on both paths: decode, :func:`parse_command`,
``CourseService.execute_batch`` (one transaction per batch). A patient's lines always go to the
same worker, in file order, so each patient's stream sees the same commands in the same order as
with one process; patients are independent streams. The main process reads the file, routes each
line by its ``patient_id`` and sends the lines in rounds; it writes each round's rejected lines in
line order once every worker has answered for that round, so the report and the counts are the
same whatever the number of workers. A line counts only after its batch's transaction committed.

A worker that fails (or dies) stops the ingest with :class:`IngestAborted`, which names the first
line that may not have been recorded; ingesting the file again is safe (idempotency keys: what is
recorded is skipped).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import attrs
import msgspec

from .access import parse_as
from .bootstrap import Settings, build_service
from .bulk import bulk_gc
from .contract import Command, parse_command
from .errors import CartCourseError
from .jsonin import DuplicateKeyError, duplicate_key, loads
from .service import CourseService
from .tokens import TokenInfo

#: Commands per transaction (``--batch-size``). A commit writes the batch's pages to SQLite's
#: log and syncs it: 14 us per event in batches of 500 on a 100k-event ingest, 9 us in batches
#: of 2000 (and the per-batch queries are fewer).
BATCH = 2000
#: The most worker processes ``workers=None`` (auto) starts.
AUTO_MAX_WORKERS = 4
#: The most worker processes an ingest may be asked for, whatever the machine (see
#: :func:`max_workers`): each is a Python process with its own store connection and cache.
MAX_WORKERS = 64
#: Worker processes allowed per CPU this process may use.
WORKERS_PER_CPU = 4
#: Auto uses one process for inputs shorter than this (starting workers costs ~0.3 s).
AUTO_MIN_LINES = 1500
#: Rounds sent ahead of the one being gathered (keeps every worker busy while a round finishes).
ROUNDS_AHEAD = 3

Numbered = tuple[int, str]
#: A rejected line: its number, ``"code: message"``, and the rejection's JSON body (the error
#: code, the message, and what the error adds: ``field``, ``failed_rules``, ``allowed_moves``).
Rejected = tuple[int, str, dict[str, Any]]
Report = Callable[[int, str, dict[str, Any]], None]
Progress = Callable[[int], None]


class IngestAborted(CartCourseError):
    """The ingest stopped before the end: lines from ``first_unsure`` on may not be recorded."""

    code = "ingest_aborted"

    def __init__(self, reason: str, first_unsure: int) -> None:
        self.reason = reason
        self.first_unsure = first_unsure
        super().__init__(
            f"ingest stopped: {reason}; lines from {first_unsure} on may not have been recorded "
            "(those before were); ingest the file again to record them (lines already recorded "
            "are skipped)"
        )


# ----------------------------------------------------------------------------------------------
# One batch (both paths)
# ----------------------------------------------------------------------------------------------

_decode = msgspec.json.Decoder()
#: The UTF-8 byte order mark some editors put at the start of a file: skipped.
BOM = b"\xef\xbb\xbf"


class LineDecodeError(ValueError):
    """A line that is not JSON for a reason :class:`json.JSONDecodeError` does not cover: not
    UTF-8 text, nested too deeply, an integer with too many digits. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def numbered_lines(raw_lines: Iterable[bytes]) -> Iterator[Numbered]:
    """The non-blank lines of a JSON Lines file read as bytes, numbered from 1, each without its
    line terminator (so a JSON error's column is on the line itself) and without a UTF-8 BOM at
    the start of the file. Bytes that are not UTF-8 are kept as lone surrogates
    (``surrogateescape``): :func:`decode_line` rejects such a line, with the byte, and the other
    lines are recorded as usual."""
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        if raw.strip():
            yield number, raw.decode("utf-8", "surrogateescape")


def _not_utf8(line: str) -> LineDecodeError:
    for column, char in enumerate(line, start=1):
        if "\udc80" <= char <= "\udcff":
            return LineDecodeError(
                f"the line is not UTF-8 text (byte 0x{ord(char) - 0xDC00:02x} at column {column})"
            )
        if "\ud800" <= char <= "\udfff":
            return LineDecodeError(
                f"the line is not UTF-8 text (a lone surrogate at column {column})"
            )
    return LineDecodeError("the line is not UTF-8 text")


def decode_line(line: str) -> Any:
    """``json.loads`` semantics, faster: msgspec first; anything it refuses (NaN, 1e400, lone
    surrogate escapes, and every invalid line) goes to ``json.loads``, which accepts it or raises
    its own :class:`json.JSONDecodeError`. msgspec accepts nothing ``json.loads`` refuses and
    decodes what both accept to equal values. An object holding a key twice is refused
    (:mod:`cart_course.jsonin`).

    A line that is not UTF-8 text (see :func:`numbered_lines`), nested too deeply for the
    decoders or holding an integer of more digits than Python converts raises
    :class:`LineDecodeError`."""
    try:
        data = _decode.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    except UnicodeEncodeError:
        raise _not_utf8(line) from None
    except RecursionError:
        raise LineDecodeError("nested too deeply (arrays and objects within each other)") from None
    else:
        if (duplicate := duplicate_key(line, data)) is not None:
            raise LineDecodeError(duplicate.reason)
        return data
    try:
        return loads(line)
    except json.JSONDecodeError:
        raise
    except DuplicateKeyError as exc:
        raise LineDecodeError(exc.reason) from None
    except RecursionError:
        raise LineDecodeError("nested too deeply (arrays and objects within each other)") from None
    except ValueError as exc:
        if "digits" in str(exc):
            raise LineDecodeError(
                f"an integer has more than {sys.get_int_max_str_digits()} digits"
            ) from None
        raise LineDecodeError(str(exc)) from None


def record_batch(
    service: CourseService, batch: Sequence[Numbered], token: TokenInfo | None = None
) -> tuple[Counter[str], list[Rejected]]:
    """Record one batch in one transaction: the counts and the rejected lines in line order
    (``token``: each line recorded as the token's actor, its own actor dropped)."""
    counts: Counter[str] = Counter()
    rejected: list[Rejected] = []
    commands: list[tuple[int, Command]] = []
    for number, line in batch:
        try:
            # msgspec's decoder gives JSON data only (finite numbers, str keys): the digest may
            # then be written by the fast encoder. Lines it refuses (NaN, 1e400, big integers,
            # errors) go through decode_line: json's semantics, json's encoder for the digest.
            data, json_data = _decode.decode(line), True
            if (duplicate := duplicate_key(line, data)) is not None:
                rejected.append(_rejection(number, "invalid_json", duplicate.reason))
                continue
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError, RecursionError):
            json_data = False
            try:
                data = decode_line(line)
            except json.JSONDecodeError as exc:
                rejected.append(
                    _rejection(number, "invalid_json", f"{exc.msg} (column {exc.colno})")
                )
                continue
            except LineDecodeError as exc:
                rejected.append(_rejection(number, "invalid_json", exc.reason))
                continue
        try:
            command = (
                parse_command(data, json_data=json_data)
                if token is None
                else parse_as(data, token, json_data=json_data)
            )
            commands.append((number, command))
        except CartCourseError as exc:
            rejected.append(_refused(number, exc))
        except RecursionError:
            rejected.append(
                _rejection(number, "invalid_command", "nested too deeply to be a command")
            )
    if commands:
        results = service.execute_batch([c for _, c in commands])
        for (number, _), result in zip(commands, results, strict=True):
            if isinstance(result, CartCourseError):
                rejected.append(_refused(number, result))
            else:
                counts[result.status] += 1
    rejected.sort(key=_line_number)
    counts["rejected"] = len(rejected)
    counts["lines"] = len(batch)
    return counts, rejected


def _rejection(number: int, code: str, message: str) -> Rejected:
    return number, f"{code}: {message}", {"error": code, "message": message}


def _refused(number: int, exc: CartCourseError) -> Rejected:
    return number, f"{exc.code}: {exc.message}", exc.to_json()


def _line_number(rejected: Rejected) -> int:
    return rejected[0]


def _batches(items: Iterable[Numbered], size: int) -> Iterator[list[Numbered]]:
    batch: list[Numbered] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CartCourseError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------
# Choosing the number of workers
# ----------------------------------------------------------------------------------------------


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def max_workers() -> int:
    """The most workers an ingest may use here: :data:`WORKERS_PER_CPU` per CPU this process
    may use, at most :data:`MAX_WORKERS` (more only cost memory and contention)."""
    return max(1, min(MAX_WORKERS, WORKERS_PER_CPU * cpu_count()))


def auto_workers(settings: Settings) -> int:
    """Workers for ``workers=None``: the CPUs this process may use, at most 4; one for the
    ``memory:`` store (it lives in one process)."""
    if settings.store.kind == "memory":
        return 1
    return max(1, min(cpu_count(), AUTO_MAX_WORKERS))


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


@attrs.define
class Ingest:
    """Record numbered lines; ``report(number, text, body)`` gets each rejected line in line
    order (``text``: ``"code: message"``; ``body``: the rejection as JSON, as the contract gives it),
    ``progress(n)`` the number of lines done so far in steps.

    ``workers``: None for auto (see :func:`auto_workers`; one process for short inputs), 1 for
    this process with ``service`` (or a service built from ``settings``), N > 1 for N worker
    processes each with its own service on the same store (not for ``memory:``: one process).

    Workers are started with ``spawn`` (nothing inherited from this process): a script that runs
    an ingest with workers must do so under ``if __name__ == "__main__":``, as multiprocessing
    requires; the ``cart-course`` command does."""

    settings: Settings
    report: Report
    progress: Progress | None = None
    workers: int | None = None
    batch_size: int = BATCH
    service: Callable[[], CourseService] | None = None
    #: The token the lines are recorded as (its actor; the CLI's ``--token-file``): recorded
    #: in this process only, by ``service`` (the service as the token sees it).
    token: TokenInfo | None = None
    #: How many workers the last run used.
    used_workers: int = attrs.field(default=0, init=False)

    def run(self, lines: Iterable[Numbered]) -> Counter[str]:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.workers is not None and not 1 <= self.workers <= max_workers():
            raise ValueError(f"workers must be 1 to {max_workers()} (or None for auto)")
        workers = self.workers if self.workers is not None else auto_workers(self.settings)
        if self.settings.store.kind == "memory" or self.token is not None:
            workers = 1  # a token's lines: in this process, by the service as it sees it
        it = iter(lines)
        if self.workers is None and workers > 1:
            head: list[Numbered] = []
            for item in it:
                head.append(item)
                if len(head) >= AUTO_MIN_LINES:
                    break
            else:
                workers = 1  # a short input: starting workers costs more than it saves
            it = _chain(head, it)
        self.used_workers = max(1, workers)
        if self.used_workers == 1:
            with bulk_gc() as settle:
                return self._in_process(it, settle)
        return _Pool(self, self.used_workers).run(it)

    def _in_process(self, lines: Iterator[Numbered], settle: Callable[[], None]) -> Counter[str]:
        owned = self.service is None
        service = self.service() if self.service is not None else build_service(self.settings)
        counts: Counter[str] = Counter()
        done_through = 0  # the last line number whose batch is done
        try:
            for batch in _batches(lines, self.batch_size):
                try:
                    done, rejected = record_batch(service, batch, self.token)
                except CartCourseError as exc:
                    raise IngestAborted(exc.message, batch[0][0]) from None
                settle()
                for number, text, body in rejected:
                    self.report(number, text, body)
                counts.update(done)
                done_through = batch[-1][0]
                if self.progress is not None:
                    self.progress(len(batch))
        except KeyboardInterrupt:
            raise IngestAborted("interrupted", done_through + 1) from None
        finally:
            if owned:
                service.close()
        return counts


#: A round holds this share of ``batch_size`` lines per worker: routing by patient deals the
#: lines out unevenly (a patient's lines come in runs), and a worker's share over
#: ``batch_size`` would be split into two half batches (two commits). At 90 %, shares of a demo
#: cohort's rounds stay within 1,710 +- 200 lines for 2 to 4 workers and batches of 2,000.
ROUND_SHARE = 0.9


def round_lines(batch_size: int, workers: int) -> int:
    """Lines per round: about :data:`ROUND_SHARE` of a batch per worker (at least one line)."""
    return max(1, int(batch_size * workers * ROUND_SHARE))


def _chain(head: list[Numbered], rest: Iterator[Numbered]) -> Iterator[Numbered]:
    yield from head
    yield from rest


class _RoutingKey(msgspec.Struct):
    patient_id: str | None = None


_route_decoder = msgspec.json.Decoder(_RoutingKey)


def route(line: str, workers: int) -> int:
    """The worker for a line: a stable hash of its patient_id (the same in every run and
    process). A line whose patient cannot be found (not JSON, no string patient_id) goes to
    worker 0: it will be rejected there, with its line number, like in one process."""
    try:
        patient_id = _route_decoder.decode(line).patient_id
    except (UnicodeEncodeError, RecursionError):  # not UTF-8, nested too deeply: rejected
        return 0
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            return 0
        patient_id = data.get("patient_id") if isinstance(data, dict) else None
    if not isinstance(patient_id, str):
        return 0
    return zlib.crc32(patient_id.encode("utf-8", "surrogatepass")) % workers


@attrs.define
class _Round:
    first: int  # line numbers of the round's first and last lines
    last: int
    lines: int = 0
    owed: list[int] = attrs.Factory(list)  # workers that have part of it
    counts: Counter[str] = attrs.Factory(Counter)
    rejected: list[Rejected] = attrs.Factory(list)


class WorkerFailed(Exception):
    def __init__(self, worker: int, reason: str) -> None:
        self.worker = worker
        self.reason = reason
        super().__init__(reason)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (and so in the processes started in it), when this is
    the main thread (only it may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Pool:
    def __init__(self, ingest: Ingest, workers: int) -> None:
        self.ingest = ingest
        self.n = workers
        self.procs: list[Any] = []
        self.tasks: list[Connection] = []
        self.results: list[Connection] = []

    def start(self) -> None:
        # Open the store once here, then close it: the tables exist (and SQLite is in WAL mode)
        # before the workers open it together, and a store that cannot be opened is the usual
        # one-line error before any process starts.
        build_service(self.ingest.settings).close()
        ctx = multiprocessing.get_context("spawn")  # nothing inherited: no open store, no threads
        # Workers start with Ctrl-C ignored (an ignored signal stays ignored across exec, and
        # Python then installs no handler of its own): a Ctrl-C while they import is this
        # process's to handle, not a traceback from each worker. This process ignores it only
        # while the workers are forked (each start returns once its worker is executing).
        with _sigint_ignored():
            self._spawn(ctx)

    def _spawn(self, ctx: Any) -> None:
        for i in range(self.n):
            task_r, task_w = ctx.Pipe(duplex=False)
            result_r, result_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=worker_main,
                args=(task_r, result_w, self.ingest.settings, self.ingest.batch_size),
                name=f"cart-course-ingest-{i + 1}",
                daemon=True,
            )
            proc.start()
            task_r.close()
            result_w.close()
            self.procs.append(proc)
            self.tasks.append(task_w)
            self.results.append(result_r)

    def stop(self, *, kill: bool) -> None:
        for conn in self.tasks:
            with contextlib.suppress(OSError):
                if not kill:
                    conn.send(None)
                conn.close()
        for proc in self.procs:
            if kill:
                proc.terminate()
            proc.join(timeout=None if not kill else 10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.results:
            conn.close()

    def run(self, lines: Iterator[Numbered]) -> Counter[str]:
        counts: Counter[str] = Counter()
        inflight: deque[_Round] = deque()
        round_size = round_lines(self.ingest.batch_size, self.n)
        done_through = 0  # the last line number of the last round done
        try:
            self.start()
            try:
                for chunk in _batches(lines, round_size):
                    inflight.append(_Round(first=chunk[0][0], last=chunk[-1][0]))
                    self._send(chunk, inflight[-1])
                    while len(inflight) > ROUNDS_AHEAD:
                        self._finish(inflight[0], counts)
                        done_through = inflight.popleft().last
                while inflight:
                    self._finish(inflight[0], counts)
                    done_through = inflight.popleft().last
            except WorkerFailed as exc:
                first = inflight[0].first if inflight else done_through + 1
                raise IngestAborted(
                    f"worker {exc.worker + 1} of {self.n} failed: {exc.reason}", first
                ) from None
            except KeyboardInterrupt:
                first = inflight[0].first if inflight else done_through + 1
                raise IngestAborted("interrupted", first) from None
        except BaseException:
            self.stop(kill=True)
            raise
        self.stop(kill=False)
        return counts

    def _send(self, chunk: list[Numbered], rnd: _Round) -> None:
        parts: list[list[Numbered]] = [[] for _ in range(self.n)]
        for item in chunk:
            parts[route(item[1], self.n)].append(item)
        rnd.lines = len(chunk)
        for i, part in enumerate(parts):
            if part:
                rnd.owed.append(i)
                try:
                    self.tasks[i].send(part)
                except OSError:
                    raise WorkerFailed(i, self._death(i)) from None

    def _finish(self, rnd: _Round, counts: Counter[str]) -> None:
        for i in rnd.owed:
            try:
                message = self.results[i].recv()
            except (EOFError, OSError):
                raise WorkerFailed(i, self._death(i)) from None
            if message[0] == "failed":
                raise WorkerFailed(i, message[1])
            rnd.counts.update(message[1])
            rnd.rejected.extend(message[2])
        rnd.rejected.sort(key=_line_number)
        for number, text, body in rnd.rejected:
            self.ingest.report(number, text, body)
        counts.update(rnd.counts)
        if self.ingest.progress is not None:
            self.ingest.progress(rnd.lines)

    def _death(self, i: int) -> str:
        proc = self.procs[i]
        proc.join(timeout=5)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                return f"the process was killed ({signal.Signals(-code).name})"
            except ValueError:
                return f"the process was killed (signal {-code})"
        return f"the process ended (exit code {code})"


# ----------------------------------------------------------------------------------------------
# The worker process
# ----------------------------------------------------------------------------------------------


def worker_main(
    tasks: Connection, results: Connection, settings: Settings, batch_size: int
) -> None:
    """Record the chunks sent on ``tasks``, one answer per chunk on ``results``:
    ``("done", counts, rejected)`` once every batch of the chunk committed, or ``("failed",
    reason)`` and exit. A reader thread takes the chunks as they come, so the main process never
    waits on a busy worker to send it the next one (no pipe deadlock)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the workers
    inbox: queue.SimpleQueue[list[Numbered] | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                chunk = tasks.recv()
                inbox.put(chunk)
                if chunk is None:
                    return
        except (EOFError, OSError):  # the main process is gone
            inbox.put(None)

    threading.Thread(target=read, name="inbox", daemon=True).start()
    try:
        service = build_service(settings)
    except BaseException as exc:
        results.send(("failed", _reason(exc)))
        return
    try:
        with bulk_gc() as settle:
            while (chunk := inbox.get()) is not None:
                counts: Counter[str] = Counter()
                rejected: list[Rejected] = []
                for batch in _split(chunk, batch_size):
                    done, bad = record_batch(service, batch)
                    settle()
                    counts.update(done)
                    rejected.extend(bad)
                results.send(("done", dict(counts), rejected))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            results.send(("failed", _reason(exc)))
    finally:
        with contextlib.suppress(Exception):
            service.close()


def _split(chunk: list[Numbered], size: int) -> Iterator[list[Numbered]]:
    """Batches of at most ``size`` lines, of even sizes (510 lines: 255 + 255, not 500 + 10)."""
    parts = -(-len(chunk) // size)
    step = -(-len(chunk) // parts) if parts else 1
    for start in range(0, len(chunk), step):
        yield chunk[start : start + step]
