"""``redaction.redact``: what is stored, served and printed of a URL or a MongoDB URI."""

from __future__ import annotations

import pytest

from itm.redaction import has_userinfo, is_secret_name, redact


@pytest.mark.parametrize(
    "text, shown",
    [
        # userinfo, in every spelling a parser reads as one
        ("http://user:secret@host/a", "http://***@host/a"),
        ("  HTTPS://a@b@host:81/x@y", "  HTTPS://***@host:81/x@y"),
        ("http://user:pa/ss@host/x.jpg", "http://***@host/x.jpg"),
        ("http://user:pa?ss@host/", "http://***@host/"),
        ("http://user:pa#ss@host/", "http://***@host/"),
        ("http://u:pw@host/logo@2x.png", "http://***@host/logo@2x.png"),
        ("//user:secret@host/a", "//***@host/a"),
        ("http:user:secret@host/a", "http:***@host/a"),
        ("http:\\\\user:secret@host\\a", "http:\\\\***@host\\a"),
        ("http:/user:secret@host/a", "http:/***@host/a"),
        ("http://host\\user:secret@other/a", "http://***@other/a"),
        ("user:secret@host", "user:***@host"),
        ("see http://user:secret@host/a", "see http://***@host/a"),
        ("http://a/1 http://user:secret@b/2", "http://a/1 http://***@b/2"),
        # an "@" after the host is no userinfo
        ("http://host/path@x", "http://host/path@x"),
        ("https://cdn.example/img/logo@2x.png", "https://cdn.example/img/logo@2x.png"),
        ("http://host:8080/@alice/a.jpg", "http://host:8080/@alice/a.jpg"),
        ("http://[::1]:80/a@b", "http://[::1]:80/a@b"),
        ("http://host/a?mail=a@b.example", "http://host/a?mail=a@b.example"),
        # query tokens and signatures, any case, percent-encoded names too
        ("http://h/a.jpg?token=abc&w=100", "http://h/a.jpg?token=***&w=100"),
        ("http://h/a.jpg?w=1&ACCESS_TOKEN=abc", "http://h/a.jpg?w=1&ACCESS_TOKEN=***"),
        (
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE/20260101/us-east-1/s3/aws4_request"
            "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FQoG&X-Amz-Signature=0123abcd",
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=***"
            "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=***&X-Amz-Signature=***",
        ),
        (
            "https://storage.googleapis.com/b/o.png?X-Goog-Credential=sa%40p.iam"
            "&X-Goog-Signature=9f&X-Goog-Expires=60",
            "https://storage.googleapis.com/b/o.png?X-Goog-Credential=***"
            "&X-Goog-Signature=***&X-Goog-Expires=60",
        ),
        (
            "https://a.blob.core.windows.net/c/p.jpg?sv=2024&se=2026&sp=r&sig=AbC%2Bd%3D",
            "https://a.blob.core.windows.net/c/p.jpg?sv=2024&se=2026&sp=r&sig=***",
        ),
        (
            "http://h/p.jpg?Expires=1&Signature=x~y&Key-Pair-Id=K",
            "http://h/p.jpg?Expires=1&Signature=***&Key-Pair-Id=K",
        ),
        (
            "http://h/p?key=AIza&api_key=1&apiKey=2&x-api-key=3",
            "http://h/p?key=***&api_key=***&apiKey=***&x-api-key=***",
        ),
        (
            "http://h/p?password=1;pwd=2;client_secret=3",
            "http://h/p?password=***;pwd=***;client_secret=***",
        ),
        ("http://h/p?X%2DAmz%2DSignature=1", "http://h/p?X%2DAmz%2DSignature=***"),
        ("http://h/p?token=&sig", "http://h/p?token=&sig"),
        ("http://h/p.jpg;jsessionid=ABC?w=1", "http://h/p.jpg;jsessionid=***?w=1"),
        ("http://h/cb#access_token=abc&state=s", "http://h/cb#access_token=***&state=s"),
        ("http://h/p?monkey=1&keys=2&sortkey=3", "http://h/p?monkey=1&keys=2&sortkey=3"),
        # both at once, and a line longer than a URL may be
        ("http://u:p@h/a?token=t#sig=s", "http://***@h/a?token=***#sig=***"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_hides_every_secret_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown  # what is shown has nothing left to hide


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("mongodb://localhost:27017", "mongodb://localhost:27017"),
        (
            "mongodb://itm-job:s3cret@mongo:27017/?authSource=admin",
            "mongodb://***@mongo:27017/?authSource=admin",
        ),
        (
            "mongodb+srv://u:p%40ss@cluster0.example.net/db?retryWrites=true",
            "mongodb+srv://***@cluster0.example.net/db?retryWrites=true",
        ),
        (
            "mongodb://u:p@h1:27017,h2:27018/db?tls=true&tlsCertificateKeyFile=/c.pem"
            "&tlsCertificateKeyFilePassword=k3y",
            "mongodb://***@h1:27017,h2:27018/db?tls=true&tlsCertificateKeyFile=/c.pem"
            "&tlsCertificateKeyFilePassword=***",
        ),
        (
            "mongodb://AKIA:s3cret@h/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:FQoG",
            "mongodb://***@h/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***",
        ),
        (
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3AFQoG",
            "mongodb://h/?authMechanismProperties=***",
        ),
        (
            "mongodb://h/?authMechanismProperties=ENVIRONMENT:azure,TOKEN_RESOURCE:api",
            "mongodb://h/?authMechanismProperties=ENVIRONMENT:azure,TOKEN_RESOURCE:api",
        ),
        (
            "mongodb://h/?sslClientCertificateKeyPassword=k",
            "mongodb://h/?sslClientCertificateKeyPassword=***",
        ),
    ],
)
def test_redact_hides_the_secrets_of_a_mongodb_uri(uri: str, shown: str) -> None:
    assert redact(uri) == shown


def test_userinfo_is_told_from_an_at_sign_in_a_path() -> None:
    assert has_userinfo("http://user:pa/ss@host/") and has_userinfo("http:user:pw@host")
    assert not has_userinfo("https://cdn.example/logo@2x.png")
    assert not has_userinfo("http://host:8080/a@b") and not has_userinfo("not a url user")


def test_secret_names_are_matched_whole_or_by_their_ending() -> None:
    for name in ("token", "Refresh_Token", "X-Amz-Signature", "AWS_SESSION_TOKEN", "sig", "key"):
        assert is_secret_name(name), name
    for name in ("w", "keys", "monkey", "signed", "Key-Pair-Id", "X-Amz-Date", "tokens"):
        assert not is_secret_name(name), name
