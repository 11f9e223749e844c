"""The adversarial pass of issue 21 against a REAL dashboard: ``workbench app RUNS_DIR`` started in a
subprocess on a free port, probed over HTTP with a timeout on every request.

RUNS_DIR is the adversarial tree of test_app_confinement plus more cases of each family: symlinks found
inside RUNS_DIR that lead out (relative chains, links through a link, symlink loops, array metadata),
special files where files are expected (FIFOs, sockets, a directory called metrics.jsonl), malformed
payloads to every registered callback, and malformed metrics records. Every answer must be a 200/204
within the timeout, carry no traceback and nothing read outside RUNS_DIR; the server must still answer
afterwards (no thread left hanging on a FIFO).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_app import TRAIN_OUT, TRAIN_OUTPUTS, _train_inputs, write_metrics, write_run_yaml
from test_app_confinement import SECRET, build_tree

TIMEOUT = 30.0  # seconds per request: generous on 2 busy cores; a FIFO read would block forever
FORBIDDEN = (SECRET, "root:x:0:0", "Traceback")


def _extras(root: Path) -> None:
    """More cases of each family, beyond test_app_confinement's tree."""
    outside = root.parent / "outside"
    secret = outside / "secret.jsonl"
    # -- found outside through symlinks inside
    rel = root / "relative-link"  # metrics.jsonl -> ../../outside/secret.jsonl (relative, through '..')
    rel.mkdir()
    write_run_yaml(rel)
    (rel / "metrics.jsonl").symlink_to(Path("..") / ".." / "outside" / "secret.jsonl")
    chain = root / "chain-link"  # metrics.jsonl -> hop (inside) -> secret (outside)
    chain.mkdir()
    write_run_yaml(chain)
    (root / "hop.jsonl").symlink_to(secret)
    (chain / "metrics.jsonl").symlink_to(root / "hop.jsonl")
    inner = root / "inner-link"  # metrics.jsonl -> a file inside RUNS_DIR: allowed
    inner.mkdir()
    write_metrics(root / "good" / "copy.jsonl", steps=4, evals=False)
    (inner / "metrics.jsonl").symlink_to(root / "good" / "copy.jsonl")
    loop = root / "loop-link"  # metrics.jsonl and run.yaml in a symlink loop
    loop.mkdir()
    (loop / "a").symlink_to(loop / "b")
    (loop / "b").symlink_to(loop / "a")
    (loop / "metrics.jsonl").symlink_to(loop / "a")
    (loop / "run.yaml").symlink_to(loop / "b")
    (loop / "ckpt-000001").mkdir()
    dangling = root / "dangling-link"
    dangling.mkdir()
    write_run_yaml(dangling)
    (dangling / "metrics.jsonl").symlink_to(outside / "no-such-file")
    lock_link = root / "lock-link"  # run.lock -> outside, .tmp dir present: not read, not "in progress"
    lock_link.mkdir()
    write_metrics(lock_link / "metrics.jsonl", steps=3, evals=False)
    (outside / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}))
    (lock_link / "run.lock").symlink_to(outside / "run.lock")
    (lock_link / ".tmp-ckpt-000004-x").mkdir()
    os.utime(lock_link / ".tmp-ckpt-000004-x", (0, 0))
    nested = root / "nested-ckpt"  # a real directory whose subdirectory links out
    nested.mkdir()
    write_metrics(nested / "metrics.jsonl", steps=3, evals=False)
    (nested / "ckpt-000003").mkdir()
    (nested / "ckpt-000003" / "manifest.json").write_text(json.dumps({"step": 3}))
    (nested / "ckpt-000003" / "sub").symlink_to(outside, target_is_directory=True)
    arr_link = root / "array-meta-link.zarr"  # an array's zarr.json symlinked to the outside store's
    shutil.copytree(root / "good.zarr", arr_link)
    (arr_link / "demo_group" / "x" / "zarr.json").unlink()
    (arr_link / "demo_group" / "x" / "zarr.json").symlink_to(
        outside / "elsewhere.zarr" / "demo_group" / "x" / "zarr.json"
    )
    root_meta = root / "root-meta-link.zarr"  # the store's own zarr.json symlinked out
    shutil.copytree(root / "good.zarr", root_meta)
    (root_meta / "zarr.json").unlink()
    (root_meta / "zarr.json").symlink_to(outside / "elsewhere.zarr" / "zarr.json")
    # stores with a retrieval group (what the retrieval picker lists): one honest, one linking its group out,
    # one whose group metadata is a FIFO
    from workbench import store as wstore

    for name in ("ret.zarr", "ret-linked.zarr", "ret-fifo.zarr"):
        shutil.copytree(root / "good.zarr", root / name)
        (root / name / "demo_group").rename(root / name / wstore.RETRIEVAL)
    shutil.rmtree(root / "ret-linked.zarr" / wstore.RETRIEVAL)
    (root / "ret-linked.zarr" / wstore.RETRIEVAL).symlink_to(outside / "elsewhere.zarr" / "demo_group")
    (root / "ret-fifo.zarr" / wstore.RETRIEVAL / "zarr.json").unlink()
    os.mkfifo(root / "ret-fifo.zarr" / wstore.RETRIEVAL / "zarr.json")
    shutil.copytree(root / "ret.zarr", root / "ret-fifo-array.zarr")
    (root / "ret-fifo-array.zarr" / wstore.RETRIEVAL / "x" / "zarr.json").unlink()
    os.mkfifo(root / "ret-fifo-array.zarr" / wstore.RETRIEVAL / "x" / "zarr.json")
    shutil.copytree(root / "ret.zarr", root / "ret-fifo-chunk.zarr")  # a chunk file replaced by a FIFO
    chunk = next(
        p
        for p in (root / "ret-fifo-chunk.zarr" / wstore.RETRIEVAL / "x").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.unlink()
    os.mkfifo(chunk)
    shutil.copytree(root / "ret.zarr", root / "ret-chunk-link.zarr")  # a chunk file linking out
    chunk = next(
        p
        for p in (root / "ret-chunk-link.zarr" / wstore.RETRIEVAL / "x").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.unlink()
    chunk.symlink_to(secret)
    # -- special files where files are expected
    fifo_arr = root / "fifo-array.zarr"
    shutil.copytree(root / "good.zarr", fifo_arr)
    (fifo_arr / "demo_group" / "x" / "zarr.json").unlink()
    os.mkfifo(fifo_arr / "demo_group" / "x" / "zarr.json")
    sock_run = root / "socket-run"
    sock_run.mkdir()
    write_run_yaml(sock_run)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_run / "metrics.jsonl"))
    sock.close()
    dir_run = root / "dir-metrics"
    dir_run.mkdir()
    write_run_yaml(dir_run)
    (dir_run / "metrics.jsonl").mkdir()
    fifo_lock = root / "fifo-lock"
    fifo_lock.mkdir()
    write_metrics(fifo_lock / "metrics.jsonl", steps=3, evals=False)
    os.mkfifo(fifo_lock / "run.lock")
    # -- malformed records beyond the confinement tree's
    worse = root / "worse-records"
    worse.mkdir()
    write_metrics(worse / "metrics.jsonl", steps=5, evals=False)
    with open(worse / "metrics.jsonl", "ab") as f:
        for line in [
            b'{"kind": "train", "step": 6, "loss": 1.0, "phase": {"a": 1}}',
            b'{"kind": "eval", "step": 7, "task": ["passkey"], "length": 64, "accuracy": 1.0}',
            b'{"kind": "eval", "step": 8, "task": "passkey", "length": Infinity, "accuracy": 1.0}',
            b'{"kind": "eval", "step": 9, "task": "passkey", "length": NaN, "accuracy": 1.0}',
            b'{"kind": "train", "step": 3.5, "loss": 1.0}',
            b'{"kind": "train", "step": -1e999, "loss": 1.0}',
            b'\xff\xfe{"kind": "train"}',
            b"\x00" * 64,
            b'{"kind": "train", "step": 10, "loss": 1.0',
            b'{"kind": "train", "step": 11, "loss": 1.0, "x": "' + b"y" * 3_000_000 + b'"}',
            b'{"kind": "train", "step": 12, "loss": 0.5, "phase": "long"}',
        ]:
            f.write(line + b"\n")
    big = root / "big-yaml"  # a 2 MB run.yaml: refused, not parsed truncated
    big.mkdir()
    write_metrics(big / "metrics.jsonl", steps=3, evals=False)
    (big / "run.yaml").write_text("name: big\nphases: []\n" + "# padding\n" * 220_000 + "extra: 1\n")
    inf = root / "inf-yaml"  # phase lengths that are not finite numbers
    inf.mkdir()
    write_metrics(inf / "metrics.jsonl", steps=3, evals=False)
    (inf / "run.yaml").write_text(
        "name: inf\nphases:\n  - {name: a, steps: 1, seq_len: .inf, rope_theta: .nan}\n"
        "  - {name: b, steps: 1, seq_len: .nan}\n  - {name: c, steps: 1, seq_len: -5}\n"
        "  - {name: d, steps: 1, seq_len: 64}\n  - 7\n"
    )
    bomb = root / "bomb-yaml"  # aliases nested nine deep (a billion leaves if expanded)
    bomb.mkdir()
    write_metrics(bomb / "metrics.jsonl", steps=3, evals=False)
    lines = (
        ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        + ["phases: *a8"]
    )
    (bomb / "run.yaml").write_text("\n".join(lines) + "\n")
    for odd in (os.fsdecode(b"bad\xffname"), "new\nline", "<img src=x onerror=alert(1)>"):  # odd run names
        (root / odd).mkdir()
        write_metrics(root / odd / "metrics.jsonl", steps=3, evals=False)
    huge = root / "huge-tail"  # a 4 MB last line still "being written": not held in memory
    huge.mkdir()
    write_metrics(huge / "metrics.jsonl", steps=5, evals=False)
    with open(huge / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "x": "' + b"z" * 4_000_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``workbench app`` in a subprocess on a free port, over the adversarial tree; its log on failure."""
    base = tmp_path_factory.mktemp("served")
    root = build_tree(base)
    _extras(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    log = open(base / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "app", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=5):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"workbench app did not start: {log.read()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "root": root, "proc": proc, "log": log}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def post(server, body: dict) -> tuple[int, str]:
    """POST a callback request; (status, text). A request running past TIMEOUT fails the test."""
    req = urllib.request.Request(
        server["url"] + "/_dash-update-component",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except TimeoutError:
        pytest.fail(f"no answer within {TIMEOUT} s (a server thread is blocked): {json.dumps(body)[:300]}")


def draw(server, runs) -> tuple[int, dict | str]:
    status, text = post(
        server,
        {
            "output": TRAIN_OUT,
            "outputs": [{"id": i, "property": p} for i, p in TRAIN_OUTPUTS],
            "inputs": _train_inputs(runs),
            "state": [{"id": "train-stamp", "property": "data", "value": None}],
            "changedPropIds": ["train-runs.value"],
        },
    )
    return status, (json.loads(text)["response"] if status == 200 else text)


def clean(text: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in text, f"{bad!r} in the answer"


def messages(resp: dict) -> str:
    return json.dumps(resp["train-messages"]["children"])


# ------------------------------------------------------------------ found outside through links inside


@pytest.mark.parametrize(
    "run, expect",
    [
        ("linked-files", "outside RUNS_DIR"),
        ("passwd", "outside RUNS_DIR"),
        ("relative-link", "outside RUNS_DIR"),
        ("chain-link", "outside RUNS_DIR"),
        ("links-ckpt", "ckpt-000005"),
        ("nested-ckpt", "leaving RUNS_DIR"),
        ("loop-link", "metrics.jsonl"),
        ("dangling-link", "metrics.jsonl"),
        ("escape-dir", "refused"),
    ],
)
def test_run_files_found_outside_are_not_read(server, run, expect):
    status, resp = draw(server, [run])
    assert status == 200, resp
    text = json.dumps(resp)
    clean(text)
    assert expect in messages(resp)
    if run in ("linked-files", "passwd", "relative-link", "chain-link"):
        assert resp["train-graph"]["style"]["display"] == "none"  # nothing drawn from the outside file


def test_a_link_inside_runs_dir_is_still_read(server):
    status, resp = draw(server, ["inner-link"])
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"


def run_list_call(search: str | None, changed: str) -> dict:
    """The training view's run-list callback as the browser posts it."""
    return {
        "output": "..train-runs.options...train-runs.value...train-url-messages.children..",
        "outputs": [
            {"id": "train-runs", "property": "options"},
            {"id": "train-runs", "property": "value"},
            {"id": "train-url-messages", "property": "children"},
        ],
        "inputs": [
            {"id": "train-poll", "property": "n_intervals", "value": None},
            {"id": "url", "property": "search", "value": search},
            {"id": "tabs", "property": "value", "value": "training"},
        ],
        "state": [{"id": "train-runs", "property": "value", "value": None}],
        "changedPropIds": [changed],
    }


def test_run_list_and_deep_links_skip_what_leaves(server):
    status, text = post(server, run_list_call("?tab=training&run=escape-dir", "url.search"))
    assert status == 200
    clean(text)
    assert "refused" in text and "resolves outside RUNS_DIR" in text


def test_runs_with_odd_names_are_listed_and_drawn(server):
    """Run directories named with undecodable bytes, a newline or markup round-trip through the browser's
    dropdown (JSON) and draw (the markup stays text: Dash renders strings, never HTML)."""
    status, text = post(server, run_list_call(None, "tabs.value"))
    assert status == 200
    names = [o["value"] for o in json.loads(text)["response"]["train-runs"]["options"]]
    odd = [n for n in names if n.startswith(("bad\udcff", "new\n", "<img"))]
    assert len(odd) == 3, names
    status, resp = draw(server, odd)
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"
    assert len(resp["train-info"]["children"]) == 4  # a header row and one row per run


def test_store_picker_over_http_lists_only_confined_stores(server):
    """The retrieval view's store picker: the honest store with a retrieval group is offered, the ones whose
    group links out or whose metadata is a FIFO are not (and the request returns promptly)."""
    body = {
        "output": "..retrieval-store.options...retrieval-store.value...retrieval-messages.children..",
        "outputs": [
            {"id": "retrieval-store", "property": "options"},
            {"id": "retrieval-store", "property": "value"},
            {"id": "retrieval-messages", "property": "children"},
        ],
        "inputs": [{"id": "tabs", "property": "value", "value": "retrieval"}],
        "state": [{"id": "retrieval-store", "property": "value", "value": None}],
        "changedPropIds": ["tabs.value"],
    }
    status, text = post(server, body)
    assert status == 200, text
    clean(text)
    offered = [o["value"] for o in json.loads(text)["response"]["retrieval-store"]["options"]]
    assert "ret.zarr" in offered and "ret-linked.zarr" not in offered and "ret-fifo.zarr" not in offered, offered


PICKED = [
    ("retrieval", "ret-fifo-array.zarr", "not a regular file"),
    ("retrieval", "ret-linked.zarr", "RUNS_DIR"),
    ("retrieval", "ret-fifo.zarr", "not a regular file"),
    ("retrieval", "ret-fifo-chunk.zarr", "not a regular file"),
    ("retrieval", "ret-chunk-link.zarr", "leaving RUNS_DIR"),
] + [
    (view, store, expect)
    for view in ("traces", "updates")
    for store, expect in [
        ("ret-linked.zarr", "RUNS_DIR"),
        ("ret-fifo.zarr", "not a regular file"),
        ("whole-link.zarr", "RUNS_DIR"),
        ("escape-dir/elsewhere.zarr", "RUNS_DIR"),
    ]
]


@pytest.mark.parametrize("prefix, store, expect", PICKED)
def test_picking_a_confined_store_says_why(server, callbacks, prefix, store, expect):
    """A store whose array metadata is a FIFO is listed (discovery reads group metadata only) but picking it,
    or any store confined away (a stale pick, a crafted request), answers promptly with why in the view's
    picker messages, instead of empty controls without a word."""
    key, outs, inputs, state = next(c for c in callbacks if f"{prefix}-picker-messages.children" in c[0])
    ins = [
        {
            "id": i["id"],
            "property": i["property"],
            "value": store if i["id"] == f"{prefix}-store" else ("W_q" if i["id"] == "updates-source" else None),
        }
        for i in inputs
    ]
    sts = [{"id": i["id"], "property": i["property"], "value": None} for i in state]
    status, text = post(
        server,
        {"output": key, "outputs": outs, "inputs": ins, "state": sts, "changedPropIds": [f"{prefix}-store.value"]},
    )
    assert status == 200, text[:300]
    clean(text)
    shown = json.dumps(json.loads(text)["response"][f"{prefix}-picker-messages"]["children"])
    assert expect in shown, (prefix, shown)


# ------------------------------------------------------------------ special files never opened


@pytest.mark.parametrize("run", ["fifo-run", "socket-run", "dir-metrics", "fifo-lock", "links-ckpt"])
def test_special_files_answer_promptly(server, run):
    status, resp = draw(server, [run])
    assert status == 200, resp
    clean(json.dumps(resp))
    if run != "fifo-lock":
        assert "not a regular file" in messages(resp) or "not read" in messages(resp)


def test_lock_symlinked_out_is_not_trusted(server):
    status, resp = draw(server, ["lock-link"])
    assert status == 200
    assert "left by a writer that stopped" in messages(resp)


def test_saves_in_progress_only_while_the_writer_lives(server):
    """Over HTTP: a run whose .tmp-ckpt-* directory is old is 'in progress' exactly while a live process
    (this test) holds its run.lock; before and after, it is 'left by a writer that stopped'."""
    from workbench.runlock import RunLock

    run = server["root"] / "locked-run"
    run.mkdir(exist_ok=True)
    write_metrics(run / "metrics.jsonl", steps=3, evals=False)
    (run / ".tmp-ckpt-000004-ab").mkdir(exist_ok=True)
    os.utime(run / ".tmp-ckpt-000004-ab", (0, 0))
    _, resp = draw(server, ["locked-run"])
    assert "left by a writer that stopped" in messages(resp)
    with RunLock(run):
        _, resp = draw(server, ["locked-run"])
        assert "1 checkpoint save(s) in progress" in messages(resp)
    _, resp = draw(server, ["locked-run"])
    assert "left by a writer that stopped" in messages(resp) and "in progress" not in messages(resp)


# ------------------------------------------------------------------ every callback, every bad payload

PAYLOADS = [
    5,
    -1,
    3.5,
    True,
    None,
    [],
    [5],
    [None],
    [["good"]],
    {"a": 1},
    {"points": "x"},
    "x" * 200_000,
    "\x00",
    "a/" * 3000,
    "\udcff",
    "../outside",
    "/etc",
    "/etc/passwd",
    "escape-dir",
    "escape-dir/elsewhere.zarr",
    "fifo.zarr",
    "fifo-group.zarr",
    "fifo-array.zarr",
    "linked-group.zarr",
    "whole-link.zarr",
    "chunk-link.zarr",
    "array-meta-link.zarr",
    "root-meta-link.zarr",
    "ret-linked.zarr",
    "ret-fifo.zarr",
    "ret-fifo-array.zarr",
    "fifo-run",
    "passwd",
    ["passwd", "fifo-run"],
    list(range(1000)),
    float("1e308"),
    -(2**70),
    [{"x": 1}] * 20,
    "ret.zarr",
]
STORE_INPUTS = {"retrieval-store", "traces-store", "updates-store"}


def _bodies():
    """One request per registered callback with the payload in every input and state."""
    from app.main import create_app

    app = create_app(Path(__file__).parent)  # the callback map does not depend on RUNS_DIR
    out = []
    for key, spec in app.callback_map.items():
        outputs = key.strip(".").split("...")
        outs = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]} for o in outputs]
        out.append((key, outs, spec["inputs"], spec.get("state", [])))
    return out


@pytest.fixture(scope="module")
def callbacks():
    return _bodies()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: repr(p)[:30])
def test_every_callback_answers_every_payload(server, callbacks, payload):
    for key, outs, inputs, state in callbacks:
        ins = [{"id": i["id"], "property": i["property"], "value": payload} for i in inputs]
        sts = [{"id": s["id"], "property": s["property"], "value": payload} for s in state]
        for changed in ins[:2]:  # the first two inputs as the trigger (a store picker, then a control)
            body = {
                "output": key,
                "outputs": outs if len(outs) > 1 else outs[0],
                "inputs": ins,
                "state": sts,
                "changedPropIds": [f"{changed['id']}.{changed['property']}"],
            }
            status, text = post(server, body)
            assert status in (200, 204), (key, payload, text[:300])
            clean(text)


@pytest.mark.parametrize(
    "store",
    [
        "ret.zarr",
        "ret-linked.zarr",
        "ret-fifo.zarr",
        "ret-fifo-array.zarr",
        "ret-fifo-chunk.zarr",
        "ret-chunk-link.zarr",
    ],
)
@pytest.mark.parametrize(
    "payload",
    [5, None, [None], {"points": [{"x": "a", "curveNumber": 99}]}, "x" * 10_000, ["../outside"] * 3, -1],
    ids=lambda p: repr(p)[:20],
)
def test_a_real_store_with_bad_controls(server, callbacks, store, payload):
    """A store the picker could offer (or a confined-away one) in the store inputs, a bad value in every
    other control: each callback answers a message, reads nothing outside, never blocks."""
    for key, outs, inputs, state in callbacks:
        if not STORE_INPUTS & {i["id"] for i in [*inputs, *state]}:
            continue

        def fill(spec):
            return [
                {"id": i["id"], "property": i["property"], "value": store if i["id"] in STORE_INPUTS else payload}
                for i in spec
            ]

        ins, sts = fill(inputs), fill(state)
        body = {
            "output": key,
            "outputs": outs if len(outs) > 1 else outs[0],
            "inputs": ins,
            "state": sts,
            "changedPropIds": [f"{ins[-1]['id']}.{ins[-1]['property']}"],
        }
        status, text = post(server, body)
        assert status in (200, 204), (key, store, payload, text[:300])
        clean(text)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"output": 5}',
        b'{"output": "..x.y..", "outputs": [], "inputs": []}',
        json.dumps(
            {
                "output": "train-poll.disabled",
                "outputs": {"id": "train-poll", "property": "disabled"},
                "inputs": "x",
                "changedPropIds": [],
            }
        ).encode(),
        json.dumps(
            {
                "output": "train-poll.disabled",
                "outputs": {"id": "train-poll", "property": "disabled"},
                "inputs": [{"id": "train-live", "property": "value", "value": ["on"]}],
                "changedPropIds": [{"a": 1}],
            }
        ).encode(),
        json.dumps(
            {
                "output": "train-poll.disabled",
                "outputs": {"id": "train-poll", "property": "disabled"},
                "inputs": [],
                "changedPropIds": [],
            }
        ).encode(),
    ],
    ids=["text", "list", "empty", "number-output", "unknown-output", "inputs-string", "changed-dict", "inputs-short"],
)
def test_malformed_requests_are_a_client_error(server, body):
    """Requests that are not Dash callback calls at all: a 4xx, never a 500 (Dash's own parsing)."""
    req = urllib.request.Request(
        server["url"] + "/_dash-update-component", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    assert status < 500, (status, text[:300])
    clean(text)


def test_an_oversized_request_is_refused_unread(server):
    body = {
        "output": TRAIN_OUT,
        "outputs": [{"id": i, "property": p} for i, p in TRAIN_OUTPUTS],
        "inputs": _train_inputs("x" * (9 << 20)),
        "state": [],
        "changedPropIds": ["train-runs.value"],
    }
    req = urllib.request.Request(
        server["url"] + "/_dash-update-component",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except ConnectionError:  # the server may close the connection instead of reading the rest
        status = 413
    assert status == 413


# ------------------------------------------------------------------ malformed metrics records


def test_malformed_records_are_skipped_with_a_count(server):
    status, resp = draw(server, ["worse-records"])
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"
    text = messages(resp)
    assert "10 line(s)" in text, text  # 11 appended lines: 10 malformed (incl. a 3 MB one), step 12 kept
    steps = [x for tr in resp["train-graph"]["figure"]["data"] for x in (tr.get("x") or [])]
    assert 12 in steps and 3.5 not in steps


def test_malformed_records_in_the_old_tree_are_counted(server):
    status, resp = draw(server, ["bad-records"])
    assert status == 200 and "7 line(s)" in messages(resp)


def test_a_huge_unfinished_last_line_is_not_drawn(server):
    status, resp = draw(server, ["huge-tail"])
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"
    assert "incomplete" in messages(resp) or "too long" in messages(resp)


@pytest.mark.parametrize(
    "run, expect", [("big-yaml", "larger than 1 MiB"), ("inf-yaml", "L=64"), ("bomb-yaml", "run.yaml lists no phases")]
)
def test_hostile_run_yaml_is_a_message(server, run, expect):
    status, resp = draw(server, [run])
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"
    assert expect in json.dumps(resp)


def test_phase_lengths_keep_only_finite_positive_numbers(server):
    from app import runs as R
    from app.paths import root_of

    info = R.run_info(root_of(server["root"]), "inf-yaml")
    assert info.phase_lengths == [64]


def test_metrics_read_across_polls_skips_an_over_long_line_once(tmp_path):
    """The incremental reader: a line longer than MAX_LINE written over several polls is counted once and
    never held whole; the records around it, and a short line completed on a later poll, are kept."""
    from app import runs as R
    from workbench.runs import MAX_LINE

    run = tmp_path / "r"
    run.mkdir()
    path = run / "metrics.jsonl"
    write_metrics(path, steps=2, evals=False)
    with open(path, "ab") as f:
        f.write(b'{"kind": "train", "x": "' + b"y" * (MAX_LINE + 10))
    first = R.read_metrics(run)
    assert len(first.records) == 2 and first.bad_lines == 1 and first.partial_line and first.skipping
    with open(path, "ab") as f:
        f.write(b"y" * (3 * MAX_LINE) + b'"}\n{"kind": "train", "step": 3, "loss": 1.0}\n{"kind": "tr')
    second = R.read_metrics(run)
    assert [r["step"] for r in second.records] == [1, 2, 3] and second.bad_lines == 1 and second.partial_line
    with open(path, "ab") as f:
        f.write(b'ain", "step": 4, "loss": 0.5}\n')
    third = R.read_metrics(run)
    assert [r["step"] for r in third.records] == [1, 2, 3, 4] and third.bad_lines == 1 and not third.partial_line
    assert third.offset == path.stat().st_size


def test_a_link_swapped_in_after_the_check_is_caught_when_opened(tmp_path, monkeypatch):
    """read_regular checks the path, opens it, then checks what it opened (/proc/self/fd): a symlink
    swapped in between is refused (simulated by a check that sees nothing wrong)."""
    from app import paths

    root = tmp_path / "runs"
    root.mkdir()
    (tmp_path / "secret.txt").write_text(SECRET)
    (root / "f.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(paths, "escape", lambda root, path: None)
    with pytest.raises(paths.OutsideRunsDir, match="when opened"):
        paths.read_regular(root.resolve(), root / "f.txt")


# ------------------------------------------------------------------ the server survived all of it


def test_server_still_answers_and_logged_no_500(server):
    status, resp = draw(server, ["good"])
    assert status == 200 and resp["train-graph"]["style"]["display"] == "block"
    assert server["proc"].poll() is None
    server["log"].flush()
    server["log"].seek(0)
    log = server["log"].read()
    assert " 500 " not in log and "Exception on /_dash-update-component" not in log, log[-3000:]
