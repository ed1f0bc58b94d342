"""synrank.storage: every operation gives the same result on a local path and on a real S3 server
(moto on 127.0.0.1, reached through s3fs with AWS_ENDPOINT_URL), and writes are atomic."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from synrank import storage


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """A fresh, empty root: a local directory or an S3 prefix."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_server").fresh_url("storage")


def _table() -> pa.Table:
    return pa.table({"id": pa.array(["a", "b", "c"]), "x": pa.array([1, 2, 3], pa.int32())})


def test_join_stays_in_its_kind(base):
    url = storage.join(base, "a", "b.json")
    assert url == base + "/a/b.json"
    assert storage.is_local(url) == ("://" not in base)
    assert storage.join("s3://b/x/", "y/", "/z") == "s3://b/x/y/z"
    assert storage.join("file:///tmp/x", "y") == "/tmp/x/y"
    assert storage.join("memory://m", "y") == "memory://m/y"
    assert storage.name("s3://b/x/model/") == "model" and storage.parent("s3://b/x/model") == "s3://b/x"
    assert storage.absolute("s3://b/x/") == "s3://b/x"


def test_write_read_exists_listdir_remove(base):
    assert not storage.exists(base) and storage.listdir(base) == []
    storage.write_bytes(b"\x00\x01", storage.join(base, "b.bin"))
    storage.write_text("héllo\n", storage.join(base, "t.txt"))
    storage.write_json({"k": [1, 2]}, storage.join(base, "sub", "j.json"))
    storage.write_parquet(_table(), storage.join(base, "parts", "part-0.parquet"))
    storage.write_parquet(_table().slice(0, 1), storage.join(base, "parts", "part-1.parquet"))
    storage.write_json({"skipped": True}, storage.join(base, "parts", "_meta.json"))

    assert storage.read_bytes(storage.join(base, "b.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(base, "t.txt")) == "héllo\n"
    assert storage.read_json(storage.join(base, "sub", "j.json")) == {"k": [1, 2]}
    assert storage.read_parquet(storage.join(base, "parts", "part-0.parquet")).equals(_table())
    assert storage.read_parquet(storage.join(base, "parts", "part-0.parquet"), columns=["x"]).column_names == ["x"]
    folder = storage.read_parquet(storage.join(base, "parts"))
    assert sorted(folder.column("id").to_pylist()) == ["a", "a", "b", "c"]
    with storage.open(storage.join(base, "t.txt"), "r", encoding="utf-8") as handle:
        assert handle.read() == "héllo\n"

    assert storage.exists(storage.join(base, "b.bin")) and storage.exists(storage.join(base, "sub"))
    assert storage.isdir(storage.join(base, "sub")) and not storage.isdir(storage.join(base, "b.bin"))
    assert not storage.exists(storage.join(base, "nope"))
    assert storage.listdir(base) == ["b.bin", "parts", "sub", "t.txt"]
    assert storage.listdir(storage.join(base, "parts")) == ["_meta.json", "part-0.parquet", "part-1.parquet"]
    assert storage.listdir(storage.join(base, "nope")) == []

    storage.remove(storage.join(base, "b.bin"))
    storage.remove(storage.join(base, "sub"))
    storage.remove(storage.join(base, "nope"))  # missing is fine
    assert storage.listdir(base) == ["parts", "t.txt"]
    storage.remove(base)
    assert not storage.exists(base) and storage.listdir(base) == []


def test_missing_reads_name_the_url(base):
    for read in (storage.read_bytes, storage.read_text, storage.read_json, storage.read_parquet):
        with pytest.raises(FileNotFoundError, match="nope"):
            read(storage.join(base, "nope"))


@pytest.mark.parametrize("kind", ["bytes", "text", "json", "parquet"])
def test_overwrite_false_refuses_and_keeps_the_original(base, kind):
    write = {"bytes": lambda v, u, **kw: storage.write_bytes(str(v).encode(), u, **kw),
             "text": lambda v, u, **kw: storage.write_text(str(v), u, **kw),
             "json": lambda v, u, **kw: storage.write_json({"v": v}, u, **kw),
             "parquet": lambda v, u, **kw: storage.write_parquet(pa.table({"v": [v]}), u, **kw)}[kind]
    url = storage.join(base, "x", f"f.{kind}")
    write(1, url, overwrite=False)  # a new file: fine
    before = storage.read_bytes(url)
    with pytest.raises(FileExistsError, match=f"f.{kind}"):
        write(2, url, overwrite=False)
    assert storage.read_bytes(url) == before
    assert storage.listdir(storage.join(base, "x")) == [f"f.{kind}"]  # no temporary left behind
    write(3, url)  # overwrite=True replaces
    assert storage.read_bytes(url) != before


def test_a_failed_write_leaves_the_previous_content(base):
    url = storage.join(base, "model", "weights.bin")
    storage.write_bytes(b"old", url)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with storage.atomic_path(url) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert storage.read_bytes(url) == b"old"
    assert storage.listdir(storage.join(base, "model")) == ["weights.bin"]

    class Boom(pa.ArrowException):
        pass

    def bad_batches():
        yield pa.record_batch({"v": [1]})
        raise Boom("writer died")

    new = storage.join(base, "new.parquet")
    with pytest.raises(Boom):
        with storage.atomic_path(new) as tmp:
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, pa.schema({"v": pa.int64()})) as writer:
                for batch in bad_batches():
                    writer.write_batch(batch)
    assert not storage.exists(new)  # no partial object or file
    assert storage.listdir(base) == ["model"]


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_upload_download_round_trip(base, tmp_path):
    src = tmp_path / "src"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "1_Pooling" / "config.json").write_text('{"b": 2}')
    (src / "model.safetensors").write_bytes(os.urandom(4096))
    url = storage.join(base, "model")
    storage.write_text("stale", storage.join(url, "stale.txt"))
    storage.upload_dir(str(src), url)
    assert storage.listdir(url) == ["1_Pooling", "config.json", "model.safetensors"]  # replaced, not merged
    dest = tmp_path / "dest"
    storage.download_dir(url, str(dest))
    assert _tree(str(dest)) == _tree(str(src))


def test_local_copy_downloads_once(base, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNRANK_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"hidden_size": 8}')
    (src / "sub" / "w.bin").write_bytes(os.urandom(1000))
    url = storage.join(base, "model")
    storage.upload_dir(str(src), url)

    calls = []
    real = storage.download_dir
    monkeypatch.setattr(storage, "download_dir", lambda u, d: (calls.append(u), real(u, d)))
    first = storage.local_copy(url)
    second = storage.local_copy(url)
    assert first == second and os.path.isdir(first)
    assert _tree(first) == _tree(str(src))
    if storage.is_local(url):
        assert first == url and calls == []  # a local URL is used in place
    else:
        assert first.startswith(str(tmp_path / "cache" / "storage")) and calls == [url]
        # New content under the same URL: a new copy, not the stale one.
        storage.write_text('{"hidden_size": 16}', storage.join(url, "config.json"))
        third = storage.local_copy(url)
        assert third != first and open(os.path.join(third, "config.json")).read() == '{"hidden_size": 16}'
        assert len(calls) == 2
        with pytest.raises(FileNotFoundError, match="nope"):
            storage.local_copy(storage.join(base, "nope"))


def test_local_copy_concurrent_processes_download_once(s3_server, tmp_path):
    """Two processes on one node ask for the same model at once: one downloads, both get it."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(20_000))
    url = storage.join(s3_server.fresh_url("concurrent"), "model")
    storage.upload_dir(str(src), url)
    code = ("import sys; from synrank import storage; calls = []; real = storage.download_dir; "
            "storage.download_dir = lambda u, d: (calls.append(u), real(u, d)); "
            "print(storage.local_copy(sys.argv[1]), len(calls))")
    env = dict(os.environ, SYNRANK_CACHE=str(tmp_path / "cache"), **s3_server.env)
    procs = [subprocess.Popen([sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]
    assert sorted(int(o[1]) for o in outs) == [0, 1]
    assert _tree(outs[0][0]) == _tree(str(src))


def test_pyarrow_filesystem_reaches_the_same_objects(base):
    url = storage.join(base, "t", "x.parquet")
    storage.write_parquet(_table(), url)
    fs, path = storage.pyarrow_filesystem(url)
    import pyarrow.parquet as pq

    assert pq.read_table(path, filesystem=fs).equals(_table())
    if not storage.is_local(url):
        import pickle

        fs2 = pickle.loads(pickle.dumps(fs))  # Ray ships it to Train workers
        assert pq.read_table(path, filesystem=fs2).equals(_table())


def test_s3_filesystem_has_no_listings_cache(s3_server):
    """Another process's writes are seen at once."""
    import boto3

    url = s3_server.fresh_url("cache")
    storage.write_text("a", storage.join(url, "a.txt"))
    assert storage.listdir(url) == ["a.txt"]
    boto3.client("s3").put_object(Bucket=s3_server.bucket, Key=url.split("/", 3)[3] + "/b.txt", Body=b"b")
    assert storage.listdir(url) == ["a.txt", "b.txt"]
    assert storage.exists(storage.join(url, "b.txt"))


def test_run_dir_keeps_urls(s3_server, tmp_path):
    from synrank.pipeline import RunDir

    url = s3_server.fresh_url("run")
    run = RunDir(url + "/")
    assert run.root == url
    assert run.path("queries", "train.parquet") == f"{url}/queries/train.parquet"
    assert run.marker("generate") is None
    run.mark("generate", "fp1", {"train": run.path("generate", "train")})
    assert storage.exists(f"{url}/generate/_stage.json")
    assert run.done("generate", "fp1")["outputs"] == {"train": f"{url}/generate/train"}
    assert run.done("generate", "fp2") is None
    assert not any("s3:" in p for p in os.listdir(".")), "a URL was turned into a local path"

    local = RunDir(str(tmp_path / "x" / ".." / "run"))
    assert local.root == str((tmp_path / "run").resolve())
    assert local.path("a") == os.path.join(local.root, "a")
