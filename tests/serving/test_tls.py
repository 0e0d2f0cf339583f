"""Optional TLS on the gRPC port from a TF Serving SSLConfig text proto."""

import shutil
import subprocess

import grpc
import numpy as np
import pytest

from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def tls_server(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(tmp / "key.pem"),
                    "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    key, cert = (tmp / "key.pem").read_text(), (tmp / "cert.pem").read_text()
    (tmp / "ssl.config").write_text(f"server_key: {key!r}\nserver_cert: {cert!r}\nclient_verify: false\n"
                                    .replace("'", '"'))
    server = ServerProcess(tmp, f"--model_base_path={models_dir / 'keras'}", "--model_name=secure",
                           f"--ssl_config_file={tmp / 'ssl.config'}")
    server.channel = grpc.secure_channel(f"localhost:{server.port}", grpc.ssl_channel_credentials(cert.encode()))
    try:
        yield server.wait_serving(), cert
    finally:
        server.stop()


def test_tls_predict_and_plaintext_refused(tls_server):
    server, cert = tls_server
    credentials = grpc.ssl_channel_credentials(cert.encode())
    with ServingClient(f"localhost:{server.port}", credentials=credentials, retries=0) as client:
        assert client.predict("secure", {"x": np.array([[1, 1, 1]], np.float32)})["y"].tolist() == [[13.0]]
    with ServingClient(f"localhost:{server.port}", retries=0, timeout=5) as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.status("secure")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
