"""Mosquitto's password-file format, written in-process: the same `$7$` line mosquitto_passwd writes."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from flctl.provision import hash_password, render_passwd

# The format (docs/security.md): 12-byte salt, 64-byte PBKDF2-SHA512 hash; we write 1000 iterations.
SALT_BYTES, HASH_BYTES, ITERATIONS = 12, 64, 1000


@pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (package mosquitto) is not installed"
)
def test_our_hash_is_mosquitto_passwds_for_its_salt_and_iterations(tmp_path: Path) -> None:
    """mosquitto_passwd's own line, re-hashed with its salt and iteration count, comes out identical."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge1", "s3cret"], check=True, capture_output=True)
    user, theirs = passwd.read_text().strip().split(":", 1)
    _, seven, iterations, salt, _digest = theirs.split("$")
    assert (user, seven) == ("edge1", "7")
    ours = hash_password("s3cret", iterations=int(iterations), salt=base64.b64decode(salt))
    assert ours == theirs


def test_lines_have_the_documented_shape() -> None:
    text = render_passwd({"edge1": "pw-one", "admin": "pw-two"})
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["edge1", "admin"] and text.endswith("\n")
    for line in lines:
        _, seven, iterations, salt, digest = line.split(":", 1)[1].split("$")
        assert seven == "7" and int(iterations) == ITERATIONS
        assert len(base64.b64decode(salt, validate=True)) == SALT_BYTES
        assert len(base64.b64decode(digest, validate=True)) == HASH_BYTES
    assert "pw-one" not in text and "pw-two" not in text
    # a fresh salt every time: the same password never gives the same line
    assert render_passwd({"a": "same"}) != render_passwd({"a": "same"})


@pytest.mark.parametrize("user", ["", "a:b", "a\nb"])
def test_names_the_file_cannot_hold_are_refused(user: str) -> None:
    with pytest.raises(ValueError):
        render_passwd({user: "pw"})


def test_bad_salt_or_iterations_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("pw", salt=b"short")
    with pytest.raises(ValueError):
        hash_password("pw", iterations=0)
