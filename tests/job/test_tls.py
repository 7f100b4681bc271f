"""HTTPS with the user's trust: a CA made for the test, given the conventional ways."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from itm.config import Settings
from itm.job.download import fetch
from itm.job.trust import CA_VARIABLES
from itm.outcomes import Failure
from tests.support.jobs import run_itm, write_urls
from tests.support.tls import CA, HTTPSServer

# Loopback test servers: opted in to private addresses, explicitly.
SETTINGS = Settings(
    connect_timeout=2.0, read_timeout=2.0, deadline=5.0, retries=0, allow_private_addresses=True
)


@pytest.fixture(autouse=True)
def no_ambient_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the machine sets, each test gives its own trust."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server(ca: CA) -> Iterator[HTTPSServer]:
    with HTTPSServer(ca) as running:
        yield running


def refusal(url: str, settings: Settings = SETTINGS) -> str:
    with pytest.raises(Failure) as caught:
        fetch(url, settings)
    assert caught.value.reason == "connection_error"
    return caught.value.detail


def test_an_unknown_ca_is_refused_naming_the_certificate(server: HTTPSServer) -> None:
    hits = server.hits.get("/ok.jpg", 0)
    detail = refusal(server.url + "/ok.jpg")
    assert "TLS certificate refused" in detail
    assert "certifi" in detail and "--ca-bundle" in detail  # what is trusted, and how to add
    assert server.hits.get("/ok.jpg", 0) == hits


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_a_ca_file_in_the_conventional_variables_is_trusted(
    server: HTTPSServer, ca: CA, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, str(ca.pem))
    assert fetch(server.url + "/ok.jpg", SETTINGS) == server.jpeg


def test_a_ca_directory_in_ssl_cert_dir_is_trusted(
    server: HTTPSServer, ca: CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_DIR", str(ca.hashed_dir()))
    assert fetch(server.url + "/ok.jpg", SETTINGS) == server.jpeg


def test_the_setting_wins_over_the_variables(
    server: HTTPSServer, ca: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = CA(tmp_path / "other", "another CA")
    given = dataclasses.replace(SETTINGS, ca_bundle=ca.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(other.pem))
    assert fetch(server.url + "/ok.jpg", given) == server.jpeg
    # The variable alone names a CA that did not sign the server: refused, and said so.
    assert f"SSL_CERT_FILE={other.pem}" in refusal(server.url + "/ok.jpg")


def test_a_given_bundle_replaces_the_default(server: HTTPSServer, tmp_path: Path) -> None:
    """A CA given is the whole trust (as for requests, pip and OpenSSL): a server whose
    certificate another CA signed is refused, whatever else would trust it."""
    other = CA(tmp_path / "other", "another CA")
    detail = refusal(server.url + "/ok.jpg", dataclasses.replace(SETTINGS, ca_bundle=other.pem))
    assert f"--ca-bundle={other.pem}" in detail


def test_a_variable_naming_no_file_fails_each_line_clearly(
    server: HTTPSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = server.hits.get("/ok.jpg", 0)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert "cannot load the certificates of SSL_CERT_FILE=" in refusal(server.url + "/ok.jpg")
    assert server.hits.get("/ok.jpg", 0) == hits


def test_a_missing_ca_bundle_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_bundle"):
        Settings(ca_bundle=tmp_path / "missing.pem")


def test_https_images_are_stored_from_the_trusted_server_only(
    mongo_uri: str,
    mongo_client: MongoClient,
    db_name: str,
    ray_local: None,
    server: HTTPSServer,
    ca: CA,
    tmp_path: Path,
) -> None:
    """The whole job: the CA given with --ca-bundle reaches the download workers."""
    with HTTPSServer(CA(tmp_path / "other", "another CA")) as untrusted:
        urls = write_urls(tmp_path, [server.url + "/ok.jpg", untrusted.url + "/ok.jpg"])
        assert run_itm(mongo_uri, db_name, urls, "--ca-bundle", str(ca.pem)) == 0
    db = mongo_client[db_name]
    trusted, refused = db.events.find().sort("line")
    assert trusted["status"] == "success"
    assert db.images.count_documents({}) == 1
    assert refused["reason"] == "connection_error"
    assert "TLS certificate refused" in refused["detail"]
