"""A GCS-compatible server on localhost for the gs:// tests (test_gcs.py).

`running_emulator(tmp_dir)` starts this file as a subprocess that serves

* gcp-storage-emulator (pinned in requirements.txt): the GCS JSON/XML API over
  plain HTTP, one request at a time (HTTP/1.0), in memory;
* a front on a second port that every client talks to:
  - TensorFlow's GCS file system (tf.io.gfile, hence etils.epath,
    clu/tf.summary, TFDS, orbax's metadata files) has no endpoint option: its
    URLs are the compile-time constants `https://www.googleapis.com/storage/v1/`,
    `.../upload/storage/v1/` and `https://storage.googleapis.com/`
    (tsl/platform/cloud/gcs_file_system.cc: kGcsUriBase, kGcsUploadUriBase,
    kStorageHost). Its libcurl honours `https_proxy` and `CURL_CA_BUNDLE`, so
    the front is that proxy: it answers `CONNECT` for those two hosts only and
    terminates TLS with a throw-away self-signed certificate (made with the
    `openssl` command line tool);
  - tensorstore (orbax's arrays) sends plain HTTP to `TENSORSTORE_GCS_HTTP_URL`;
  - google-cloud-storage (orbax's bucket lookup) reads `STORAGE_EMULATOR_HOST`.
  The front rewrites `Host` to itself (the emulator builds resumable-upload
  URLs from it, so uploads come back here too) and answers
  `Expect: 100-continue` itself, which the emulator never does (libcurl would
  wait one second before every upload body).

`Emulator.env` holds the variables that point every library at it;
`running_emulator` sets them in os.environ for its duration (subprocesses
inherit them).
"""

from __future__ import annotations

import argparse
import contextlib
import http
import http.server
import importlib.util
import json
import logging
import os
import select
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

BUCKET = "bvl-test-bucket"
READY = "gcs-emulator-and-tls-front-ready"
# The hosts TensorFlow's GCS file system talks to (gcs_file_system.cc).
TF_GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


# --------------------------------------------------------------- the server


def _read_head(sock) -> bytes:
  """Bytes up to and including the blank line that ends an HTTP head."""
  data = b""
  while b"\r\n\r\n" not in data:
    chunk = sock.recv(1)
    if not chunk:
      break
    data += chunk
  return data


class _Front(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128  # tensorstore opens many connections at once

  def __init__(self, port: int, upstream: tuple[str, int], context):
    self.upstream, self.context = upstream, context
    super().__init__(("127.0.0.1", port), _FrontHandler)


class _FrontHandler(socketserver.BaseRequestHandler):
  """One request to the emulator, plain or through `CONNECT host:443` + TLS."""

  def handle(self):
    head = _read_head(self.request)
    parts = head.split(b"\r\n", 1)[0].split()
    if parts[:1] != [b"CONNECT"]:  # tensorstore, resumable-upload URLs
      if head:
        self._forward(self.request, head)
      return
    host = parts[1].rsplit(b":", 1)[0].decode() if len(parts) == 3 else ""
    if host not in TF_GCS_HOSTS:
      self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return
    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    with self.server.context.wrap_socket(self.request, server_side=True) as tls:
      request_head = _read_head(tls)
      if request_head:
        self._forward(tls, request_head)

  def _forward(self, client, head: bytes) -> None:
    """Sends `head` + the rest of the request upstream, the response back.

    `Host` becomes this front, so the upload URLs the emulator hands out lead
    back here. `Expect: 100-continue` is answered here: the emulator speaks
    HTTP/1.0 and never sends `100 Continue`, and libcurl would wait a second
    for it before every upload body.
    """
    lines = head.split(b"\r\n")
    me = "{}:{}".format(*self.server.server_address).encode()
    kept, expect = [lines[0]], False
    for line in lines[1:]:
      name = line.split(b":", 1)[0].strip().lower()
      if name == b"host":
        kept.append(b"Host: " + me)
      elif name == b"expect":
        expect = b"100-continue" in line.lower()
      else:
        kept.append(line)
    with socket.create_connection(self.server.upstream) as up:
      up.sendall(b"\r\n".join(kept))
      if expect:
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
      _pump(client, up)


def _pump(client, up) -> None:
  """Copies bytes both ways until the emulator closes (HTTP/1.0: it always does)."""
  pending = getattr(client, "pending", lambda: 0)  # TLS: decrypted, not yet read
  while True:
    readable = [client] if pending() else select.select([client, up], [], [], 60)[0]
    if not readable:
      return
    if up in readable:
      data = up.recv(65536)
      if not data:
        return
      client.sendall(data)
    if client in readable:
      try:
        data = client.recv(65536)
      except OSError:  # ssl.SSLError included
        return
      if not data:
        up.shutdown(socket.SHUT_WR)
        while data := up.recv(65536):  # the rest comes from the emulator only
          client.sendall(data)
        return
      up.sendall(data)


def _fix_emulator_request_bodies() -> None:
  """Two request-body bugs of gcp-storage-emulator 2026.7.19 that TF hits.

  * TensorFlow's resumable-upload PUT carries both `Content-Length` and
    `Transfer-Encoding: chunked`; the emulator reads Content-Length bytes of
    the chunked stream (objects then hold `5\\r\\nhe` instead of `hello`).
    RFC 9112 section 6.3: chunked wins.
  * An empty media upload (TF's directory markers, `gs://b/dir/`) has no body:
    the emulator's `_media_upload` takes len(None) and drops the connection.
  """
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  read_raw, read = server._read_raw_data, server._read_data  # pylint: disable=protected-access

  def read_raw_data(handler):
    encoding = (handler.headers.get("Transfer-Encoding") or "").lower()
    if encoding == "chunked" and "Content-Length" in handler.headers:
      del handler.headers["Content-Length"]
    return read_raw(handler)

  def read_data(handler, query):
    data = read(handler, query)
    if data is None and query.get("uploadType") == ["media"]:
      return b""
    return data

  server._read_raw_data, server._read_data = read_raw_data, read_data  # pylint: disable=protected-access


def _add_generation_preconditions() -> None:
  """Object downloads with GCS's generation header and read preconditions.

  gcp-storage-emulator 2026.7.19 sends no `x-goog-generation` and ignores
  `ifGenerationNotMatch`: tensorstore's conditional re-read of an unchanged
  OCDBT manifest then gets a 200 without a generation and fails the checkpoint
  with "Malformed StorageGeneration". GCS answers 304 (or 412 for a failed
  `ifGenerationMatch`).
  """
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      obj = None
    if obj is not None:
      generation = str(obj["generation"])
      query = {k: v[0] for k, v in request.query.items()}
      if query.get("ifGenerationNotMatch") == generation:
        response.status = http.HTTPStatus.NOT_MODIFIED
        return None
      if query.get("ifGenerationMatch", generation) != generation:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        return None
      response["x-goog-generation"] = generation
      response["x-goog-metageneration"] = str(obj["metageneration"])
    return download(request, response, storage, *args, **kwargs)

  objects.download = download_with_generation  # what objects.get (?alt=media) calls


def serve(port: int, front_port: int, cert: str, key: str) -> None:
  """Runs the emulator (in memory) and the TLS front until SIGTERM."""
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  _fix_emulator_request_bodies()
  _add_generation_preconditions()
  # The emulator serves one request at a time; a listen backlog of 5 (the
  # default) drops connections under tensorstore's bursts (1 s SYN retries).
  http.server.HTTPServer.request_queue_size = 128
  # One line per request (method, path, status) in emulator.log, for failures.
  logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                      format="%(asctime)s %(threadName)s %(message)s")
  emulator = create_server("127.0.0.1", port, in_memory=True,
                           default_bucket=BUCKET)
  emulator.start()
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(cert, key)
  front = _Front(front_port, ("127.0.0.1", port), context)
  threading.Thread(target=front.serve_forever, daemon=True).start()
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  print(READY, flush=True)
  stop.wait()
  front.shutdown()
  emulator.stop()


# ------------------------------------------------------------ the test side


def make_certificate(out_dir: str) -> tuple[str, str]:
  """A self-signed certificate for TF_GCS_HOSTS: (cert.pem, key.pem)."""
  openssl = shutil.which("openssl")
  if openssl is None:
    raise RuntimeError("the gs:// tests need the `openssl` command line tool "
                       "(apt-get install openssl) to make the TLS front's certificate")
  cert, key = os.path.join(out_dir, "cert.pem"), os.path.join(out_dir, "key.pem")
  san = ",".join(f"DNS:{h}" for h in TF_GCS_HOSTS)
  proc = subprocess.run(
      [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-keyout", key, "-out", cert, "-subj", "/CN=gcs-emulator-front",
       "-addext", f"subjectAltName={san}",
       "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,digitalSignature,keyCertSign,keyEncipherment"],
      check=False, capture_output=True, text=True, timeout=60)
  if proc.returncode:
    raise RuntimeError(f"openssl could not make a certificate:\n{proc.stderr}")
  return cert, key


class Emulator:
  """The running server: its endpoint, bucket and client environment."""

  def __init__(self, port: int, front_port: int, cert: str, log_path: str | None = None):
    self.endpoint = f"http://127.0.0.1:{port}"
    self.log_path = log_path
    self.bucket = BUCKET
    self.env = {
        # TensorFlow (tf.io.gfile): through the TLS front.
        "https_proxy": f"http://127.0.0.1:{front_port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{front_port}",
        "CURL_CA_BUNDLE": cert,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # tensorstore: plain HTTP, to the front as well (100-continue).
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{front_port}",
        # Both: a fixed bearer token instead of credentials / the GCE
        # metadata server (the emulator does not check it).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
        "NO_GCE_CHECK": "true",
        # Python google clients (none used by the code today).
        "STORAGE_EMULATOR_HOST": self.endpoint,
    }

  def log_tail(self, chars: int = 4000) -> str:
    """The end of the server's log: one line per request, and its errors."""
    if not self.log_path:
      return ""
    with open(self.log_path) as f:
      return f.read()[-chars:]

  def url(self, *parts: str) -> str:
    return "/".join([f"gs://{self.bucket}", *parts])

  def objects(self, prefix: str = "") -> list[str]:
    """Object names under `prefix`, straight from the emulator's JSON API."""
    names, token = [], None
    while True:
      query = {"prefix": prefix, **({"pageToken": token} if token else {})}
      with urllib.request.urlopen(
          f"{self.endpoint}/storage/v1/b/{self.bucket}/o?"
          + urllib.parse.urlencode(query), timeout=30) as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names


def _free_port() -> int:
  from tests.helpers import free_port  # pylint: disable=g-import-not-at-top
  return free_port()


@contextlib.contextmanager
def running_emulator(tmp_dir: str, timeout: float = 60):
  """Starts the server subprocess, sets `Emulator.env`, stops it afterwards."""
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    raise RuntimeError("the gs:// tests need gcp-storage-emulator: "
                       "pip install -r requirements.txt")
  cert, key = make_certificate(str(tmp_dir))
  port = front_port = _free_port()
  while front_port == port:
    front_port = _free_port()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  log = open(os.path.join(str(tmp_dir), "emulator.log"), "w+")  # noqa: SIM115 (closed below)
  proc = subprocess.Popen(
      [sys.executable, "-m", "tests.gcs_emulator", "--port", str(port),
       "--front-port", str(front_port), "--cert", cert, "--key", key],
      cwd=repo, stdout=log, stderr=subprocess.STDOUT)
  saved = {k: os.environ.get(k) for k in Emulator(port, front_port, cert).env}
  try:
    deadline = time.time() + timeout
    while True:
      log.seek(0)
      if READY in log.read():
        break
      if proc.poll() is not None or time.time() > deadline:
        log.seek(0)
        raise RuntimeError(f"the GCS emulator did not start (exit code "
                           f"{proc.poll()}):\n{log.read()[-3000:]}")
      time.sleep(0.1)
    emulator = Emulator(port, front_port, cert, log.name)
    os.environ.update(emulator.env)
    yield emulator
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--front-port", type=int, required=True)
  parser.add_argument("--cert", required=True)
  parser.add_argument("--key", required=True)
  args = parser.parse_args()
  serve(args.port, args.front_port, args.cert, args.key)
