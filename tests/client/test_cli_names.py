"""File names taken from attachment bodies (written by other users) when tail saves them."""

from __future__ import annotations


def test_attachment_names_from_senders_cannot_escape_or_hide() -> None:
    from starling_client.cli import safe_filename

    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("..\\\\..\\\\win.ini") == "win.ini"
    assert safe_filename(".bashrc") == "bashrc"
    assert safe_filename("a\x00b\nc.txt") == "a_b_c.txt"
    assert safe_filename("") == "file" and safe_filename("...") == "file"
    assert len(safe_filename("x" * 500)) == 100
    assert safe_filename("photo 1.png") == "photo 1.png"
