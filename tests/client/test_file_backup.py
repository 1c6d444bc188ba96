"""The encrypted file backup through `starling-chat files` against a real `starling serve`
(both engines): incremental and deduplicated pushes, a listing, and a second device that
restores the key backup and pulls byte-identical files, while the server's media store holds
no plaintext. Unsafe index paths are refused."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from starling_client.files import FileBackupError, safe_relative
from tests.client.test_cli import chat, ok
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, register

pytestmark = pytest.mark.integration


def make_tree(root: Path) -> dict[str, bytes]:
    blob = os.urandom(200_000)
    files = {
        "a.txt": b"first version of a, quite private\n" * 20,
        "sub/b.bin": blob,
        "sub/dup.bin": blob,
        "sub/deeper/c.md": b"# notes\nnothing to see\n" * 10,
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_push_ls_pull_on_a_new_device(starling_server: RunningServer, tmp_path: Path) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    one, two = tmp_path / "device-1", tmp_path / "device-2"
    await ok(one, "login", "--homeserver", server.url, "alice", "--password", PASSWORD)
    tree = tmp_path / "tree"
    files = await asyncio.to_thread(make_tree, tree)

    out = await ok(one, "files", "push", str(tree))
    assert (
        out.strip()
        == f"3 sent ({len(files['a.txt']) + 200_000 + len(files['sub/deeper/c.md'])} bytes), 1 deduplicated, 0 unchanged"
    )
    out = await ok(one, "files", "push", str(tree))
    assert out.strip() == "0 sent (0 bytes), 0 deduplicated, 4 unchanged"
    files["a.txt"] = b"second version of a\n"
    files["new.txt"] = b"a new file\n"
    await asyncio.to_thread((tree / "a.txt").write_bytes, files["a.txt"])
    await asyncio.to_thread((tree / "new.txt").write_bytes, files["new.txt"])
    out = await ok(one, "files", "push", str(tree))
    assert (
        out.strip()
        == f"2 sent ({len(files['a.txt']) + len(files['new.txt'])} bytes), 0 deduplicated, 3 unchanged"
    )
    listing = [json.loads(x) for x in (await ok(one, "files", "ls", "--json")).splitlines()]
    assert [(e["path"], e["size"]) for e in listing] == sorted(
        (p, len(d)) for p, d in files.items()
    )

    recovery_key = (await ok(one, "backup")).splitlines()[0].removeprefix("recovery key: ")

    # A second device cannot read the index until it restores the key backup.
    await ok(two, "login", "--homeserver", server.url, "alice", "--password", PASSWORD)
    done = await asyncio.to_thread(chat, two, "files", "ls")
    assert done.returncode == 1 and "restore" in done.stderr and done.stderr.count("\n") == 1
    await ok(two, "restore", "--recovery-key", recovery_key)
    out_dir = tmp_path / "restored"
    out = await ok(two, "files", "pull", "--to", str(out_dir))
    assert out.strip() == f"{len(files)} files restored to {out_dir}"
    assert await asyncio.to_thread(read_tree, out_dir) == files
    part = tmp_path / "part"
    await ok(two, "files", "pull", "sub", "--to", str(part))
    assert set(await asyncio.to_thread(read_tree, part)) == {
        "sub/b.bin",
        "sub/dup.bin",
        "sub/deeper/c.md",
    }
    done = await asyncio.to_thread(chat, two, "files", "pull", "nope", "--to", str(part))
    assert done.returncode == 1 and "nothing in the backup" in done.stderr

    # The server's media store has only ciphertext (SQLite: the whole data directory).
    if server.engine == "sqlite":
        stored = b"".join(p.read_bytes() for p in (tmp_path / "server").rglob("*") if p.is_file())
        for data in files.values():
            assert data[:64] not in stored
        assert b"sub/deeper/c.md" not in stored and b"new.txt" not in stored


def test_unsafe_index_paths_are_refused() -> None:
    for bad in ("/etc/passwd", "../x", "a/../../x", "", "a\0b", "..", "a/.."):
        with pytest.raises(FileBackupError):
            safe_relative(bad)
    assert str(safe_relative("a/b/c.txt")) == "a/b/c.txt"


async def test_large_files_go_in_parts_streamed_and_an_interrupted_push_resumes(
    starling_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file larger than the part size is stored as several attachments, each with its own
    key; a push that fails half-way sends only the missing parts the next time; the pull
    checks every part and the whole, and skips files already restored."""
    from starling_client import files as files_mod
    from starling_client.client import Client
    from starling_client.files import FileBackup

    monkeypatch.setattr(files_mod, "PART_SIZE", files_mod.MIN_PART_SIZE)  # 1 MiB parts
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    client = await Client.login(tmp_path / "dev", server.url, "alice", PASSWORD, "pw")
    try:
        tree = tmp_path / "tree"
        tree.mkdir()
        big = os.urandom(3 * (1 << 20) + 12345)  # 4 parts
        await asyncio.to_thread((tree / "big.bin").write_bytes, big)
        await asyncio.to_thread((tree / "small.txt").write_bytes, b"small\n")
        backup = FileBackup(client)

        real_upload = client.api.upload_stream
        calls = 0

        async def failing_upload(*args: object, **kwargs: object) -> str:
            nonlocal calls
            calls += 1
            if calls == 3:
                from starling_client.api import MatrixError

                raise MatrixError(0, "M_CONNECTION", "the network went away")
            return await real_upload(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(client.api, "upload_stream", failing_upload)
        with pytest.raises(Exception, match="network went away"):
            await backup.push(tree)
        monkeypatch.setattr(client.api, "upload_stream", real_upload)
        result = await backup.push(tree)
        assert (result.sent, result.resumed_parts) == (2, 2), result
        assert result.bytes_sent == len(big) - 2 * (1 << 20) + len(b"small\n")

        index = await backup.index()
        parts = index["big.bin"].parts
        assert [p["size"] for p in parts] == [1 << 20] * 3 + [12345]
        assert len({p["file"]["key"]["k"] for p in parts}) == 4  # a key per part
        assert index["small.txt"].file is not None and not index["small.txt"].parts

        out = tmp_path / "out"
        assert await backup.pull(out) == 2
        assert await asyncio.to_thread((out / "big.bin").read_bytes) == big
        assert not [
            p for p in out.iterdir() if p.name.endswith((".starling-part", ".starling-cipher"))
        ]
        # Pulling again skips what is already there, byte-identical.
        seen: list[str] = []
        await backup.pull(out, progress=lambda path, what, n, total: seen.append(what))
        assert seen == ["unchanged", "unchanged"]

        # A part whose ciphertext the server changed is refused; nothing is written.
        entry = index["big.bin"]
        entry.parts[1]["file"]["hashes"]["sha256"] = entry.parts[0]["file"]["hashes"]["sha256"]
        with pytest.raises(FileBackupError, match="SHA-256"):
            await backup._pull_one(entry, tmp_path / "bad" / "big.bin")
        assert not (tmp_path / "bad" / "big.bin").exists()
        assert not list((tmp_path / "bad").iterdir())
    finally:
        await client.close()
