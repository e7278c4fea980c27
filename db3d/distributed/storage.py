"""Where a sweep's results go: a local path or a pyarrow.fs URI (s3://, gs://, ...).

    out=/shared/sweeps/demo                    everything under that folder (a shared file system
                                               on a cluster)
    out=s3://bucket/db3d/demo                  Parquet rows, each trial's exports and the stage
                                               artifacts go to the bucket (artifacts=URI moves the
                                               latter; artifact_store.py: a Ray actor's locks, no
                                               shared file system needed); trials and Tune's state
                                               stay in the work folder (work=..., the same path on
                                               every node)
    out=s3://bucket/x?endpoint_override=http://127.0.0.1:9000&scheme=http   an S3-compatible server

Object stores write whole objects, so rows written there need no temp-name-and-rename.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(out: str) -> bool:
    return "://" in str(out) and not str(out).startswith("file://")


def split(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI, query options (endpoint_override, scheme...) included."""
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    """URI + path parts, keeping the query string (the connection options) at the end."""
    base, _, query = uri.partition("?")
    path = "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return f"{path}?{query}" if query else path


def work_dir(out: str, name: str) -> Path:
    """The local working folder of a sweep whose results go to a URI."""
    digest = hashlib.sha256(out.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "db3d" / "sweeps" / f"{name}-{digest}"


def write_table_uri(rows: list[dict], uri: str) -> str:
    fs, path = split(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(pa.Table.from_pylist(rows), path, filesystem=fs)
    return uri


def upload_dir(local: Path, uri: str) -> dict[str, str]:
    """Copy a local folder's files to the URI; {relative name: object URI}."""
    fs, root = split(uri)
    fs.create_dir(root, recursive=True)
    out = {}
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        rel = file.relative_to(local).as_posix()
        with fs.open_output_stream(f"{root}/{rel}") as stream:
            stream.write(file.read_bytes())
        out[rel] = join(uri, rel)
    return out
