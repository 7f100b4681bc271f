"""The input fingerprint: a pure function of a file's ends and size."""

from __future__ import annotations

from pathlib import Path

from itm.job.fingerprint import MIB, fingerprint


def test_the_fingerprint_sees_a_change_at_either_end_or_in_size(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    body = b"http://example.test/a\n" * (MIB // 10)  # over two MiB
    path.write_bytes(body)
    original = fingerprint(path)
    assert original == fingerprint(path)
    assert original["size"] == len(body)
    for changed in (b"X" + body[1:], body[:-2] + b"X\n", body + b"more\n"):
        path.write_bytes(changed)
        assert fingerprint(path) != original
