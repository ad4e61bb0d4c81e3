"""Encrypted stores leak no patient id (issue 14 item 7), on SQLite and PostgreSQL.

A reader of the database with the source code but without the cipher key must not be able to
confirm that patient X is in the store (``uuid5(X)`` among the stream ids) nor read patient ids
in the audit-access log. Everything that reads the store with the key works as before: lookups,
replay, audit verify, the signed ledger, exports. A key that is not the store's is refused
(``/ready`` not ready, a clear error). An encrypted store written with uuid5 ids (the previous
release) is migrated in place, and every hash, signature and signed checkpoint keeps verifying.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from integration_helpers import Course, Sql, crs, raw_sql
from litestar.testing import TestClient

from cart_course.audit import verify
from cart_course.audit.exports import jsonl
from cart_course.bootstrap import Settings, build_service, build_tokens
from cart_course.cli import cli
from cart_course.contract import Command, parse_command
from cart_course.course import stream_id as uuid5
from cart_course.demo import cohort
from cart_course.errors import CipherKeyError, StoreError
from cart_course.http import create_app
from cart_course.http.feed import event_json
from cart_course.keys import generate, write_key_pair
from cart_course.ledger.core import issue
from cart_course.rekey import check_migrated, migrate_stream_ids
from cart_course.storage import new_cipher_key, parse_store_url
from cart_course.streamids import (
    MARKER_NAME,
    META_TABLE,
    SCHEME_KEYED,
    SCHEME_UUID5,
    MetaTables,
    StreamIds,
)

PATIENTS = [f"P-{i:04d}" for i in range(1, 9)]


@attrs.define
class Store:
    kind: str
    url: str
    key: str
    sql: Sql
    private: Path
    public: Path
    tmp: Path

    def settings(self, key: str | None = "", signing: bool = True) -> Settings:
        return Settings(
            store=parse_store_url(self.url),
            cipher_key=self.key if key == "" else key,
            signing_key=str(self.private) if signing else None,
        )

    def stream_ids(self) -> set[str]:
        table = "stored_events" if self.kind == "sqlite" else "cart_course_events"
        rows = self.sql(f"SELECT DISTINCT originator_id FROM {table}")
        return {str(r[0]).replace("-", "") for r in rows}

    def cli(self, *args: str, key: str | None = "") -> tuple[int, str]:
        env = {"CART_COURSE_CIPHER_KEY": self.key if key == "" else key}
        result = CliRunner().invoke(
            cli, ["--db", self.url, *args], env={**env, "CART_COURSE_SIGNING_KEY": None}
        )
        # an error of the store is raised to the real entry point, which prints it as one line
        error = "" if result.exception is None else str(result.exception)
        return result.exit_code, result.output + error

    def raw_text(self) -> str:
        """Everything the database holds as text a reader without the key sees (every table)."""
        if self.kind == "sqlite":
            self.sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return Path(self.url).read_bytes().decode("latin-1")
        tables = [
            r[0]
            for r in self.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        out = []
        for table in tables:
            for row in self.sql(f"SELECT * FROM {table}"):
                out.append(" ".join(str(v) for v in row))
        return "\n".join(out)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    url = str(tmp_path / "s.sqlite") if kind == "sqlite" else request.getfixturevalue("pg_url")
    private, public = write_key_pair(generate("site-key"), tmp_path / "keys")
    yield Store(kind, url, new_cipher_key(), raw_sql(kind, url), private, public, tmp_path)


def _record(service: Any, commands: Iterator[dict[str, Any]]) -> None:
    parsed = [parse_command(c) for c in commands]
    for i in range(0, len(parsed), 200):
        service.execute_batch(parsed[i : i + 200])


def _record_cohort(settings: Settings) -> None:
    """Two demo patients recorded in the store, the service closed."""
    with closing(build_service(settings)) as service:
        _record(service, cohort(2, seed=3))


def _refused_without_its_marker(store: Store) -> None:
    """A keyed store whose marker is gone: a write is refused (not taken for a uuid5 store)."""
    with closing(build_service(store.settings(signing=False))) as service:
        with pytest.raises(CipherKeyError, match="marker is missing"):
            service.execute(parse_command(next(iter(cohort(1, seed=3)))))
        assert service.log.settings_mismatch() is not None


def _death(patient_id: str) -> Command:
    """The patient's death (progressive disease) on 2026-09-01."""
    return parse_command(
        {
            "command": "record_death",
            "patient_id": patient_id,
            "occurred_at": "2026-09-01T09:00:00+00:00",
            "actor": {"id": "dr.demo", "role": "clinician"},
            "idempotency_key": f"{patient_id}-death",
            "payload": {"cause": "progressive disease"},
        }
    )


def _leaks(store: Store) -> list[str]:
    """Patient ids, or their uuid5 stream ids (hex or text), found in the database."""
    text = store.raw_text()
    found = [p for p in PATIENTS if p in text]
    for p in PATIENTS:
        sid = uuid5(p)
        if sid.hex in text or str(sid) in text:
            found.append(f"uuid5({p})")
    return found


def _verify_checkpoint(store: Store, held: Path) -> tuple[int, str]:
    return store.cli(
        "audit", "verify", "--checkpoint", str(held), "--public-key", str(store.public)
    )


def test_an_encrypted_store_keys_its_stream_ids_and_its_access_log(store: Store) -> None:
    settings = store.settings()
    service = build_service(settings)
    tokens = build_tokens(settings)
    try:
        assert service.log.stream_ids.scheme == SCHEME_KEYED
        _record(service, cohort(len(PATIENTS), seed=3))
        ledger = service.ledger
        held = store.tmp / "held.checkpoint"
        held.write_text(issue(service.log, ledger.store, ledger.key).text())

        # No stream id is the uuid5 of a patient; the keyed ids are the service's lookups.
        stored = store.stream_ids()
        assert len(stored) == len(PATIENTS)
        assert not stored & {uuid5(p).hex for p in PATIENTS}
        assert stored == {service.stream_id(p).hex for p in PATIENTS}
        assert {service.stream_id(p).version for p in PATIENTS} == {8}

        # Lookups, replay, the audit, exports work with the key.
        assert service.record("P-0003").patient_id == "P-0003"
        assert [r["patient_id"] for r in service.patients()] == PATIENTS
        assert verify(service.log).ok
        lines = [json.loads(line) for line in jsonl(service.log, "P-0002")]
        assert lines and {x["patient_id"] for x in lines} == {"P-0002"}
        assert {x["stream_id"] for x in lines} == {str(service.stream_id("P-0002"))}

        # An auditor's reads: the access log names pseudonyms, never the patient.
        token = tokens.add("auditor.ann", "auditor")[1]
        app = create_app(service, tokens, store=settings.store)
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {token}"}
            assert client.get("/v1/patients/P-0004/history", headers=auth).status_code == 200
            got = client.get("/v1/exports/events.jsonl?patient_id=P-0005", headers=auth)
            assert got.status_code == 200 and "P-0005" in got.text
        logged = tokens.access_log()
        pseudonym = service.log.stream_ids.pseudonym("P-0004")
        assert pseudonym.startswith("pid-") and "P-0004" not in pseudonym
        assert [e.path for e in logged] == [
            f"/v1/patients/{pseudonym}/history",
            "/v1/exports/events.jsonl",
        ]
        assert logged[1].query == f"patient_id={service.log.stream_ids.pseudonym('P-0005')}"
    finally:
        tokens.close()
        service.close()

    # A reader of the database finds no patient id and no uuid5 of one, in any table.
    assert _leaks(store) == []
    # The operator with the key looks a patient up; the auditor's checkpoint verifies.
    code, out = store.cli("store", "lookup", "P-0004", "--json")
    assert code == 0, out
    assert json.loads(out)["access_log_pseudonym"] == pseudonym
    assert json.loads(out)["stream_id"] == str(
        StreamIds(SCHEME_KEYED, cipher_key=store.key).stream_id("P-0004")
    )
    code, out = _verify_checkpoint(store, held)
    assert code == 0, out
    assert "unchanged" in out


def test_a_key_that_is_not_the_stores_is_refused_and_not_ready(store: Store) -> None:
    """Even before its first event: the marker's key check, not a row, tells the key."""
    build_service(store.settings(signing=False)).close()  # an empty encrypted store
    for key, says in (
        (new_cipher_key(), "CART_COURSE_CIPHER_KEY is not the store's key"),
        (None, "the store is encrypted but CART_COURSE_CIPHER_KEY is not set"),
    ):
        settings = store.settings(key=key, signing=False)
        service = build_service(settings)
        tokens = build_tokens(settings)
        try:
            with pytest.raises(CipherKeyError) as refused:
                service.execute(parse_command(next(iter(cohort(1, seed=1)))))
            assert says in refused.value.message
            assert "nothing was written" in refused.value.message
            with pytest.raises(CipherKeyError):
                service.record("P-0001")
            app = create_app(service, tokens, store=settings.store)
            with TestClient(app) as client:
                ready = client.get("/ready")
                assert ready.status_code == 503
                assert "cipher key" in ready.json()["detail"]
                assert store.key not in ready.text
        finally:
            tokens.close()
            service.close()
        code, out = store.cli("store", "ids", key=key)
        assert code == 1 and says in out, out
    # The right key: ready, and nothing was written by the refused processes.
    service = build_service(store.settings(signing=False))
    try:
        assert service.log.max_notification_id() == 0
        assert service.log.settings_mismatch() is None
    finally:
        service.close()


def test_an_edited_marker_is_refused(store: Store) -> None:
    build_service(store.settings(signing=False)).close()
    value = store.sql(f"SELECT value FROM {META_TABLE} WHERE name = %s", (MARKER_NAME,))[0][0]
    edited = json.loads(value)
    edited["scheme"] = SCHEME_UUID5  # back to public ids: the tag no longer matches
    store.sql(
        f"UPDATE {META_TABLE} SET value = %s WHERE name = %s", (json.dumps(edited), MARKER_NAME)
    )
    code, out = store.cli("store", "ids")
    assert code == 1 and "marker was edited" in out, out


# ----------------------------------------------------------------------------------------------
# An encrypted store of the previous release (uuid5 ids), migrated in place
# ----------------------------------------------------------------------------------------------


def _legacy_store(store: Store) -> None:
    """An encrypted store as the previous release wrote it: uuid5 stream ids, no marker; with
    signed checkpoints (the ledger) and an access log that names patients."""
    settings = store.settings()
    service = build_service(settings)
    service.app.stream_ids = StreamIds(SCHEME_UUID5, cipher_key=store.key)
    tables = MetaTables(service.app.recorder)
    store.sql(f"DELETE FROM {META_TABLE}")
    tokens = build_tokens(settings)
    tokens.pseudonymise = None  # the previous release logged patient ids as requested
    try:
        _record(service, cohort(len(PATIENTS) - 2, seed=3))
        for path, query in (
            ("/v1/patients/P-0002/history", ""),
            ("/v1/exports/timeline.csv", "patient_id=P-0003"),
        ):
            tokens.log_access(
                actor="auditor.ann",
                role="auditor",
                method="GET",
                path=path,
                query=query,
                status=200,
            )
    finally:
        tokens.close()
        service.close()
    assert tables.kind in ("sqlite", "postgres")
    assert store.stream_ids() == {uuid5(p).hex for p in PATIENTS[:-2]}


def test_migrating_a_uuid5_store_keeps_every_hash_signature_and_checkpoint(store: Store) -> None:
    _legacy_store(store)
    service = build_service(store.settings())
    try:
        assert service.log.stream_ids.scheme == SCHEME_UUID5  # read and written as before
        ledger = service.ledger
        held = store.tmp / "before.checkpoint"
        held.write_text(issue(service.log, ledger.store, ledger.key).text())
        _record(service, cohort(1, seed=4, prefix="OLD"))  # still uuid5: not migrated yet
        assert service.stream_id("OLD-0001") == uuid5("OLD-0001")
        done = migrate_stream_ids(service, store.key)
    finally:
        service.close()

    service = build_service(store.settings())
    try:
        report = check_migrated(service.log, done)
        assert report.unchanged, report
        assert report.streams == len(PATIENTS) - 1 and report.access_log_rows == 2
        ids = service.log.stream_ids
        assert ids.keyed and ids.migrated_up_to == done["migrated_up_to"]
        # No stream id is a uuid5 any more; lookups find every patient under the keyed id.
        assert not store.stream_ids() & {uuid5(p).hex for p in [*PATIENTS, "OLD-0001"]}
        assert service.record("P-0002").patient_id == "P-0002"
        # The API shows events as before: the id an event was recorded under is not a field.
        shown = [event_json(e, "P-0002") for e in service.events("P-0002")]
        assert shown[0]["type"] == "Registered"
        assert not any(k.startswith("_") for e in shown for k in e)
        # The log grows: a signature of a move recorded before the migration (its hash covers
        # the uuid5 id it was recorded under), a move on a migrated patient, new patients.
        signed = service.execute(
            parse_command(
                {
                    "command": "sign",
                    "patient_id": "P-0002",
                    "occurred_at": "2026-06-01T09:00:00+00:00",
                    "actor": {"id": "dr.demo", "role": "clinician", "name": "Dr. A. Demo"},
                    "idempotency_key": "P-0002-sign-eligibility",
                    "payload": {
                        "milestone": "eligibility",
                        "signs_version": 2,
                        "meaning": "approval",
                        "printed_name": "Dr. A. Demo",
                    },
                }
            )
        )
        assert signed.status == "recorded", signed
        death = service.execute(_death("P-0003"))
        assert death.status == "recorded", death
        _record(service, cohort(2, seed=9, prefix="NEW"))
        assert verify(service.log).ok
    finally:
        service.close()

    # The auditor's checkpoint from before the migration still verifies, e-signatures too.
    code, out = _verify_checkpoint(store, held)
    assert code == 0, out
    assert "unchanged and extends them" in out
    code, out = store.cli("audit", "verify")
    assert code == 0 and "TAMPERED" not in out, out
    # An inclusion proof of an event recorded before the migration checks offline.
    proof_file = store.tmp / "proof.json"
    code, out = store.cli("audit", "prove", "P-0002", "3", "--checkpoint", str(held))
    assert code == 0, out
    proof_file.write_text(out)
    code, out = store.cli(
        "audit",
        "check-proof",
        str(proof_file),
        "--checkpoint",
        str(held),
        "--public-key",
        str(store.public),
    )
    assert code == 0, out
    # Nothing in the database names a patient or a uuid5 of one, the access log included.
    logged = store.sql("SELECT path, query FROM cart_course_access_log ORDER BY id")
    assert all("P-000" not in p + q for p, q in logged)
    assert _leaks(store) == []
    # Migrating again: nothing to do, said so.
    code, out = store.cli("store", "migrate-stream-ids")
    assert code == 1 and "keyed already" in out, out


def test_a_plain_store_keeps_uuid5_and_has_nothing_to_migrate(tmp_path: Path) -> None:
    url = str(tmp_path / "plain.sqlite")
    service = build_service(Settings.for_store(url))
    try:
        _record(service, cohort(2, seed=3))
        assert service.stream_id("P-0001") == uuid5("P-0001")
        assert service.log.stream_ids.scheme == SCHEME_UUID5
    finally:
        service.close()
    result = CliRunner().invoke(cli, ["--db", url, "store", "migrate-stream-ids"], env={})
    assert result.exit_code != 0 and "CART_COURSE_CIPHER_KEY is not set" in str(result.exception)


def test_a_migrated_long_history_keeps_its_snapshots_and_takes_new_ones(tmp_path: Path) -> None:
    """Snapshots (every 50 events) hold the chain's head: kept as stored, renamed, compared with
    the replay by the audit; the next one is taken after the migration and verifies too."""
    db, key = str(tmp_path / "long.sqlite"), new_cipher_key()
    fever = {"toxicity": crs(1)}
    service = build_service(Settings.for_store(db, cipher_key=key))
    service.app.stream_ids = StreamIds(SCHEME_UUID5, cipher_key=key)
    raw_sql("sqlite", db)(f"DELETE FROM {META_TABLE}")
    patient = Course(service, "S-1")
    patient.screen()
    patient.apheresis()
    for _ in range(60):
        patient.do("report_toxicity", fever, hours=0.1)
    service.close()
    service = build_service(Settings.for_store(db, cipher_key=key))
    done = migrate_stream_ids(service, key)
    service.close()
    assert done["snapshots"] == 1
    service = build_service(Settings.for_store(db, cipher_key=key))
    try:
        assert check_migrated(service.log, done).unchanged
        patient.service = service
        for _ in range(45):
            patient.do("report_toxicity", fever, hours=0.1)
        report = verify(service.log)
        assert report.ok, report.problems
        assert report.snapshots == 2
        assert {
            r[0] for r in raw_sql("sqlite", db)("SELECT originator_id FROM stored_snapshots")
        } == {service.stream_id("S-1").hex}
    finally:
        service.close()


def test_a_deleted_marker_is_refused_not_taken_for_a_uuid5_store(store: Store) -> None:
    """Without its marker a keyed store would look like one written with uuid5 ids: nobody
    found, and a patient screened again registered twice. The first stream tells."""
    _record_cohort(store.settings(signing=False))
    store.sql(f"DELETE FROM {META_TABLE}")
    _refused_without_its_marker(store)


def test_a_writer_left_running_through_a_migration_refuses_rather_than_record_unseen(
    store: Store,
) -> None:
    """A server opened the store before its stream ids were migrated: it still takes them to
    be uuid5. Its next write must be refused (nothing written, restart it), not acknowledged
    into a uuid5 stream that nobody reads any more (the record shows no such event and the
    audit finds rows of no registered patient)."""
    _legacy_store(store)
    stale = build_service(store.settings(signing=False))
    try:
        assert stale.log.stream_ids.scheme == SCHEME_UUID5
        stale.record("P-0002")  # loaded and cached before the migration
        service = build_service(store.settings(signing=False))
        try:
            migrate_stream_ids(service, store.key)
        finally:
            service.close()
        death = _death("P-0002")
        with pytest.raises(StoreError, match="migrated"):
            stale.execute(death)
    finally:
        stale.close()
    service = build_service(store.settings(signing=False))
    try:
        assert service.record("P-0002").state != "died"
        assert verify(service.log).ok
        assert service.execute(death).status == "recorded"  # restarted: recorded, and seen
        assert service.record("P-0002").state == "died"
    finally:
        service.close()
    assert not store.stream_ids() & {uuid5(p).hex for p in PATIENTS}


def test_a_deleted_marker_is_refused_even_when_the_first_row_is_not_a_registration(
    store: Store,
) -> None:
    """The DBA deletes the marker and the first row (a registration): the first row left is a
    move, which names no patient. The store must still be refused (its stream ids are keyed:
    version-8 UUIDs), not read as a uuid5 store in which nobody is found and a patient screened
    again would be registered twice."""
    _record_cohort(store.settings(signing=False))
    table = "stored_events" if store.kind == "sqlite" else "cart_course_events"
    first = "rowid" if store.kind == "sqlite" else "notification_id"
    store.sql(f"DELETE FROM {META_TABLE}")
    store.sql(f"DELETE FROM {table} WHERE {first} = (SELECT MIN({first}) FROM {table})")
    _refused_without_its_marker(store)


def test_a_wrong_key_gets_a_clear_503_from_the_feed_and_the_streamed_exports(
    tmp_path: Path,
) -> None:
    """Never a 200 whose body breaks off (the streamed exports) nor a 500 (the feed): the same
    ``cipher_key_mismatch`` every other read gives, before anything is sent."""
    db, key = str(tmp_path / "enc.sqlite"), new_cipher_key()
    _record_cohort(Settings.for_store(db, cipher_key=key))
    for wrong in (new_cipher_key(), None):
        settings = Settings.for_store(db, cipher_key=wrong)
        service = build_service(settings)
        tokens = build_tokens(settings)
        try:
            token = tokens.add("auditor.ann", "auditor")[1]
            app = create_app(service, tokens, store=settings.store)
            with TestClient(app) as client:
                for path in (
                    "/v1/events",
                    "/v1/exports/timeline.csv",
                    "/v1/exports/events.jsonl",
                    "/v1/exports/timeline.csv?patient_id=P-0001",
                ):
                    got = client.get(path, headers={"Authorization": f"Bearer {token}"})
                    assert got.status_code == 503, (path, got.status_code, got.text[:200])
                    assert got.json()["type"].endswith(":cipher_key_mismatch"), path
        finally:
            tokens.close()
            service.close()
