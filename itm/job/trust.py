"""The TLS trust of downloads: ``--ca-bundle``, the conventional variables, or the
system's store with certifi's bundle (``trust``)."""

from __future__ import annotations

import functools
import os
import ssl
import sys

import certifi

from itm.config import Settings
from itm.outcomes import Failure, Reason

# Trust given the conventional way, in this order of precedence (see ``trust``).
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
# The distributions' bundles, for a Python whose OpenSSL looks elsewhere (as truststore).
SYSTEM_BUNDLES = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)


def trust(settings: Settings) -> tuple[ssl.SSLContext, str]:
    """The TLS context for ``settings``, and the name of the trust it holds.

    The first of: ``--ca-bundle``; ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``,
    ``SSL_CERT_DIR`` (every one that is set); the system's trust store with certifi's
    bundle. A file or directory given replaces the default, as it does for requests,
    pip and OpenSSL.
    """
    if settings.ca_bundle is not None:
        return _context((("--ca-bundle", str(settings.ca_bundle)),))
    return _context(
        tuple((name, os.environ[name]) for name in CA_VARIABLES if os.environ.get(name))
    )


@functools.cache
def _context(sources: tuple[tuple[str, str], ...]) -> tuple[ssl.SSLContext, str]:
    if not sources:
        return _system_context(), "the system's trust store and certifi's bundle"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for name, path in sources:
        try:
            if os.path.isdir(path):
                context.load_verify_locations(capath=path)
            else:
                context.load_verify_locations(cafile=path)
        except (OSError, ValueError) as exc:
            raise Failure(
                Reason.CONNECTION_ERROR, f"cannot load the certificates of {name}={path}: {exc}"
            ) from None
    return context, " and ".join(f"{name}={path}" for name, path in sources)


def _system_context() -> ssl.SSLContext:
    """The operating system's trust store plus certifi's bundle, as pip trusts both.

    On macOS and Windows the system verifies (``truststore``, as pip). Elsewhere the
    store is a bundle file that OpenSSL loads here once per process: truststore would
    parse it again for every connection, a cost paid on every handshake.
    """
    if sys.platform in ("darwin", "win32"):
        import truststore

        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.set_default_verify_paths()
        if ssl.get_default_verify_paths().cafile is None:
            bundle = next((path for path in SYSTEM_BUNDLES if os.path.isfile(path)), None)
            if bundle is not None:
                context.load_verify_locations(cafile=bundle)
    context.load_verify_locations(cafile=certifi.where())
    return context
