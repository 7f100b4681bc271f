"""HTTPS on loopback: a certificate authority made for the test, and a server it signs.

``CA`` writes its certificate (``ca.pem``) into a folder, as a company's CA or a
TLS-inspecting proxy's is handed to users; ``HTTPSServer`` is ``HostileServer``
over TLS, with a certificate for ``localhost`` and ``127.0.0.1`` signed by one.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.hostile_servers import HostileServer

DAY = datetime.timedelta(days=1)


class CA:
    """A self-signed certificate authority; its certificate is ``folder/ca.pem``."""

    def __init__(self, folder: Path, name: str = "itm test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = folder / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def hashed_dir(self) -> Path:
        """A directory holding the certificate under OpenSSL's hashed name (``c_rehash``),
        as ``SSL_CERT_DIR`` wants it."""
        folder = self.folder / "certs"
        folder.mkdir(exist_ok=True)
        (folder / "ca.pem").write_bytes(self.pem.read_bytes())
        subprocess.run(["openssl", "rehash", str(folder)], check=True)
        return folder

    def issue(
        self, name: str = "server", hosts: tuple[str, ...] = ("localhost",)
    ) -> tuple[Path, Path]:
        """A certificate for ``hosts`` (``*.example`` covers one label) and 127.0.0.1:
        (certificate, key) files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        *(x509.DNSName(host) for host in hosts),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file


class HTTPSServer(HostileServer):
    """``HostileServer`` over TLS at ``https://localhost:PORT``, its certificate from ``ca``."""

    def __init__(self, ca: CA, name: str = "server") -> None:
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*ca.issue(name))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}"
