"""
A self-signed certificate for TLS tests, made with ``cryptography`` (which
``Twisted[tls]`` brings): valid for ``localhost`` and ``127.0.0.1``, for a
day; and a TLS server of it that a client on a ``MemoryReactorClock`` meets
in memory.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
    from twisted.test.iosim import IOPump


def self_signed(directory: Path) -> tuple[Path, Path]:
    """
    Write a new key and its self-signed certificate as PEM files in
    ``directory``.

    :returns: The key's path and the certificate's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def tls_server(
    key: Path, cert: Path, protocols: Sequence[bytes] = ()
) -> TLSMemoryBIOFactory:
    """
    A TLS server factory of ``key`` and ``cert`` (plain protocols under it)
    that offers ``protocols`` by ALPN, its writes timed by a clock of its
    own: for handshakes in memory (:func:`handshake`).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.task import Clock
    from twisted.protocols.tls import TLSMemoryBIOFactory

    # pyOpenSSL takes cryptography's key and certificate (its own are
    # deprecated); Twisted's annotations name only pyOpenSSL's.
    options = CertificateOptions(
        privateKey=load_pem_private_key(key.read_bytes(), None),  # type: ignore[arg-type]
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()),  # type: ignore[arg-type]
        acceptableProtocols=list(protocols) or None,
    )
    return TLSMemoryBIOFactory(
        options, False, Factory.forProtocol(Protocol), clock=Clock()
    )


def handshake(
    reactor: MemoryReactorClock, server: TLSMemoryBIOFactory
) -> tuple[TLSMemoryBIOProtocol, IOPump]:
    """
    Connect the last TCP connection ``reactor`` was asked for to a
    protocol of ``server``, in memory, and run the exchange until it rests.

    :returns: The server's TLS protocol and the pump between them.
    """
    from twisted.internet.address import IPv4Address
    from twisted.protocols.tls import TLSMemoryBIOProtocol
    from twisted.test import iosim

    _, port, factory, _, _ = reactor.tcpClients[-1]
    address = IPv4Address("TCP", "127.0.0.1", port)
    accepted = server.buildProtocol(address)
    connecting = factory.buildProtocol(address)
    assert accepted is not None and connecting is not None
    pump = iosim.connect(
        accepted,
        iosim.FakeTransport(accepted, True, address, address),
        connecting,
        iosim.FakeTransport(connecting, False, address, address),
        greet=False,
    )
    pump.flush()
    assert isinstance(accepted, TLSMemoryBIOProtocol)
    return accepted, pump
