"""Certificates for TLS to memcached, made with ``cryptography``, and a memcached that speaks only TLS.

:func:`make_certificates` writes a CA, a server certificate for
``127.0.0.1`` (IP SAN) and ``localhost`` (DNS SAN), a client certificate
from the same CA, and a client certificate from another CA, each with its
key, as PEM files.  :func:`tls_memcached` starts memcached ``-Z`` with them
(``ssl_verify_mode=2``: a client certificate from the CA is required).  The
tests (``tests/test_tls.py``) and ``benchmarks/tls.py`` use both.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from unimr.memcachedlock.tools.servers import MemcachedServer


@dataclasses.dataclass(frozen=True)
class Certificates:
    """The PEM files of one test's TLS set-up (absolute paths, as text)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str
    #: A server certificate from the CA that names neither 127.0.0.1 nor localhost.
    misnamed_server_cert: str
    misnamed_server_key: str

    def environ(self, client: bool = True) -> dict[str, str]:
        """The settings of a client that trusts the CA, with its certificate unless ``client`` is false."""
        env = {"MEMCACHEDLOCK_TLS_CA": self.ca}
        if client:
            env.update(MEMCACHEDLOCK_TLS_CERT=self.client_cert, MEMCACHEDLOCK_TLS_KEY=self.client_key)
        return env


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    cert_path, key_path = directory / (stem + ".pem"), directory / (stem + "-key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _issue(subject: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
           usage: x509.ObjectIdentifier | None = None,
           names: list[x509.GeneralName] | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and its certificate: a self-signed CA without ``issuer``, else a leaf signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2)))
    if issuer is None:
        builder = builder.issuer_name(_name(subject)).add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                                                    critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        return key, builder.sign(key, hashes.SHA256())
    issuer_key, issuer_cert = issuer
    builder = builder.issuer_name(issuer_cert.subject).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                    critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, a server certificate (127.0.0.1, localhost), two client certificates and a server
    certificate for other names into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue("memcachedlock test CA", None)
    other_ca = _issue("another CA", None)
    server = _issue("memcached", ca, ExtendedKeyUsageOID.SERVER_AUTH,
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _issue("zope client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue("stranger", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    misnamed = _issue("memcached elsewhere", ca, ExtendedKeyUsageOID.SERVER_AUTH,
                      [x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.DNSName("elsewhere.example")])
    ca_path, _ = _write(directory, "ca", *ca)
    other_ca_path, _ = _write(directory, "other-ca", *other_ca)
    server_cert, server_key = _write(directory, "server", *server)
    client_cert, client_key = _write(directory, "client", *client)
    other_cert, other_key = _write(directory, "stranger", *stranger)
    misnamed_cert, misnamed_key = _write(directory, "misnamed-server", *misnamed)
    return Certificates(ca_path, server_cert, server_key, client_cert, client_key, other_ca_path, other_cert,
                        other_key, misnamed_cert, misnamed_key)


def tls_memcached(certs: Certificates, verify_mode: int = 2) -> MemcachedServer:
    """A memcached (not started) that speaks only TLS, with ``certs``' server certificate.

    ``verify_mode`` 2 requires a client certificate signed by ``certs.ca``.
    """
    options = "ssl_chain_cert=%s,ssl_key=%s,ssl_ca_cert=%s,ssl_verify_mode=%d" % (
        certs.server_cert, certs.server_key, certs.ca, verify_mode)
    return MemcachedServer(extra=("-Z", "-o", options))
