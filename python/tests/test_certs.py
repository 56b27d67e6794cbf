"""Certificate files as keygen, pyzmq and CZMQ write them (each made by the real program), and the
refusals the Swift library makes too."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest
import zmq
import zmq.auth

from securemq import Client, Worker
from securemq.certs import CertificateError, load_certificate, load_public_key, z85_decode, z85_encode

from conftest import Deployment

# zmq_curve(7)'s key pair: a published test vector.
SECRET = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"
PUBLIC = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def cert_text(public: str = PUBLIC, secret: str = SECRET, metadata: str = '    name = "t"\n') -> str:
    return f"metadata\n{metadata}curve\n    public-key = \"{public}\"\n" + (f'    secret-key = "{secret}"\n' if secret else "")


def test_z85_vectors() -> None:
    assert z85_encode(bytes.fromhex("864FD26FB559F75B")) == "HelloWorld"
    assert z85_decode("HelloWorld") == bytes.fromhex("864FD26FB559F75B")
    with pytest.raises(ValueError):
        z85_decode("Hello Worl")  # a space is not Z85
    with pytest.raises(ValueError):
        z85_decode("#####")  # above 2^32 - 1


def test_a_hand_written_certificate_and_the_published_key_pair(tmp_path: Path) -> None:
    cert = load_certificate(write(tmp_path / "t.key_secret", cert_text()))
    assert cert.public_z85 == PUBLIC and cert.secret_key == z85_decode(SECRET)
    assert cert.metadata == {"name": "t"} and cert.format == "zpl"
    public = load_certificate(write(tmp_path / "t.key", cert_text(secret=""), 0o644))
    assert public.public_key == cert.public_key and public.secret_key is None
    assert SECRET not in repr(cert) and repr(z85_decode(SECRET)) not in repr(cert)


def test_keygen_files(deployment: Deployment) -> None:
    key = deployment.key("worker-7", role="worker", weight=4)
    secret = load_certificate(key.secret_path)
    public = load_certificate(key.public_path)
    assert secret.format == public.format == "secureMQ"
    assert secret.metadata == public.metadata == {"name": "worker-7", "role": "worker", "weight": "4"}
    assert public.public_key == secret.public_key and secret.has_secret and not public.has_secret
    assert oct(key.secret_path.stat().st_mode & 0o777) == "0o600"


def test_pyzmq_files(tmp_path: Path) -> None:
    public_path, secret_path = zmq.auth.create_certificates(str(tmp_path), "py", metadata={"role": "worker"})
    os.chmod(secret_path, 0o600)  # pyzmq leaves the umask's mode
    secret = load_certificate(secret_path)
    public = load_certificate(public_path)
    assert secret.format == public.format == "pyzmq"
    assert secret.metadata == {"role": "worker"} and public.metadata == {}  # pyzmq: metadata only in the secret file
    pyzmq_public, pyzmq_secret = zmq.auth.load_certificate(secret_path)
    assert z85_encode(secret.public_key).encode() == pyzmq_public
    assert secret.secret_key is not None and z85_encode(secret.secret_key).encode() == pyzmq_secret


def test_czmq_files(tmp_path: Path) -> None:
    name = ctypes.util.find_library("czmq")
    if name is None:
        pytest.fail("libczmq is not installed: scripts/ensure-deps --test installs it")
    czmq = ctypes.CDLL(name)
    czmq.zcert_new.restype = ctypes.c_void_p
    czmq.zcert_set_meta.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    czmq.zcert_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    czmq.zcert_public_txt.argtypes = [ctypes.c_void_p]
    czmq.zcert_public_txt.restype = ctypes.c_char_p
    czmq.zcert_destroy.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    handle = ctypes.c_void_p(czmq.zcert_new())
    czmq.zcert_set_meta(handle, b"name", b"%s", b"czmq-peer")
    czmq.zcert_set_meta(handle, b"role", b"%s", b"worker")
    assert czmq.zcert_save(handle, str(tmp_path / "peer").encode()) == 0
    public_text = czmq.zcert_public_txt(handle).decode()
    czmq.zcert_destroy(ctypes.byref(handle))

    secret = load_certificate(tmp_path / "peer_secret")  # CZMQ: NAME and NAME_secret, values quoted
    public = load_certificate(tmp_path / "peer")
    assert secret.format == public.format == "czmq"
    assert secret.public_z85 == public.public_z85 == public_text
    assert secret.metadata == public.metadata == {"name": "czmq-peer", "role": "worker"}
    assert secret.has_secret and not public.has_secret


@pytest.mark.parametrize("mode, who", [(0o640, "its group"), (0o604, "other users"), (0o644, "its group and other users")])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = write(tmp_path / "t.key_secret", cert_text(), mode)
    with pytest.raises(CertificateError) as refusal:
        load_certificate(path)
    assert refusal.value.code == "insecurePermissions"
    assert who in str(refusal.value) and f"chmod 600 {path}" in str(refusal.value)
    assert load_certificate(path, allow_insecure_permissions=True).has_secret


@pytest.mark.parametrize("text, code, line", [
    (cert_text(metadata='\tname = "t"\n'), "syntax", 2),                     # a tab
    (cert_text(metadata='  name = "t"\n'), "syntax", 2),                     # 2 spaces
    (cert_text(metadata="    note = a#b\n"), "syntax", 2),                   # CZMQ would cut at '#'
    (cert_text(metadata='    name = "t"\n    name = "u"\n'), "invalidMetadata", 3),
    (cert_text(public=PUBLIC[:-1] + " "), "invalidKey", 4),                  # not Z85 (and 39 chars)
    (cert_text(public="0" * 40), "invalidKey", 4),                           # Z85 of zeros: CZMQ's failure value
    (cert_text(public="HelloWorldHelloWorldHelloWorldHelloWorld"), "keyMismatch", 5),
    ("metadata\ncurve\n", "missingKey", None),
    ("other\n    a = 1\n" + cert_text(), "syntax", 1),
    ('metadata\n    name = "unterminated\n' + cert_text(metadata=""), "syntax", 2),
    ('curve\n        deep = "x"\n', "syntax", 2),
])
def test_refusals_name_the_line(tmp_path: Path, text: str, code: str, line: int) -> None:
    path = write(tmp_path / "t.key_secret", text)
    with pytest.raises(CertificateError) as refusal:
        load_certificate(path)
    assert refusal.value.code == code, refusal.value
    assert refusal.value.line == line, refusal.value
    assert str(path) in str(refusal.value)
    assert SECRET not in str(refusal.value), "a secret never goes into an error"


def test_a_secret_in_a_public_file_and_a_public_file_as_identity(tmp_path: Path, deployment: Deployment) -> None:
    with pytest.raises(CertificateError) as refusal:
        load_certificate(write(tmp_path / "t.key", cert_text(), 0o600))
    assert refusal.value.code == "unexpectedSecret" and "t.key_secret" in str(refusal.value)
    with pytest.raises(CertificateError, match="does not exist"):
        load_certificate(tmp_path / "missing.key")
    # A public certificate cannot identify a client.
    public_only = write(tmp_path / "p.key", cert_text(secret=""), 0o644)
    with pytest.raises(Exception, match="secret"):
        Client.connect("tcp://127.0.0.1:1", PUBLIC, public_only)


def test_public_keys_from_any_form(tmp_path: Path) -> None:
    raw = z85_decode(PUBLIC)
    assert load_public_key(PUBLIC) == raw
    assert load_public_key(PUBLIC.encode()) == raw
    assert load_public_key(raw) == raw
    assert load_public_key(write(tmp_path / "b.key", cert_text(secret=""), 0o644)) == raw
    with pytest.raises(CertificateError):
        load_public_key(b"short")


def test_pyzmq_and_czmq_made_keys_work_at_the_broker(deployment: Deployment) -> None:
    # A pyzmq-made pair identifies a Python client and a Python worker: the broker's allowlist
    # reads the public files, the library the secret ones.
    directory = deployment.certs
    client_public, client_secret = zmq.auth.create_certificates(str(directory), "pyclient", metadata={"role": "client"})
    worker_public, worker_secret = zmq.auth.create_certificates(str(directory), "pyworker", metadata={"role": "worker"})
    for path in (client_secret, worker_secret):
        os.chmod(path, 0o600)
    # The client's public file goes into the allowlist as pyzmq wrote it: no metadata, so the
    # broker's default role (client). pyzmq writes metadata only into the secret file, so a
    # worker's entry needs the role written by hand.
    (deployment.allowed / "pyclient.key").write_bytes(Path(client_public).read_bytes())
    key = load_certificate(worker_public).public_z85
    (deployment.allowed / "pyworker.key").write_text(
        f'metadata\n    name = "pyworker"\n    role = "worker"\ncurve\n    public-key = "{key}"\n')
    deployment.start_broker()
    worker = deployment.python_worker(deployment_key(worker_secret), "upper", lambda b: b.upper())
    client = deployment.client(deployment_key(client_secret))
    deployment.wait_workers(client, "upper", 1)
    assert client.request("upper", b"made by pyzmq", timeout=10) == b"MADE BY PYZMQ"
    assert isinstance(worker, Worker)


class deployment_key:  # noqa: N801 - a small stand-in for conftest.Key
    def __init__(self, secret_path: str) -> None:
        self.secret_path = Path(secret_path)
        self.name = self.secret_path.stem
