"""Mutual TLS on the gRPC port: SSLConfig with client_verify and custom_ca (TF Serving's ssl_config.proto).

With client_verify true TF Serving requires and verifies a client certificate against custom_ca.
The certificates are made here with `cryptography`: one CA signs the server's and the good
client's certificates; a second CA signs an impostor client's.
"""

import datetime

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess

X = np.array([[1, 2, 3]], np.float32)  # latest keras version: y = 6 + 10


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_cert(name: str, issuer=None, server: bool = False) -> tuple:
    """(certificate, key) for `name`: a self-signed CA when issuer is None, else signed by issuer=(cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def mtls(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtls")
    ca = make_cert("kfx test CA")
    server_cert, server_key = make_cert("localhost", ca, server=True)
    client = make_cert("good client", ca)
    other_ca = make_cert("another CA")
    impostor = make_cert("impostor client", other_ca)
    text = (f"server_key: {_pem_key(server_key).decode()!r}\nserver_cert: {pem(server_cert).decode()!r}\n"
            f"custom_ca: {pem(ca[0]).decode()!r}\nclient_verify: true\n").replace("'", '"')
    (tmp / "ssl.config").write_text(text)
    server = ServerProcess(tmp, f"--model_base_path={models_dir / 'keras'}", "--model_name=secure",
                           f"--ssl_config_file={tmp / 'ssl.config'}")
    good = grpc.ssl_channel_credentials(pem(ca[0]), _pem_key(client[1]), pem(client[0]))
    server.channel.close()
    server.channel = grpc.secure_channel(f"localhost:{server.port}", good)
    try:
        server.wait_serving()
        yield {"target": f"localhost:{server.port}", "ca": pem(ca[0]), "good": good,
               "impostor": grpc.ssl_channel_credentials(pem(ca[0]), _pem_key(impostor[1]), pem(impostor[0])),
               "server": server}
    finally:
        server.stop()


def _predict(target: str, credentials) -> list:
    with ServingClient(target, credentials=credentials, retries=0, timeout=10) as client:
        return client.predict("secure", {"x": X})["y"].tolist()


def test_client_with_cert_from_the_configured_ca_succeeds(mtls):
    assert _predict(mtls["target"], mtls["good"]) == [[16.0]]


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_client_refused(mtls, who):
    credentials = (grpc.ssl_channel_credentials(mtls["ca"]) if who == "no certificate" else mtls["impostor"])
    with pytest.raises(grpc.RpcError) as info:
        _predict(mtls["target"], credentials)
    # A failed TLS handshake never reaches the service: the channel reports UNAVAILABLE.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    print(f"\n{who}: {info.value.code().name}: {info.value.details()}")
    assert _predict(mtls["target"], mtls["good"]) == [[16.0]]  # the server still serves the good client


def test_plaintext_client_refused(mtls):
    with ServingClient(mtls["target"], retries=0, timeout=10) as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.predict("secure", {"x": X})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
