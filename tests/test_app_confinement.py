"""The dashboard confines what it finds as strictly as what it is asked: files and directories found by
walking RUNS_DIR that resolve outside it, special files (FIFOs) in place of files, malformed payloads and
malformed metrics records all end in a message through HTTP, never a 500, a hang, or a read outside."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from test_app import TRAIN_OUT, TRAIN_OUTPUTS, _train_inputs, write_metrics, write_run_yaml

from app import runs as R
from app import stores as S
from app.main import create_app
from app.paths import root_of
from workbench.runlock import RunLock

SECRET = "TOP-SECRET-LINE"


def _tiny_store(path: Path) -> None:
    """A small workbench store (root attr ``schema``) with one group written by plain xarray."""
    import numpy as np
    import xarray as xr
    import zarr

    from workbench import store

    zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"schema": store.SCHEMA})
    ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
    ds.to_zarr(str(path), group="demo_group", zarr_format=3, consolidated=False, mode="w")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """RUNS_DIR holding honest runs and stores beside symlinks to outside data and FIFOs."""
    return build_tree(tmp_path_factory.mktemp("confine"))


def build_tree(base: Path) -> Path:
    """``base/runs`` holding honest runs and stores beside symlinks to ``base/outside`` and FIFOs (the
    adversarial tree of this module, also served by a real ``workbench app`` in test_app_server)."""
    root, outside = base / "runs", base / "outside"
    root.mkdir()
    outside.mkdir()
    secret_file = outside / "secret.jsonl"
    secret_file.write_text(
        "".join(json.dumps({"kind": "train", "step": i, "loss": 1.0, "phase": SECRET}) + "\n" for i in range(7))
    )
    (outside / "run.yaml").write_text(f"name: {SECRET}\nphases: []\n")
    # an honest run
    good = root / "good"
    good.mkdir()
    write_run_yaml(good)
    write_metrics(good / "metrics.jsonl", steps=10)
    # metrics.jsonl and run.yaml as symlinks leaving RUNS_DIR
    linked = root / "linked-files"
    linked.mkdir()
    (linked / "metrics.jsonl").symlink_to(secret_file)
    (linked / "run.yaml").symlink_to(outside / "run.yaml")
    # metrics.jsonl -> /etc/passwd
    passwd = root / "passwd"
    passwd.mkdir()
    (passwd / "metrics.jsonl").symlink_to("/etc/passwd")
    # FIFOs where files are expected
    fifo_run = root / "fifo-run"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "metrics.jsonl")
    os.mkfifo(fifo_run / "run.yaml")
    # a checkpoint directory symlinked to outside, and one with a file symlinked out
    ckpt_run = root / "links-ckpt"
    ckpt_run.mkdir()
    write_metrics(ckpt_run / "metrics.jsonl", steps=3)
    fake = outside / "ckpt-000005"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"step": 5, "phase": SECRET}))
    (ckpt_run / "ckpt-000005").symlink_to(fake, target_is_directory=True)
    half = ckpt_run / "ckpt-000006"
    half.mkdir()
    (half / "manifest.json").symlink_to(fake / "manifest.json")
    fifo_ckpt = ckpt_run / "ckpt-000007"
    fifo_ckpt.mkdir()
    os.mkfifo(fifo_ckpt / "manifest.json")
    # malformed metrics records
    bad = root / "bad-records"
    bad.mkdir()
    write_metrics(bad / "metrics.jsonl", steps=5, evals=False)
    with open(bad / "metrics.jsonl", "a") as f:
        for line in [
            '{"kind": "train", "step": "12", "loss": 1.0}',
            '{"kind": "train", "step": 13, "loss": "x"}',
            '{"kind": "train", "step": true, "loss": 1.0}',
            "[1, 2, 3]",
            '"just a string"',
            '{"kind": 5, "step": 14}',
            '{"kind": "train", "step": 15, "loss": NaN}',
            "[" * 5000 + "]" * 5000,
            '{"kind": "train", "step": 16, "loss": null}',
        ]:
            f.write(line + "\n")
    # stores: an honest one, one whose group is a symlink to a store outside, one whose zarr.json is a FIFO
    _tiny_store(root / "good.zarr")
    _tiny_store(outside / "elsewhere.zarr")
    linked_store = root / "linked-group.zarr"
    shutil.copytree(root / "good.zarr", linked_store)
    shutil.rmtree(linked_store / "demo_group")
    (linked_store / "demo_group").symlink_to(outside / "elsewhere.zarr" / "demo_group", target_is_directory=True)
    whole_link = root / "whole-link.zarr"
    whole_link.symlink_to(outside / "elsewhere.zarr", target_is_directory=True)
    fifo_store = root / "fifo.zarr"
    shutil.copytree(root / "good.zarr", fifo_store)
    (fifo_store / "zarr.json").unlink()
    os.mkfifo(fifo_store / "zarr.json")
    fifo_group = root / "fifo-group.zarr"
    shutil.copytree(root / "good.zarr", fifo_group)
    (fifo_group / "demo_group" / "zarr.json").unlink()
    os.mkfifo(fifo_group / "demo_group" / "zarr.json")
    chunk_link = root / "chunk-link.zarr"
    shutil.copytree(root / "good.zarr", chunk_link)
    chunks = [p for p in (chunk_link / "demo_group").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks, "the tiny store has chunk files"
    chunks[0].unlink()
    chunks[0].symlink_to(secret_file)
    # a whole subdirectory of RUNS_DIR symlinked out
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    return root


def within(seconds: float, fn, *args):
    """fn(*args) in a thread; fails the test if it does not return in time (a FIFO read would block)."""
    out: dict = {}

    def go():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for more than {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _draw(client, runs):
    body = {
        "output": TRAIN_OUT,
        "outputs": [{"id": i, "property": p} for i, p in TRAIN_OUTPUTS],
        "inputs": _train_inputs(runs),
        "state": [{"id": "train-stamp", "property": "data", "value": None}],
        "changedPropIds": ["train-runs.value"],
    }
    return client.post("/_dash-update-component", json=body)


@pytest.fixture(scope="module")
def client(tree):
    return create_app(tree).server.test_client()


# ------------------------------------------------------------------------------------- found, not asked


def test_run_files_symlinked_outside_are_not_read(tree, client):
    info = R.run_info(root_of(tree), "linked-files")
    assert info.config is None and info.metrics is None
    assert any("outside RUNS_DIR" in m for m in info.messages)
    resp = within(20, _draw, client, ["linked-files"])
    assert resp.status_code == 200
    assert SECRET not in resp.get_data(as_text=True)


def test_metrics_symlinked_to_etc_passwd_is_not_opened(tree, client):
    info = R.run_info(root_of(tree), "passwd")
    assert info.metrics is None
    assert any("outside RUNS_DIR" in m for m in info.messages)
    resp = within(20, _draw, client, ["passwd"])
    assert resp.status_code == 200 and "root:" not in resp.get_data(as_text=True)


def test_fifo_run_files_never_block(tree, client):
    info = within(10, R.run_info, root_of(tree), "fifo-run")
    assert info.metrics is None and info.config is None
    assert sum("not a regular file" in m for m in info.messages) == 2
    resp = within(20, _draw, client, ["fifo-run"])
    assert resp.status_code == 200


def test_checkpoint_dirs_leaving_runs_dir_are_skipped(tree):
    info = within(10, R.run_info, root_of(tree), "links-ckpt")
    assert info.checkpoints == []
    text = " ".join(info.messages)
    assert "ckpt-000005" in text and "ckpt-000006" in text and "ckpt-000007" in text
    assert SECRET not in text


def test_store_discovery_skips_links_out_and_fifos(tree):
    found = within(20, S.find_stores, root_of(tree))
    assert "good.zarr" in found
    for bad in ("linked-group.zarr", "whole-link.zarr", "fifo.zarr", "fifo-group.zarr"):
        assert bad not in found


@pytest.mark.parametrize(
    "store",
    [
        "linked-group.zarr",
        "fifo.zarr",
        "fifo-group.zarr",
        "chunk-link.zarr",
        "whole-link.zarr",
        "escape-dir/elsewhere.zarr",
    ],
)
def test_opening_a_confined_store_is_refused(tree, store):
    with pytest.raises(ValueError, match="outside RUNS_DIR|leaving RUNS_DIR|not a regular file|leaves RUNS_DIR"):
        within(10, S.open_group, root_of(tree), store, "demo_group")


def test_honest_store_still_opens(tree):
    ds = S.open_group(root_of(tree), "good.zarr", "demo_group")
    assert list(ds["x"].values) == [0.0, 1.0, 2.0, 3.0]


def test_runs_under_a_symlinked_directory_are_not_listed(tree):
    names = R.list_runs(root_of(tree))
    assert "good" in names and not any(n.startswith("escape-dir") for n in names)


# --------------------------------------------------------------------------- malformed records, payloads


def test_malformed_metrics_records_are_skipped_with_a_count(tree, client):
    info = R.run_info(root_of(tree), "bad-records")
    steps = [r["step"] for r in info.metrics.records]
    assert all(isinstance(s, int) for s in steps) and 12 not in steps and 13 not in steps
    assert info.metrics.bad_lines == 7  # NaN is a number (a diverged step logs one)
    assert any("7 line(s)" in m for m in info.messages)
    resp = _draw(client, ["bad-records"])
    assert resp.status_code == 200
    assert resp.get_json()["response"]["train-graph"]["style"]["display"] == "block"


@pytest.mark.parametrize(
    "payload", [5, 3.5, True, {"a": 1}, [5], [None], [["good"]], "x" * 100_000, ["good"] * 50, "\x00", ["good\x00"]]
)
def test_malformed_run_payloads_answer_a_message(client, payload):
    resp = _draw(client, payload)
    assert resp.status_code == 200, resp.data[:300]
    assert "Traceback" not in resp.get_data(as_text=True)


STORE_CALLBACKS = [  # (output, outputs, input ids with a store path among them)
    ("retrieval", "ret-store"),
    ("updates", "upd-store"),
    ("traces", "trace-store"),
]


@pytest.mark.parametrize(
    "payload",
    [5, ["good.zarr"], {"p": 1}, None, "../outside", "/etc", "fifo.zarr", "linked-group.zarr", "chunk-link.zarr"],
)
def test_every_registered_callback_survives_bad_payloads(tree, client, payload):
    """Fire every callback the app registered with ``payload`` in each input: always a 200 or a 204."""
    app = create_app(tree)
    cl = app.server.test_client()
    for key, spec in app.callback_map.items():
        inputs = [{"id": i["id"], "property": i["property"], "value": payload} for i in spec["inputs"]]
        state = [{"id": s["id"], "property": s["property"], "value": payload} for s in spec.get("state", [])]
        outputs = key.strip(".").split("...")
        outs = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]} for o in outputs]
        body = {
            "output": key,
            "outputs": outs if len(outs) > 1 else outs[0],
            "inputs": inputs,
            "state": state,
            "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"] if inputs else [],
        }
        resp = within(30, lambda body=body: cl.post("/_dash-update-component", json=body))
        assert resp.status_code in (200, 204), (key, payload, resp.data[:300])
        text = resp.get_data(as_text=True)
        assert SECRET not in text and "root:x:" not in text


# ------------------------------------------------------------------------------------- saves in progress


def test_temporary_dirs_are_in_progress_only_while_a_writer_holds_the_run(tmp_path):
    root = tmp_path / "runs"
    run = root / "r"
    run.mkdir(parents=True)
    write_metrics(run / "metrics.jsonl", steps=3)
    (run / ".tmp-ckpt-000004-dead").mkdir()
    (run / "run.lock").write_text("")  # a lock-aware trainer ran here and stopped
    info = R.run_info(root_of(root), "r")
    assert info.in_progress == [] and any("left by a writer that stopped" in m for m in info.messages)
    with RunLock(run):
        info = R.run_info(root_of(root), "r")
        assert info.in_progress == [".tmp-ckpt-000004-dead"]
        assert any("in progress" in m for m in info.messages)
    assert R.run_info(root_of(root), "r").in_progress == []


def test_without_run_lock_temporary_dirs_are_judged_by_age(tmp_path):
    """A run written by a trainer that predates run.lock: a .tmp-* directory written in the last
    RECENT_S seconds is a save in progress, an older one was left behind; a run.lock nobody holds (or a
    symlinked one, never trusted) overrides the age."""
    import time

    root = tmp_path / "runs"
    run = root / "r"
    run.mkdir(parents=True)
    write_metrics(run / "metrics.jsonl", steps=3)
    young, old = run / ".tmp-ckpt-000004-young", run / ".tmp-ckpt-000002-old"
    young.mkdir()
    old.mkdir()
    (young / "model.safetensors").write_bytes(b"x")
    stale = time.time() - R.RECENT_S - 60
    os.utime(old, (stale, stale))
    info = R.run_info(root_of(root), "r")
    assert info.in_progress == [young.name]
    text = " ".join(info.messages)
    assert "1 checkpoint save(s) in progress" in text and f"{old.name} left by a writer that stopped" in text
    os.utime(young, (stale, stale))
    os.utime(young / "model.safetensors", (time.time(), time.time()))  # a file still being written
    assert R.run_info(root_of(root), "r").in_progress == [young.name]
    (run / "run.lock").symlink_to(tmp_path / "elsewhere.lock")
    assert R.run_info(root_of(root), "r").in_progress == []
    (run / "run.lock").unlink()
    (run / "run.lock").write_text('{"pid": 999999999, "host": "x", "since": 0}')  # a dead writer's record
    assert R.run_info(root_of(root), "r").in_progress == []


def test_hidden_children_of_a_store_are_confined_too(tmp_path):
    """zarr reads every child's zarr.json when it lists a store's groups, hidden ones (.tmp-*) included:
    a FIFO there must not hang discovery, a link there must not be read outside RUNS_DIR."""
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _tiny_store(outside / "elsewhere.zarr")
    fifo = root / "hidden-fifo.zarr"
    _tiny_store(fifo)
    (fifo / ".tmp-x").mkdir()
    os.mkfifo(fifo / ".tmp-x" / "zarr.json")
    link = root / "hidden-link.zarr"
    _tiny_store(link)
    (link / ".y").symlink_to(outside / "elsewhere.zarr" / "demo_group", target_is_directory=True)
    _tiny_store(root / "good.zarr")
    assert within(20, S.find_stores, root_of(root)) == ["good.zarr"]
    for store in ("hidden-fifo.zarr", "hidden-link.zarr"):
        with pytest.raises(ValueError, match="outside RUNS_DIR|not a regular file"):
            within(10, S.groups_of, root_of(root), store)


def test_a_chunk_swapped_for_a_link_after_opening_is_not_read(tmp_path):
    """The opened group is cached; a chunk file the store's writer made, replaced by a symlink out of
    RUNS_DIR afterwards, must be caught before zarr reads it (the cache stamp covers the arrays' directories)."""
    import numpy as np
    import xarray as xr

    from workbench import store

    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(np.full(4, 7.0).tobytes())
    ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
    store.write(root / "s.zarr", "demo_group", ds, encoding={"x": {"compressors": None}})
    top = root_of(root)
    assert list(S.loaded(top, "s.zarr", "demo_group", "x")["x"].values) == [0.0, 1.0, 2.0, 3.0]
    chunk = root / "s.zarr" / "demo_group" / "x" / "c.0"
    chunk.unlink()
    chunk.symlink_to(secret)
    with pytest.raises(ValueError, match="leaving RUNS_DIR|outside RUNS_DIR"):
        S.loaded(top, "s.zarr", "demo_group", "x", pair=["1"])


def test_pair_updates_linked_outside_are_not_read_and_polls_skip_unchanged(tmp_path):
    """pair_updates.jsonl is read confined to RUNS_DIR like metrics.jsonl, and a poll redraws it only when
    it changed (the callback answers no update otherwise)."""
    from app.views import training

    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    record = {"kind": "pair_updates", "step": 1, "phase": SECRET, "rope_theta": 1e4, "seq_len": 64}
    record["q_rel_update"] = [[[0.5] * 4]]
    (outside / "pairs.jsonl").write_text(json.dumps(record) + "\n")
    for name in ("linked", "own"):
        (root / name).mkdir()
        write_run_yaml(root / name)
        write_metrics(root / name / "metrics.jsonl", steps=3)
    (root / "linked" / training.PAIR_UPDATES).symlink_to(outside / "pairs.jsonl")
    shutil.copy(outside / "pairs.jsonl", root / "own" / training.PAIR_UPDATES)
    top = root_of(root)
    assert training.pair_updates_view(top, ["linked"]) is None
    assert training.pair_updates_view(top, ["own"]) is not None
    client = create_app(root).server.test_client()
    out = "..train-pairs.figure...train-pairs.style...train-pairs-stamp.data.."
    outputs = [{"id": "train-pairs", "property": p} for p in ("figure", "style")]
    outputs.append({"id": "train-pairs-stamp", "property": "data"})

    def poll(stamp):
        inputs = [
            {"id": "train-runs", "property": "value", "value": ["own"]},
            {"id": "train-poll", "property": "n_intervals", "value": 3},
            {"id": "tabs", "property": "value", "value": "training"},
        ]
        body = {
            "output": out,
            "outputs": outputs,
            "inputs": inputs,
            "state": [{"id": "train-pairs-stamp", "property": "data", "value": stamp}],
            "changedPropIds": ["train-poll.n_intervals"],
        }
        return client.post("/_dash-update-component", json=body)

    first = poll(None)
    assert first.status_code == 200
    stamp = first.get_json()["response"]["train-pairs-stamp"]["data"]
    again = poll(stamp)
    assert again.status_code == 200 and again.get_json()["response"] == {}  # unchanged: nothing re-read or sent


def test_store_picker_says_why_each_zarr_is_not_offered(tmp_path):
    """One message each for a store of an older schema and a store linked out of RUNS_DIR, beside the
    honest store the picker offers."""
    import zarr

    from workbench import store

    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _tiny_store(root / "good.zarr")
    _tiny_store(root / "old.zarr")
    zarr.open_group(str(root / "old.zarr"), mode="r+").attrs["schema"] = "workbench-store/1"
    _tiny_store(outside / "elsewhere.zarr")
    (root / "link.zarr").symlink_to(outside / "elsewhere.zarr", target_is_directory=True)
    skipped: list[str] = []
    assert S.find_stores(root_of(root), skipped) == ["good.zarr"]
    assert len(skipped) == 2, skipped
    link, old = sorted(skipped)
    assert link.startswith("store link.zarr:") and "outside RUNS_DIR" in link
    assert old.startswith("store old.zarr:") and "'workbench-store/1'" in old and "rerun" in old
    assert str(tmp_path) not in old
    assert store.SCHEMA in old


def test_group_names_are_cached_until_the_store_changes(tmp_path):
    """groups_of answers from its cache while the store directory is unchanged, and sees a new group (a
    rename into the store) and a root rewritten to another schema at once."""
    import numpy as np
    import xarray as xr

    from workbench import store

    root = tmp_path / "runs"
    root.mkdir()
    ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
    store.write(root / "s.zarr", "a", ds)
    top = root_of(root)
    assert S.groups_of(top, "s.zarr") == ["a"]
    store.write(root / "s.zarr", "b", ds)
    assert S.groups_of(top, "s.zarr") == ["a", "b"]
    meta = root / "s.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema"] = "workbench-store/1"
    meta.write_text(json.dumps(doc))
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 1))  # coarse clocks: a later mtime
    with pytest.raises(ValueError, match="workbench-store/1"):
        S.groups_of(top, "s.zarr")


def test_store_discovery_is_as_deep_as_runs_plus_one_and_skips_hidden_dirs(tmp_path):
    """Stores are found up to RUNS_DIR/a/b/<run>/<store>; hidden directories (.git, .venv, temp dirs) and
    anything deeper are not walked (a RUNS_DIR at a repository's root took seconds a tab switch)."""
    root = tmp_path / "runs"
    for rel in ("top.zarr", "a/b/run/deep.zarr", "a/b/run/x/too-deep.zarr", ".venv/lib/hidden.zarr"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _tiny_store(root / rel)
    assert S.find_stores(root_of(root)) == ["a/b/run/deep.zarr", "top.zarr"]
