"""``lightning-sas report`` and ``read_run`` over a catalogue of damaged run directories.

One valid run directory is produced per module (a short fit) and copied per case; each case
damages the copy one way. The whole catalogue goes through ``lightning_sas.cli.main`` in one child
process with a 2 GiB address-space limit, an alarm per case and a timeout for the whole: every
case must end with its documented exit code (0: report written, damage listed one line per file;
2: nothing to report, one line), never a traceback, never a hang, and nothing outside the run is
read. A few cases also run as separate ``python -m lightning_sas.cli report`` processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor
from lightning_sas.store import read_run
from lightning_sas.store.chunks import MAGIC, MAGIC_V1, encode_chunk, read_chunk

#: a loss value no real run has: a chunk outside the run holds it, and it must never be read
MARKER = 777777.0
MEMORY_LIMIT = 2 << 30

# -- building damage ---------------------------------------------------------------------------


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a format-2 chunk."""
    assert data[:8] == MAGIC
    (length,) = struct.unpack("<Q", data[8:16])
    return json.loads(data[20 : 20 + length]), data[20 + length :]


def _join(header: dict[str, Any], payload: bytes, fix_crc: bool = True) -> bytes:
    """A format-2 chunk of ``header`` and ``payload``, with valid checksums of both (the damage
    is then in what the header says, not in its bytes)."""
    if fix_crc:
        header = {**header, "crc32": zlib.crc32(payload)} if "crc32" in header else header
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(raw)) + struct.pack("<I", zlib.crc32(raw)) + raw + payload


def _edit_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header, payload = _split(path.read_bytes())
    edit(header)
    path.write_bytes(_join(header, payload))


def _loss(run: Path, seq: int = 1) -> Path:
    return run / "sas" / "streams" / "loss" / f"{seq:08d}.chunk"


def _meta(run: Path) -> Path:
    return run / "sas" / "meta.json"


def _summary(run: Path) -> Path:
    return run / "sas" / "summary.json"


def _json_edit(path: Path, edit: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {**d, **fields}


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


def _socket_at(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _rename_column(header: dict[str, Any]) -> None:
    header["columns"][1]["name"] = "loss_renamed"


def _flip_dtype(path: Path) -> None:
    """One byte of the header changed: ``<f8`` -> ``<i8`` (the bytes stay, the header CRC not)."""
    data = path.read_bytes()
    assert b'"<f8"' in data
    path.write_bytes(data.replace(b'"<f8"', b'"<i8"', 1))


def _two_runs(run: Path) -> None:
    """An older run's loss chunks followed by this run's: the old writer appended so."""
    folder = run / "sas" / "streams" / "loss"
    chunks = sorted(folder.glob("*.chunk"))
    for i, chunk in enumerate(reversed(chunks)):
        chunk.rename(folder / f"{len(chunks) * 2 - 1 - i:08d}.chunk")
    for i, chunk in enumerate(sorted(folder.glob("*.chunk"))):
        older = read_chunk(chunk)
        older["loss"] = np.full_like(older["loss"], 5.0)
        (folder / f"{i:08d}.chunk").write_bytes(encode_chunk(older))


def _v1(path: Path) -> None:
    """The chunk re-encoded in format 1 (no header checksum), which is still read."""
    header, payload = _split(path.read_bytes())
    raw = json.dumps(header).encode()
    path.write_bytes(MAGIC_V1 + struct.pack("<Q", len(raw)) + raw + payload)


def _huge_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = struct.pack("<Q", 1 << 60)
    path.write_bytes(bytes(data))


def _sparse_tail(path: Path) -> None:
    """3 GiB of holes after a valid chunk: more than the memory limit, if it were read."""
    with open(path, "r+b") as fh:
        fh.truncate(3 << 30)


def _outside_link(target: str) -> Callable[[Path, Path], None]:
    return lambda run, outside: _replace(_loss(run), lambda p: p.symlink_to(outside / target))


#: name -> (damage(run, outside), exit code, text in stderr); ``run`` is the Lightning version
#: directory (its store is ``run/sas``), ``outside`` a folder beside it holding a valid chunk with
#: MARKER losses (``secret.chunk``), a meta.json and a streams folder
CASES: dict[str, tuple[Callable[[Path, Path], None], int, str]] = {
    "meta_list": (lambda r, o: _meta(r).write_text("[1, 2]"), 0, "meta.json (schema)"),
    "meta_null": (lambda r, o: _meta(r).write_text("null"), 0, "meta.json (schema)"),
    "meta_string": (lambda r, o: _meta(r).write_text('"a run"'), 0, "meta.json (schema)"),
    "meta_strings_for_numbers": (lambda r, o: _json_edit(_meta(r), lambda m: {
        **m, "probe_num_train": "64", "config": {**m["config"], "window": "4096", "max_blocks": "256"}}), 0,
        "meta.json (schema)"),
    "meta_inf": (lambda r, o: _meta(r).write_text(_meta(r).read_text().replace('"probe_num_train": 64', '"probe_num_train": Infinity')),
                 0, "meta.json (corrupt)"),
    "meta_1e30": (lambda r, o: _json_edit(_meta(r), _set(probe_num_train=1e30, probe_num_test=10**30)), 0, "meta.json (schema)"),
    "meta_huge_config": (lambda r, o: _json_edit(_meta(r), lambda m: {**m, "config": {**m["config"], "max_blocks": 10**12,
                                                                                       "window": 1e30}}), 0, "config.max_blocks"),
    "meta_probe_counts_disagree": (lambda r, o: _json_edit(_meta(r), _set(probe_num_train=10**6)), 0, "probe counts add up"),
    "meta_not_json": (lambda r, o: _meta(r).write_bytes(b"\xff\xfe{not json"), 0, "meta.json (corrupt)"),
    "meta_newer_format": (lambda r, o: _json_edit(_meta(r), _set(format_version=99)), 0, "meta.json (version)"),
    "meta_is_directory": (lambda r, o: _replace(_meta(r), lambda p: p.mkdir()), 0, "meta.json (not_regular)"),
    "meta_symlink_outside": (lambda r, o: _replace(_meta(r), lambda p: p.symlink_to(o / "meta.json")), 0,
                             "meta.json (not_regular)"),
    "summary_list": (lambda r, o: _summary(r).write_text("[1]"), 0, "summary.json (schema)"),
    "summary_null": (lambda r, o: _summary(r).write_text("null"), 0, "summary.json (schema)"),
    "summary_strings_for_numbers": (lambda r, o: _json_edit(_summary(r), _set(steps="60", loss_mean="0.5", iat="3")), 0,
                                    "summary.json (schema)"),
    "summary_inf": (lambda r, o: _summary(r).write_text('{"steps": 60, "loss_mean": Infinity}'), 0, "summary.json (corrupt)"),
    "summary_1e30": (lambda r, o: _json_edit(_summary(r), _set(steps=1e30, late_phase_start=10**30, sas_max=1e301)), 0,
                     "summary.json (schema)"),
    "summary_bad_dicts": (lambda r, o: _json_edit(_summary(r), _set(unavailable=3, layers=["x"])), 0, "summary.json (schema)"),
    "summary_fifo": (lambda r, o: _replace(_summary(r), lambda p: os.mkfifo(p)), 0, "summary.json (not_regular)"),
    "chunk_is_directory": (lambda r, o: _replace(_loss(r), lambda p: p.mkdir()), 0, "00000001.chunk (not_regular)"),
    "chunk_is_fifo": (lambda r, o: _replace(_loss(r), lambda p: os.mkfifo(p)), 0, "00000001.chunk (not_regular)"),
    "chunk_is_socket": (lambda r, o: _replace(_loss(r), _socket_at), 0, "00000001.chunk (not_regular)"),
    "chunk_symlink_dev_zero": (lambda r, o: _replace(_loss(r), lambda p: p.symlink_to("/dev/zero")), 0,
                               "00000001.chunk (not_regular)"),
    "chunk_symlink_outside": (_outside_link("secret.chunk"), 0, "00000001.chunk (not_regular)"),
    "chunk_symlink_outside_fifo": (_outside_link("pipe"), 0, "00000001.chunk (not_regular)"),
    "chunk_truncated_payload": (lambda r, o: _loss(r).write_bytes(_loss(r).read_bytes()[:-9]), 0, "00000001.chunk (torn)"),
    "chunk_truncated_header": (lambda r, o: _loss(r).write_bytes(_loss(r).read_bytes()[:40]), 0, "00000001.chunk (torn)"),
    "chunk_empty": (lambda r, o: _loss(r).write_bytes(b""), 0, "00000001.chunk (torn)"),
    "chunk_flipped_header_byte": (lambda r, o: _flip_dtype(_loss(r)), 0, "header checksum mismatch"),
    "chunk_flipped_payload_byte": (lambda r, o: _loss(r).write_bytes(_loss(r).read_bytes()[:-3] + b"\x00\x01\x02"), 0,
                                   "payload checksum mismatch"),
    "chunk_header_lacks_field": (lambda r, o: _edit_header(_loss(r), lambda h: h.pop("payload_length")), 0,
                                 "lacks the field 'payload_length'"),
    "chunk_column_lacks_dtype": (lambda r, o: _edit_header(_loss(r), lambda h: h["columns"][0].pop("dtype")), 0,
                                 "lacks name, dtype or shape"),
    "chunk_bad_dtype": (lambda r, o: _edit_header(_loss(r), lambda h: h["columns"][1].update(dtype="|O")), 0,
                        "names the dtype '|O'"),
    "chunk_big_endian_dtype": (lambda r, o: _edit_header(_loss(r), lambda h: h["columns"][1].update(dtype=">f8")), 0,
                               "names the dtype '>f8'"),
    "chunk_shape_not_sizes": (lambda r, o: _edit_header(_loss(r), lambda h: h["columns"][1].update(shape=[-20])), 0,
                              "(corrupt)"),
    "chunk_promises_huge_payload": (lambda r, o: _edit_header(_loss(r), lambda h: h.update(payload_length=10**12)), 0,
                                    "00000001.chunk (corrupt)"),
    "chunk_huge_header_length": (lambda r, o: _huge_header_length(_loss(r)), 0, "00000001.chunk (corrupt)"),
    "chunk_bad_magic": (lambda r, o: _loss(r).write_bytes(b"NOTACHNK" + _loss(r).read_bytes()[8:]), 0,
                        "00000001.chunk (bad_magic)"),
    "chunk_trailing_bytes": (lambda r, o: _loss(r).write_bytes(_loss(r).read_bytes() + b"extra"), 0, "bytes follow the payload"),
    "chunk_sparse_3gib_tail": (lambda r, o: _sparse_tail(_loss(r)), 0, "bytes follow the payload"),
    "chunk_renamed_column": (lambda r, o: _edit_header(_loss(r), _rename_column), 0, "00000001.chunk (schema)"),
    "chunk_wrong_dimensions": (lambda r, o: _edit_header(
        r / "sas" / "streams" / "probes" / "00000001.chunk",
        lambda h: [c.update(shape=[*c["shape"], 1]) for c in h["columns"] if c["name"] == "losses"]), 0,
        "probes/00000001.chunk (schema)"),
    "chunk_format_1": (lambda r, o: _v1(_loss(r)), 0, ""),
    "orphan_temp_files": (lambda r, o: [(p / ".tmp-00000009.chunk-4242").write_bytes(b"half") for p in
                                        (r / "sas", r / "sas" / "streams" / "loss")], 0, "(orphan_tmp)"),
    "two_runs_in_one_store": (lambda r, o: _two_runs(r), 0, "(earlier_run)"),
    "stream_symlink_outside": (lambda r, o: (r / "sas" / "streams" / "evil").symlink_to(o / "streams"), 0,
                               "evil (not_regular)"),
    "streams_symlink_outside": (lambda r, o: (shutil.rmtree(r / "sas" / "streams"),
                                              (r / "sas" / "streams").symlink_to(o / "streams")), 0, "streams (not_regular)"),
    "streams_is_file": (lambda r, o: (shutil.rmtree(r / "sas" / "streams"), (r / "sas" / "streams").write_text("x")), 0,
                        "streams (not_regular)"),
    "every_chunk_damaged": (lambda r, o: [p.write_bytes(b"") for p in (r / "sas" / "streams").glob("*/*.chunk")], 0, "(torn)"),
    "sas_symlink_outside": (lambda r, o: (shutil.rmtree(r / "sas"), (r / "sas").symlink_to(o)), 2, "is not a directory"),
    "no_store_at_all": (lambda r, o: shutil.rmtree(r / "sas"), 2, "not a lightning-sas run directory"),
}
#: cases whose command line differs: extra arguments, or another path than the run
ARGUMENTS: dict[str, Callable[[Path], list[str]]] = {
    "out_is_a_file": lambda r: [str(r), "--out", str(_meta(r))],
    "html_is_a_directory": lambda r: [str(r), "--html", str(r)],
    "html_folder_missing": lambda r: [str(r), "--html", str(r / "no" / "page.html")],
    "missing_path": lambda r: [str(r / "does-not-exist")],
    "path_is_a_file": lambda r: [str(_meta(r))],
}
EXPECTED_USAGE = {"out_is_a_file": "is an existing file", "html_is_a_directory": "is a folder",
                  "html_folder_missing": "does not exist", "missing_path": "does not exist",
                  "path_is_a_file": "is a file"}
for _name in ARGUMENTS:
    CASES[_name] = (lambda r, o: None, 2, EXPECTED_USAGE[_name])


CHILD = textwrap.dedent(
    """
    import io, json, resource, signal, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from lightning_sas.cli import main

    def timeout(*_):
        raise TimeoutError("case took more than 60 s")

    signal.signal(signal.SIGALRM, timeout)
    results = {{}}
    for name, argv in json.load(open(sys.argv[1])).items():
        err, out = io.StringIO(), io.StringIO()
        sys.stderr, sys.stdout = err, out
        signal.alarm(60)
        try:
            code = main(["report", *argv])
        except BaseException as exc:  # a traceback main() let through
            code = "escaped: " + type(exc).__name__ + ": " + str(exc)
        signal.alarm(0)
        sys.stderr, sys.stdout = sys.__stderr__, sys.__stdout__
        results[name] = {{"code": code, "stderr": err.getvalue()}}
    json.dump(results, open(sys.argv[2], "w"))
    """
)


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory (a Lightning-style version folder with its ``sas`` store), made once."""
    out = tmp_path_factory.mktemp("valid")
    train = DataLoader(make_classification(320), batch_size=32)
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    monitor = SASMonitor(flush_every=20, snapshot_every=5, sketch_every=5, probe_every=5, figure_every=0,
                         num_train_probes=64, num_test_probes=64, store=str(out / "run" / "sas"))
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(out, max_steps=60, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)
    run = read_run(out / "run")
    assert not run.problems and len(run.streams["loss"]["step"]) == 60
    assert len(list((out / "run" / "sas" / "streams" / "loss").glob("*.chunk"))) == 3
    return out / "run"


def _outside(folder: Path, valid: Path) -> Path:
    """A folder beside the run: a valid loss chunk holding MARKER losses, a meta.json, a streams
    folder of such chunks and a FIFO. A report that reads any of it is wrong."""
    folder.mkdir()
    secret = encode_chunk({"step": np.arange(20, 40), "loss": np.full(20, MARKER), "lr": np.full(20, 0.1)})
    (folder / "secret.chunk").write_bytes(secret)
    (folder / "meta.json").write_text(json.dumps({"format_version": 2, "config": {"window": 16}, "marker": MARKER}))
    (folder / "streams" / "loss").mkdir(parents=True)
    (folder / "streams" / "loss" / "00000000.chunk").write_bytes(secret)
    os.mkfifo(folder / "pipe")
    return folder


def _damaged(name: str, base: Path, valid: Path) -> Path:
    case = base / name
    case.mkdir()
    shutil.copytree(valid, case / "run")
    outside = _outside(case / "outside", valid)
    CASES[name][0](case / "run", outside)
    return case / "run"


@pytest.fixture(scope="module")
def catalogue(valid_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case damaged in its own copy, then reported by one child process (memory limit,
    alarm per case, timeout for the whole)."""
    base = tmp_path_factory.mktemp("damaged")
    runs = {name: _damaged(name, base, valid_run) for name in CASES}
    argv = {name: ARGUMENTS[name](run) if name in ARGUMENTS else [str(run), "--out", str(run.parent / "report")]
            for name, run in runs.items()}
    (base / "argv.json").write_text(json.dumps(argv))
    (base / "child.py").write_text(CHILD.format(limit=MEMORY_LIMIT))
    proc = subprocess.run([sys.executable, str(base / "child.py"), str(base / "argv.json"), str(base / "results.json")],
                          capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"runs": runs, "results": json.loads((base / "results.json").read_text())}


def test_catalogue_size() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_on_damaged_run(catalogue: dict[str, Any], name: str) -> None:
    """Its documented exit code, the damage named on one line, no traceback; with exit 0 the
    report was written and the rest of the run is still in it."""
    _, code, text = CASES[name]
    result = catalogue["results"][name]
    assert result["code"] == code, result
    assert "Traceback" not in result["stderr"]
    assert text in result["stderr"], result["stderr"]
    assert str(MARKER) not in result["stderr"]
    if code == 2:
        assert len(result["stderr"].strip().splitlines()) == 1, result["stderr"]
        return
    for line in result["stderr"].strip().splitlines():
        assert line.startswith("warning: damaged file "), line
    run_dir = catalogue["runs"][name]
    assert (run_dir.parent / "report" / "loss_stream.png").is_file()


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][1] == 0))
def test_read_run_keeps_the_rest(catalogue: dict[str, Any], valid_run: Path, name: str) -> None:
    """``read_run`` names the damaged file, reads nothing outside the run and keeps every
    column of every stream whose other chunks are intact."""
    run = read_run(catalogue["runs"][name])
    if CASES[name][2]:
        assert run.problems and all(p.line().startswith("damaged file ") for p in run.problems)
    else:
        assert not run.problems
    assert "marker" not in run.meta
    loss = run.streams.get("loss", {})
    assert not any(MARKER in np.asarray(v) for v in loss.values())
    if name.startswith("chunk_") and name != "chunk_wrong_dimensions":
        # one damaged loss chunk: the two others are read, with all their columns
        valid = read_run(valid_run)
        assert set(loss) == set(valid.streams["loss"]) and {"step", "loss", "lr"} <= set(loss)
        expected = 60 if name == "chunk_format_1" else 40
        assert all(len(column) == expected for column in loss.values())
        assert set(run.streams["probes"]) == {"step", "losses"}
    if name == "chunk_wrong_dimensions":
        assert run.streams["probes"]["losses"].ndim == 2 and len(loss["step"]) == 60


def test_flipped_header_byte_changes_no_number(catalogue: dict[str, Any], valid_run: Path) -> None:
    """``<f8`` -> ``<i8`` in one header: that chunk is refused, the others give the same numbers."""
    good = read_run(valid_run).streams["loss"]
    damaged = read_run(catalogue["runs"]["chunk_flipped_header_byte"]).streams["loss"]
    keep = np.isin(good["step"], damaged["step"])
    np.testing.assert_array_equal(good["loss"][keep], damaged["loss"])
    assert keep.sum() == 40


def test_two_runs_in_one_store_reports_the_latest(catalogue: dict[str, Any], valid_run: Path) -> None:
    run = read_run(catalogue["runs"]["two_runs_in_one_store"])
    np.testing.assert_array_equal(run.streams["loss"]["loss"], read_run(valid_run).streams["loss"]["loss"])
    assert [p.kind for p in run.problems] == ["earlier_run"]


@pytest.mark.parametrize("name", ["chunk_symlink_dev_zero", "chunk_is_fifo", "chunk_flipped_header_byte", "meta_1e30",
                                  "out_is_a_file", "missing_path"])
def test_report_as_a_command(valid_run: Path, tmp_path: Path, name: str) -> None:
    """The real command line, in its own process under the memory limit and a timeout."""
    run = _damaged(name, tmp_path, valid_run)
    argv = ARGUMENTS[name](run) if name in ARGUMENTS else [str(run), "--out", str(tmp_path / "report")]
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))"
    code = f"{limit}; import sys, runpy; sys.argv = ['lightning-sas', 'report', *sys.argv[1:]]; " \
           "runpy.run_module('lightning_sas.cli', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == CASES[name][1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and CASES[name][2] in proc.stderr


def test_unreadable_chunk_is_reported(valid_run: Path, tmp_path: Path) -> None:
    """A chunk the operating system refuses to open (mode 000; root reads everything, so skipped there)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads files of mode 000")
    shutil.copytree(valid_run, tmp_path / "run")
    os.chmod(_loss(tmp_path / "run"), 0)
    try:
        run = read_run(tmp_path / "run")
    finally:
        os.chmod(_loss(tmp_path / "run"), stat.S_IRUSR | stat.S_IWUSR)
    assert [p.kind for p in run.problems] == ["unreadable"]
    assert len(run.streams["loss"]["step"]) == 40


# -- one writer, one run -------------------------------------------------------------------------


def _columns(start: int, n: int = 10) -> dict[str, np.ndarray]:
    return {"step": np.arange(start, start + n), "loss": np.ones(n)}


def test_a_second_writer_on_a_directory_is_refused(tmp_path: Path) -> None:
    from lightning_sas.store import RunWriter
    from lightning_sas.store.writer import StoreInUseError

    first = RunWriter(tmp_path / "sas")
    with pytest.raises(StoreInUseError, match="being written by another lightning-sas writer"):
        RunWriter(tmp_path / "sas", run_id=first.run_id)
    first.append("loss", _columns(0))
    first.close()
    again = RunWriter(tmp_path / "sas", run_id=first.run_id)  # the lock went with close()
    again.append("loss", _columns(10))
    again.close()
    np.testing.assert_array_equal(read_run(tmp_path).streams["loss"]["step"], np.arange(20))


def test_a_new_run_never_appends_to_an_older_store(tmp_path: Path) -> None:
    from lightning_sas.store import RunWriter
    from lightning_sas.store.writer import StoreInUseError

    old = RunWriter(tmp_path / "sas")
    old.append("loss", _columns(0))
    old.close()
    with pytest.raises(StoreInUseError, match="already holds the streams of another run"):
        RunWriter(tmp_path / "sas")
    with pytest.raises(StoreInUseError, match=old.run_id):
        RunWriter(tmp_path / "sas", run_id="another-run", resume=True)
    # the same run, or a resume from a checkpoint older than run ids, continues it
    RunWriter(tmp_path / "sas", run_id=old.run_id).close()
    resumed = RunWriter(tmp_path / "sas", resume=True)
    assert resumed.run_id == old.run_id
    resumed.close()
    assert json.loads((tmp_path / "sas" / "meta.json").read_text())["format_version"] == 2


def _fit(store: Path | None, steps: int, callbacks: list[Any], tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    train = DataLoader(make_classification(320), batch_size=32)
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_steps=steps, **kwargs))
    trainer.fit(TinyClassifier(), train)
    return trainer


def _monitor(store: Path) -> SASMonitor:
    return SASMonitor(flush_every=10, snapshot_every=5, sketch_every=5, num_train_probes=0, figure_every=0, store=str(store))


def test_a_second_fit_into_the_same_store_is_refused(tmp_path: Path) -> None:
    """Before any step: the first run's store stays as it was (it was mixed into before)."""
    from lightning_sas.store.writer import StoreInUseError

    store = tmp_path / "sas"
    _fit(store, 30, [_monitor(store)], tmp_path)
    with pytest.raises(StoreInUseError, match="already holds the streams of another run"):
        _fit(store, 20, [_monitor(store)], tmp_path)
    run = read_run(tmp_path)
    np.testing.assert_array_equal(run.streams["loss"]["step"], np.arange(30))
    assert not run.problems


def test_a_monitor_on_a_store_another_writer_holds_is_refused(tmp_path: Path) -> None:
    """Another live writer (a monitor of another trainer or process) holds the store."""
    from lightning_sas.store import RunWriter
    from lightning_sas.store.writer import StoreInUseError

    store = tmp_path / "sas"
    other = RunWriter(store)
    with pytest.raises(StoreInUseError, match="being written by another"):
        _fit(store, 20, [_monitor(store)], tmp_path)
    other.close()
    _fit(store, 20, [_monitor(store)], tmp_path)  # free again, and empty: a fresh run
    assert len(read_run(tmp_path).streams["loss"]["step"]) == 20


def test_a_standalone_part_next_to_the_monitor_is_refused_at_setup(tmp_path: Path) -> None:
    from lightning_sas import LossStream
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv")
    with pytest.raises(ValueError, match="LossStream on its own and SASMonitor would both write the run store"):
        _fit(None, 20, [SASMonitor(flush_every=10, figure_every=0), LossStream(flush_every=10)], tmp_path, logger=logger)
    assert not (tmp_path / "csv" / "version_0" / "sas" / "streams" / "loss").exists()


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_continues_its_store(tmp_path: Path, old_checkpoint: bool) -> None:
    """The same run from its checkpoint (with a run id, or saved before run ids) continues the
    store: one contiguous stream, no problem."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    store = tmp_path / "sas"
    train = DataLoader(make_classification(320), batch_size=32)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path, max_steps=40, enable_checkpointing=True)
    pl.Trainer(callbacks=[_monitor(store), ckpt], **kwargs).fit(TinyClassifier(), train)
    path = tmp_path / "ckpt" / "epoch=3-step=40.ckpt"
    if old_checkpoint:
        checkpoint = torch.load(path, weights_only=True)
        (key,) = [k for k in checkpoint["callbacks"] if k.startswith("SASMonitor")]
        checkpoint["callbacks"][key].pop("run_id")
        torch.save(checkpoint, path)
    kwargs["max_steps"] = 80
    pl.Trainer(callbacks=[_monitor(store), ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], **kwargs).fit(
        TinyClassifier(), train, ckpt_path=str(path))
    run = read_run(tmp_path)
    np.testing.assert_array_equal(run.streams["loss"]["step"], np.arange(80))
    assert not run.problems
