"""Tests of the dataset download against an HTTP server on 127.0.0.1.

The server runs in a thread on an ephemeral port and serves zips built here
from tiny (but loadable) xlsa17 files. Its behaviour is scripted per test:
cut the body short, stall, ignore Range, serve garbage. No other traffic.
"""

import hashlib
import http.server
import io
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from scipy import io as sio

from gmn_jax.data import download
from gmn_jax.data import http_download
from gmn_jax.data import zip_extraction
from gmn_jax.errors import DataError

TIMEOUT_S = 5.0
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write_tiny_dataset(directory: pathlib.Path, seed: int) -> None:
  """Writes a small valid xlsa17 pair: 3 seen classes, 1 unseen, N=16."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(1, 5), 4)
  att = rng.uniform(0.1, 1.0, size=(3, 4))
  att /= np.linalg.norm(att, axis=0)
  locs = {"trainval_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
  for position, label in enumerate(labels, start=1):
    if label == 4:
      locs["test_unseen_loc"].append(position)
    elif position % 4 == 0:
      locs["test_seen_loc"].append(position)
    else:
      locs["trainval_loc"].append(position)
  directory.mkdir(parents=True, exist_ok=True)
  sio.savemat(directory / "res101.mat", {
      "features": rng.uniform(0, 1, size=(5, labels.size)),
      "labels": labels.reshape(-1, 1).astype(np.float64)})
  sio.savemat(directory / "att_splits.mat", {
      "att": att, **{k: np.array(v, np.uint16).reshape(-1, 1)
                     for k, v in locs.items()}})


def _zip_bytes(members) -> bytes:
  """A zip of {member name: bytes}."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
  """{dataset: {file: bytes}} for CUB, APY and FLO."""
  root = tmp_path_factory.mktemp("tiny")
  files = {}
  for seed, name in enumerate(["CUB", "APY", "FLO"]):
    _write_tiny_dataset(root / name, seed)
    files[name] = {f: (root / name / f).read_bytes()
                   for f in zip_extraction.REQUIRED_FILES}
  files["CUB"]["sent_splits.mat"] = files["CUB"]["att_splits.mat"]
  return files


@pytest.fixture(scope="module")
def xlsa17_zip(tiny_files) -> bytes:
  members = {"xlsa17/README.txt": b"readme",
             "xlsa17/data/CUB/allclasses.txt": b"1 a\n",
             "__MACOSX/xlsa17/data/CUB/res101.mat": b"resource fork"}
  for name in ("CUB", "APY"):
    for f, data in tiny_files[name].items():
      members[f"xlsa17/data/{name}/{f}"] = data
  # Pad with incompressible bytes so that the transfer spans several chunks
  # of the server's writes and an interruption lands mid-body.
  members["xlsa17/padding.bin"] = np.random.default_rng(0).bytes(300_000)
  return _zip_bytes(members)


@pytest.fixture(scope="module")
def flo_zip(tiny_files) -> bytes:
  return _zip_bytes({f"cvpr18xian/data/FLO/{f}": data
                     for f, data in tiny_files["FLO"].items()})


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
  """Keeps traffic to 127.0.0.1 off any proxy the environment names."""
  for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves server.files[path], misbehaving as server.script says."""

  def log_message(self, *args):  # Keeps the test output quiet.
    del args

  def do_GET(self):  # pylint: disable=invalid-name
    server = self.server
    with server.lock:
      server.requests.append((self.path, self.headers.get("Range")))
      attempt = len(server.requests)
    body = server.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    behaviour = server.script.get(attempt, server.script.get("default", "ok"))
    start = 0
    range_header = self.headers.get("Range")
    if range_header and behaviour != "ignore_range":
      start = int(range_header.split("=")[1].rstrip("-"))
      if start >= len(body):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(body)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range",
                       f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    rest = body[start:]
    self.send_header("Content-Length", str(len(rest)))
    self.end_headers()
    if behaviour in ("drop", "stall"):
      self.wfile.write(rest[:len(rest) // 3])
      self.wfile.flush()
      if behaviour == "stall":
        time.sleep(1.5)
      return  # HTTP/1.0: the connection closes here, mid-body.
    self.wfile.write(rest)


@pytest.fixture
def server(xlsa17_zip, flo_zip):
  """A local server; set .script = {attempt number or 'default': behaviour}."""
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.daemon_threads = True
  httpd.files = {"/xlsa17.zip": xlsa17_zip, "/cvpr18xian.zip": flo_zip,
                 "/garbage.zip": b"this is not a zip file" * 100}
  httpd.script = {}
  httpd.requests = []
  httpd.lock = threading.Lock()
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
  thread = threading.Thread(target=httpd.serve_forever, args=(0.02,),
                            daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join(TIMEOUT_S)


def _fetch(server, datasets, out_dir, path="/xlsa17.zip", sha256=None, **kw):
  kw.setdefault("validate", lambda directory: None)
  kw.setdefault("retry_wait_s", 0.0)
  kw.setdefault("timeout", TIMEOUT_S)
  kw.setdefault("progress_stream", None)
  sources = {"xlsa17": http_download.ArchiveSource(server.url + path, sha256),
             "flo": http_download.ArchiveSource(server.url + "/cvpr18xian.zip")}
  return download.fetch(datasets, out_dir, sources=sources, **kw)


def _files_under(directory: pathlib.Path):
  return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                if p.is_file())


def test_full_download_and_extraction(server, tiny_files, tmp_path):
  validated = []
  report = _fetch(server, ["CUB", "APY"], tmp_path,
                  validate=lambda d: validated.append(d.name) or "fine")
  assert report == {"CUB": "extracted; fine", "APY": "extracted; fine"}
  assert validated == ["CUB", "APY"]
  # Only the needed members, no archive, no temporary files left.
  assert _files_under(tmp_path) == [
      "APY/att_splits.mat", "APY/res101.mat", "CUB/att_splits.mat",
      "CUB/res101.mat", "CUB/sent_splits.mat"]
  for name in ("CUB", "APY"):
    for f, data in tiny_files[name].items():
      assert (tmp_path / name / f).read_bytes() == data
  assert server.requests == [("/xlsa17.zip", None)]

  # A second run finds valid files and neither downloads nor rewrites.
  before = (tmp_path / "CUB" / "res101.mat").stat().st_mtime_ns
  report = _fetch(server, ["CUB"], tmp_path)
  assert report == {"CUB": "skipped (already present)"}
  assert len(server.requests) == 1
  assert (tmp_path / "CUB" / "res101.mat").stat().st_mtime_ns == before


def test_keep_archive(server, xlsa17_zip, tmp_path):
  _fetch(server, ["APY"], tmp_path, keep_archive=True)
  assert (tmp_path / "xlsa17.zip").read_bytes() == xlsa17_zip
  # A kept archive is reused without any request.
  _fetch(server, ["CUB"], tmp_path, keep_archive=True)
  assert len(server.requests) == 1


def test_flo_comes_from_its_own_archive(server, tiny_files, tmp_path):
  report = _fetch(server, ["FLO", "CUB"], tmp_path)
  assert set(report) == {"FLO", "CUB"}
  assert sorted(r[0] for r in server.requests) == ["/cvpr18xian.zip",
                                                   "/xlsa17.zip"]
  assert ((tmp_path / "FLO" / "res101.mat").read_bytes()
          == tiny_files["FLO"]["res101.mat"])


def test_interrupted_transfer_resumes_with_range(server, xlsa17_zip, tmp_path):
  server.script = {1: "drop"}
  _fetch(server, ["CUB"], tmp_path, keep_archive=True)
  (first_path, first_range), (_, second_range) = server.requests
  assert first_path == "/xlsa17.zip" and first_range is None
  sent_first = (len(xlsa17_zip)) // 3
  assert second_range == f"bytes={sent_first}-"
  assert (tmp_path / "xlsa17.zip").read_bytes() == xlsa17_zip
  assert not (tmp_path / "xlsa17.zip.part").exists()


def test_interrupted_download_resumes_on_the_next_run(server, xlsa17_zip,
                                                      tmp_path):
  server.script = {1: "drop"}
  with pytest.raises(DataError, match="rerun to resume"):
    _fetch(server, ["CUB"], tmp_path, retries=0)
  part = tmp_path / "xlsa17.zip.part"
  assert part.stat().st_size == len(xlsa17_zip) // 3
  assert not (tmp_path / "xlsa17.zip").exists()
  assert not (tmp_path / "CUB").exists()

  _fetch(server, ["CUB"], tmp_path, retries=0, keep_archive=True)
  assert server.requests[1][1] == f"bytes={len(xlsa17_zip) // 3}-"
  assert (tmp_path / "xlsa17.zip").read_bytes() == xlsa17_zip
  assert not part.exists()


def test_stalled_transfer_times_out_and_resumes(server, xlsa17_zip, tmp_path):
  server.script = {1: "stall"}
  start = time.monotonic()
  _fetch(server, ["CUB"], tmp_path, timeout=0.3, keep_archive=True)
  assert time.monotonic() - start < 1.4  # Did not wait for the stall to end.
  assert server.requests[1][1] == f"bytes={len(xlsa17_zip) // 3}-"
  assert (tmp_path / "xlsa17.zip").read_bytes() == xlsa17_zip


def test_server_ignoring_range_restarts(server, xlsa17_zip, tmp_path):
  server.script = {1: "drop", 2: "ignore_range"}
  _fetch(server, ["CUB"], tmp_path, keep_archive=True)
  assert server.requests[1][1] is not None  # It asked to resume...
  # ...got the whole file back, and did not append it to the partial one.
  assert (tmp_path / "xlsa17.zip").read_bytes() == xlsa17_zip


def test_complete_part_file_finishes_on_416(server, xlsa17_zip, tmp_path):
  (tmp_path / "xlsa17.zip.part").write_bytes(xlsa17_zip)
  _fetch(server, ["APY"], tmp_path)
  assert server.requests == [("/xlsa17.zip", f"bytes={len(xlsa17_zip)}-")]
  assert (tmp_path / "APY" / "res101.mat").exists()


def test_not_a_zip_is_a_data_error_and_is_deleted(server, tmp_path):
  with pytest.raises(DataError, match="readable zip archive"):
    _fetch(server, ["CUB"], tmp_path, path="/garbage.zip")
  assert _files_under(tmp_path) == []


def test_wrong_sha256_is_a_data_error_and_is_deleted(server, xlsa17_zip,
                                                     tmp_path):
  with pytest.raises(DataError, match=r"xlsa17.zip.part \[sha256\]"):
    _fetch(server, ["CUB"], tmp_path, sha256="0" * 64)
  assert _files_under(tmp_path) == []
  # The right digest is accepted.
  digest = hashlib.sha256(xlsa17_zip).hexdigest()
  _fetch(server, ["CUB"], tmp_path, sha256=digest.upper())
  assert (tmp_path / "CUB" / "res101.mat").exists()


def test_http_error_is_not_retried(server, tmp_path):
  with pytest.raises(DataError, match="HTTP 404"):
    _fetch(server, ["CUB"], tmp_path, path="/missing.zip", retries=3)
  assert len(server.requests) == 1


# RFC 6761: no name under .invalid resolves.
UNRESOLVABLE_URL = "http://no-such-host.invalid/xlsa17.zip"


def _no_sleep(seconds):
  raise AssertionError(f"retried (slept {seconds} s)")


def test_an_unresolvable_host_fails_at_once(tmp_path, monkeypatch):
  monkeypatch.setattr(http_download.time, "sleep", _no_sleep)  # no retry
  source = http_download.ArchiveSource(UNRESOLVABLE_URL)
  with pytest.raises(http_download.HostNotFoundError) as error:
    download.fetch(["CUB"], tmp_path, sources={"xlsa17": source}, retries=5,
                   validate=lambda directory: None, timeout=TIMEOUT_S)
  message = str(error.value)
  assert message.startswith(f"{UNRESOLVABLE_URL}: expected a host name that resolves, "
                            "found no address for no-such-host.invalid (")
  assert message.endswith(": offline, or a wrong URL)")
  assert ".part" not in message
  assert _files_under(tmp_path) == []


def test_retries_exhausted_name_the_part_file_only_when_there_is_one(tmp_path):
  with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  source = http_download.ArchiveSource(f"http://127.0.0.1:{port}/xlsa17.zip")
  with pytest.raises(DataError, match="after 1 retries; rerun to try again$") as error:
    http_download.download(source, tmp_path / "xlsa17.zip", retries=1, retry_wait_s=0.0,
                           timeout=TIMEOUT_S)
  assert "ConnectionRefusedError" in str(error.value) or "refused" in str(error.value)
  assert ".part" not in str(error.value) and _files_under(tmp_path) == []


def test_corrupt_member_leaves_no_file(tiny_files, tmp_path):
  archive = tmp_path / "bad.zip"
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("data/CUB/att_splits.mat", tiny_files["CUB"]["att_splits.mat"])
    zf.writestr("data/CUB/res101.mat", tiny_files["CUB"]["res101.mat"])
  raw = bytearray(archive.read_bytes())
  payload = tiny_files["CUB"]["res101.mat"]
  position = bytes(raw).index(payload) + len(payload) // 2
  raw[position] ^= 0xFF  # Breaks the CRC of res101.mat only.
  archive.write_bytes(bytes(raw))
  out = tmp_path / "out"
  with pytest.raises(DataError, match=r"data/CUB/res101.mat\]: expected an "
                     r"intact member"):
    zip_extraction.extract(archive, out, ["CUB"])
  # Nothing of the dataset lands, not even its intact att_splits.mat.
  assert _files_under(out) == []


@pytest.mark.parametrize("bad_name", [
    "../CUB/res101.mat", "xlsa17/../../CUB/res101.mat", "/abs/CUB/res101.mat",
    "C:/x/CUB/res101.mat", "..\\CUB\\res101.mat", "xlsa17/README/../../x"])
def test_path_traversal_member_is_rejected(tiny_files, tmp_path, bad_name):
  archive = tmp_path / "evil.zip"
  members = {f"d/CUB/{f}": data for f, data in tiny_files["CUB"].items()}
  members[bad_name] = b"overwrite me"
  archive.write_bytes(_zip_bytes(members))
  out = tmp_path / "a" / "b"
  with pytest.raises(DataError, match="unsafe path"):
    download.fetch(["CUB"], out, archive=archive, validate=lambda d: None)
  assert _files_under(tmp_path) == ["evil.zip"]


def test_link_member_is_rejected(tiny_files, tmp_path):
  archive = tmp_path / "link.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("d/CUB/att_splits.mat", tiny_files["CUB"]["att_splits.mat"])
    info = zipfile.ZipInfo("d/CUB/res101.mat")
    info.external_attr = (0o120777 << 16)  # A symbolic link.
    zf.writestr(info, "/etc/passwd")
  with pytest.raises(DataError, match="expected a regular file, found a link"):
    zip_extraction.extract(archive, tmp_path / "out", ["CUB"])


def test_missing_member_is_a_data_error(tiny_files, tmp_path):
  archive = tmp_path / "partial.zip"
  archive.write_bytes(_zip_bytes(
      {"x/CUB/att_splits.mat": tiny_files["CUB"]["att_splits.mat"]}))
  with pytest.raises(DataError, match=r"\[CUB/res101.mat\]: expected a "
                     "member, found none"):
    zip_extraction.extract(archive, tmp_path / "out", ["CUB"])


def test_local_archive_is_used_and_kept(xlsa17_zip, tmp_path):
  archive = tmp_path / "mine.zip"
  archive.write_bytes(xlsa17_zip)
  download.fetch(["APY"], tmp_path / "out", archive=archive,
                 validate=lambda d: None)
  assert archive.read_bytes() == xlsa17_zip
  assert _files_under(tmp_path / "out") == ["APY/att_splits.mat",
                                            "APY/res101.mat"]


def test_existing_user_files_are_not_overwritten(server, tiny_files, tmp_path):
  (tmp_path / "CUB").mkdir()
  (tmp_path / "CUB" / "att_splits.mat").write_bytes(b"mine")
  with pytest.raises(DataError, match="pass --overwrite"):
    _fetch(server, ["CUB"], tmp_path)
  assert (tmp_path / "CUB" / "att_splits.mat").read_bytes() == b"mine"
  assert server.requests == []
  _fetch(server, ["CUB"], tmp_path, overwrite=True)
  assert ((tmp_path / "CUB" / "att_splits.mat").read_bytes()
          == tiny_files["CUB"]["att_splits.mat"])


def test_existing_invalid_dataset_is_an_error(server, tmp_path):
  (tmp_path / "APY").mkdir()
  for f in zip_extraction.REQUIRED_FILES:
    (tmp_path / "APY" / f).write_bytes(b"junk")

  def reject(directory):
    raise DataError(directory / "res101.mat", None, "a MAT file", "junk")

  with pytest.raises(DataError, match="an invalid one .*res101.mat"):
    _fetch(server, ["APY"], tmp_path, validate=reject)
  assert (tmp_path / "APY" / "res101.mat").read_bytes() == b"junk"


def test_unknown_dataset_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="found MNIST"):
    download.fetch(["MNIST"], tmp_path)


class _FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_only_on_a_tty(server, tmp_path):
  tty = _FakeTTY()
  _fetch(server, ["APY"], tmp_path / "a", progress_stream=tty)
  text = tty.getvalue()
  assert text.startswith("\rxlsa17.zip [") and text.endswith("\n")
  assert "100.0%" in text.splitlines()[-1]
  pipe = io.StringIO()
  _fetch(server, ["APY"], tmp_path / "b", progress_stream=pipe)
  assert pipe.getvalue() == ""


def test_loader_validates_the_extracted_tiny_dataset(server, tmp_path):
  pytest.importorskip("gmn_jax.data.xlsa17")
  report = _fetch(server, ["CUB"], tmp_path,
                  validate=download.validate_with_loader)
  assert report["CUB"].startswith("extracted; 3 seen / 1 unseen classes")


def _run_binary(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", no_proxy="127.0.0.1",
             NO_PROXY="127.0.0.1")
  return subprocess.run(
      [sys.executable, "-m", "experiments.download_data", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
      check=False)


def test_binary_exits_2_with_one_line_on_a_corrupt_archive(server, tmp_path):
  result = _run_binary("--dataset=CUB", f"--out={tmp_path}",
                       f"--url={server.url}/garbage.zip", "--retries=0")
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  last_line = result.stderr.rstrip("\n").splitlines()[-1]
  assert last_line.startswith(f"error: {tmp_path / 'garbage.zip'}")
  assert "expected a readable zip archive" in last_line
  assert _files_under(tmp_path) == []


def test_binary_downloads_and_validates(server, tmp_path):
  result = _run_binary("--dataset=apy,CUB", f"--out={tmp_path}",
                       f"--url={server.url}/xlsa17.zip")
  assert result.returncode == 0, result.stderr
  assert "APY: extracted" in result.stdout and "CUB: extracted" in result.stdout
  assert (tmp_path / "APY" / "res101.mat").exists()


def test_binary_offline_points_to_archive_and_make_synthetic(tmp_path):
  result = _run_binary("--dataset=CUB", f"--out={tmp_path}", f"--url={UNRESOLVABLE_URL}")
  assert result.returncode == 2, result.stderr
  lines = result.stderr.splitlines()  # one line: no retry warnings before it
  assert len(lines) == 1 and lines[0].startswith(
      f"error: {UNRESOLVABLE_URL}: expected a host name that resolves"), result.stderr
  assert lines[0].endswith(
      "; without a network, fetch the zip on another machine and pass it with "
      "--archive=PATH/xlsa17.zip (FLO: --archive=PATH/cvpr18xian.zip), or build stand-in "
      "data with python -m experiments.make_synthetic (docs/synthetic_data.md)")
  assert ".part" not in lines[0] and _files_under(tmp_path) == []


@pytest.mark.parametrize("flags, message", [
    (["--dataset=MNIST"], "--dataset: expected all or names from CUB, SUN, "
     "AWA1, AWA2, APY, FLO, found 'MNIST'"),
    (["--dataset=FLO", "--url=http://127.0.0.1:9/x.zip"],
     "--url: sets the xlsa17 archive (CUB, SUN, AWA1, AWA2, APY); use "
     "--flo_url for FLO"),
])
def test_binary_rejects_bad_flags(tmp_path, flags, message):
  result = _run_binary(*flags, f"--out={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [f"error: {message}"]
  assert _files_under(tmp_path) == []
