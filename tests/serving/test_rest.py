"""kfx.serving.rest's HTTP/1.1 server on the wire: chunked bodies, malformed and oversized requests,
methods other than GET/POST, pipelining (raw sockets against a real `python -m kfx.serving`)."""

import json
import socket
import subprocess
import sys

import pytest

from tests.serving.conftest import REPO

PREDICT = b'{"instances": [[1.0, 2.0, 3.0]]}'


def exchange(server, data: bytes, responses: int = 1) -> list:
    """Sends raw bytes on one connection; returns [(status, headers, body)] of the next responses
    (fewer when the server closes the connection first)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        answers = []
        for _ in range(responses):
            line = stream.readline()
            if not line:
                break
            status = int(line.split()[1])
            headers = {}
            while (header := stream.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            head_only = data.startswith(b"HEAD")
            body = b"" if head_only else stream.read(int(headers.get("content-length", 0)))
            answers.append((status, headers, body))
        return answers


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_chunked_body_is_read_and_the_connection_stays_in_step(main_server):
    expected = exchange(main_server, post("/v1/models/keras/versions/1:predict", PREDICT))[0]
    assert expected[0] == 200
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (PREDICT[:7], PREDICT[7:]))
    chunked = (b"POST /v1/models/keras/versions/1:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
    first, second = exchange(main_server, chunked + b"GET /v1/models/keras/versions/1 HTTP/1.1\r\n\r\n", 2)
    assert first[0] == 200 and json.loads(first[2]) == json.loads(expected[2])
    assert second[0] == 200 and json.loads(second[2])["model_version_status"][0]["state"] == "AVAILABLE"


def test_pipelined_requests_are_answered_in_order_and_connection_close_is_honoured(main_server):
    requests = (post("/v1/models/keras/versions/1:predict", PREDICT)
                + post("/v1/models/nope:predict", PREDICT, "Connection: close\r\n")
                + b"GET /v1/models/keras HTTP/1.1\r\n\r\n")
    answers = exchange(main_server, requests, 3)
    assert [a[0] for a in answers] == [200, 404]  # nothing after Connection: close
    assert answers[1][1]["connection"] == "close"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD", "OPTIONS"])
def test_other_methods_get_tf_servings_malformed_request(main_server, method):
    (status, headers, body), = exchange(main_server, f"{method} /v1/models/keras HTTP/1.1\r\n\r\n".encode())
    assert status == 400
    if method == "HEAD":
        assert body == b"" and int(headers["content-length"]) > 0
    else:
        assert json.loads(body) == {"error": f"Malformed request: {method} /v1/models/keras"}


@pytest.mark.parametrize("request_bytes, status, message", [
    (b"GET /v1/models/" + b"k" * 70000 + b" HTTP/1.1\r\n\r\n", 400, "longer than 65536 bytes"),
    (b"GET /v1/models/keras HTTP/1.1\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n", 400, "longer than 65536 bytes"),
    (b"GET /v1/models/keras HTTP/1.1\r\nno colon here\r\n\r\n", 400, "Bad header line"),
    (b"GET /v1/models/keras HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", 400, "Bad header line"),
    (b"GET /v1/models/keras\r\n\r\n", 400, "Bad request syntax"),
    (b"POST /v1/models/keras:predict HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400, "Bad Content-Length"),
    (b"POST /v1/models/keras:predict HTTP/1.1\r\nContent-Length: 9999999999\r\n\r\n", 413, "over the limit"),
    (b"POST /v1/models/keras:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "Bad chunk size"),
], ids=["long request line", "long header", "no colon", "101 headers", "no version", "negative length",
        "body too large", "bad chunk size"])
def test_malformed_requests_are_answered_then_closed(main_server, request_bytes, status, message):
    answers = exchange(main_server, request_bytes + b"GET /v1/models/keras HTTP/1.1\r\n\r\n", 2)
    assert len(answers) == 1  # the connection is closed: what follows is not read as a request
    (got, headers, body), = answers
    assert got == status and headers["connection"] == "close" and message in json.loads(body)["error"]


def test_rest_port_in_use_fails_the_start_with_exit_255(models_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "kfx.serving", f"--model_base_path={models_dir / 'keras'}",
                               "--port=0", f"--rest_api_port={port}"], cwd=REPO, capture_output=True, text=True,
                              timeout=180)
    assert proc.returncode == 255, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(
        f"Failed to start server. Error: INVALID_ARGUMENT: Failed to start HTTP Server at 127.0.0.1:{port}: ")


def test_every_rest_request_is_counted_once_as_tf_serving_counts_them(main_server):
    """http_server.cc: RecordModelRequestCount for each request, failed before the model or not."""
    def counts() -> dict:
        (_, _, body), = exchange(main_server, b"GET /monitoring/prometheus/metrics HTTP/1.1\r\n\r\n")
        series = (line.rpartition(" ") for line in body.decode().splitlines() if line.startswith(":"))
        return {k: int(float(v)) for k, _, v in series if k.startswith(":tensorflow:serving:request_count")}

    key = ':tensorflow:serving:request_count{{model_name="keras",status="{}"}}'
    before = counts()
    answers = exchange(main_server, post("/v1/models/keras/versions/1:predict", PREDICT)
                       + post("/v1/models/keras:predict", b"{not json")
                       + b"GET /v1/models/keras HTTP/1.1\r\n\r\n", 3)
    assert [a[0] for a in answers] == [200, 400, 200]
    after = counts()
    assert after[key.format("OK")] - before.get(key.format("OK"), 0) == 2  # the predict and the status
    assert after[key.format("INVALID_ARGUMENT")] - before.get(key.format("INVALID_ARGUMENT"), 0) == 1
