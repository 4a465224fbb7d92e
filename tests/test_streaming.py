"""Shards: written by ``mlic data shard``, read by WebDataset, streamed by ``mlic train`` from disk, pipe: and S3.

The epoch plan is checked exhaustively in-process (every sample once, every rank the same number of steps),
then under torchrun with 2 ranks x 2 workers as training runs it; resume skips exactly what was trained on;
and a run from one unshuffled shard equals the run from the label file it was made from, metric for metric.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from timeouts import run_group
from torch.utils.data import DataLoader

from mlic.data.loader import build_stream_loader
from mlic.data.records import DataError
from mlic.data.shards import ShardOptions, write_shards
from mlic.data.sources import load_records
from mlic.data.streaming import (
    ShardSet,
    ShardStream,
    delivery_order,
    expand_braces,
    is_stream_spec,
    rank_batches,
    worker_blocks,
)
from mlic.data.transforms import Preprocessing, build_eval_pipeline, build_train_pipeline
from mlic.runtime.distributed import DistInfo

MLIC = [sys.executable, "-m", "mlic"]
PIPELINE = build_train_pipeline(Preprocessing(image_size=32), "light")


def mlic(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MLIC, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def shards(tiny_shapes, tmp_path_factory) -> dict[str, Path]:
    """tiny_shapes' 64 training images in 10 shards of 7 (the last of 1), its 24 validation images in one."""
    root = tmp_path_factory.mktemp("shards")
    write_shards(load_records(tiny_shapes["train"]), root / "train", ShardOptions(samples_per_shard=7), progress=False)
    write_shards(load_records(tiny_shapes["val"]), root / "val", ShardOptions(shuffle=False), progress=False)
    return {"train": root / "train", "val": root / "val", "pattern": root / "train" / "shard-{000000..000009}.tar"}


# ---- naming shards -------------------------------------------------------------------------------------------


def test_brace_patterns_expand_as_webdataset_does() -> None:
    assert expand_braces("a/shard-{000..002}.tar") == ["a/shard-000.tar", "a/shard-001.tar", "a/shard-002.tar"]
    assert expand_braces("{x,y}-{1..2}.tar") == ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar"]
    assert expand_braces("s3://b/one.tar") == ["s3://b/one.tar"]
    with pytest.raises(DataError, match="runs backwards"):
        expand_braces("shard-{5..1}.tar")


def test_what_counts_as_shards(shards, tiny_shapes) -> None:
    assert is_stream_spec(str(shards["pattern"])) and is_stream_spec(str(shards["train"]))
    assert is_stream_spec("s3://bucket/x-{0..3}.tar") and is_stream_spec("pipe:cat a.tar")
    assert not is_stream_spec(str(tiny_shapes["train"])) and not is_stream_spec(str(tiny_shapes["train"].parent))


# ---- the epoch plan ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 4, 32])
def test_rank_batches_cover_every_sample_once_with_equal_steps(world: int, batch: int) -> None:
    for total in range(world, 3 * world * batch + 2 * world + 2):
        plans = rank_batches(total, world, batch)
        assert len({len(p) for p in plans}) == 1, (total, world, batch)  # DDP: the same number of steps
        covered = [i for plan in plans for a, b in plan for i in range(a, b)]
        assert covered == list(range(total))  # contiguous per rank, each sample once
        assert all(1 <= b - a <= batch + 1 for plan in plans for a, b in plan)


def test_fewer_samples_than_ranks_is_an_error() -> None:
    with pytest.raises(DataError, match="3 samples cannot be shared by 4 ranks"):
        rank_batches(3, 4, 8)


def test_delivery_order_is_the_dataloaders_round_robin() -> None:
    blocks = worker_blocks(7, 3)
    assert [list(b) for b in blocks] == [[0, 1, 2], [3, 4], [5, 6]]
    assert delivery_order(blocks) == [0, 3, 5, 1, 4, 6, 2]


def _epoch(shard_set: ShardSet, *, world: int, workers: int, epoch: int, start: int = 0, batch: int = 5) -> list:
    """Per rank, the index lists of its batches in the order a DataLoader hands them out."""
    out = []
    for rank in range(world):
        stream = ShardStream(shard_set, shard_set.table.class_names, PIPELINE, batch_size=batch, seed=3,
                             info=DistInfo(rank, rank, world))  # fmt: skip
        stream.set_position(epoch, start)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=lambda b: b)
        out.append([b.indices.tolist() for b in loader])
    return out


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 2)])
def test_each_epoch_sees_every_sample_once_in_a_new_order(shards, world: int, workers: int) -> None:
    shard_set = ShardSet.open(str(shards["pattern"]))
    orders = []
    for epoch in (1, 2):
        ranks = _epoch(shard_set, world=world, workers=workers, epoch=epoch)
        seen = [i for batches in ranks for batch in batches for i in batch]
        assert sorted(seen) == list(range(64))
        assert len({len(batches) for batches in ranks}) == 1
        orders.append(seen)
    assert orders[0] != orders[1]


def test_resume_skips_exactly_the_batches_already_trained_on(shards) -> None:
    shard_set = ShardSet.open(str(shards["pattern"]))
    whole = _epoch(shard_set, world=1, workers=0, epoch=2)[0]
    assert _epoch(shard_set, world=1, workers=0, epoch=2, start=4 * 5)[0] == whole[4:]  # one worker: same order
    whole = _epoch(shard_set, world=2, workers=2, epoch=2)
    for rank in range(2):
        rest = _epoch(shard_set, world=2, workers=2, epoch=2, start=3 * 5)[rank]
        assert sorted(map(tuple, whole[rank][:3] + rest)) == sorted(map(tuple, whole[rank]))


def test_a_subset_of_the_shards_streams_only_its_samples(shards) -> None:
    subset = ShardSet.open(str(shards["train"] / "shard-{000002..000004}.tar"))
    assert subset.samples == 21 and len(subset.table) == 21
    seen = [i for batch in _epoch(subset, world=1, workers=0, epoch=1)[0] for i in batch]
    assert sorted(seen) == list(range(21))
    everything = ShardSet.open(str(shards["train"]))
    assert [r.path for r in subset.table] == [r.path for r in everything.table][14:35]


# ---- the files ---------------------------------------------------------------------------------------------


def test_webdataset_reads_the_shards(shards, tiny_shapes) -> None:
    wds = pytest.importorskip("webdataset") if os.environ.get("CI") != "true" else __import__("webdataset")
    urls = [str(p) for p in sorted(shards["val"].glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    records = load_records(tiny_shapes["val"])
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(len(records))]
    for sample, record in zip(samples, records, strict=True):
        assert sample["png"].size == (32, 32)
        assert sorted(sample["json"]["positives"]) == sorted(record.positives)
        assert sample["json"]["negatives"] is None and Path(sample["json"]["path"]) == Path(record.path)


def test_shard_command_is_reproducible_and_refuses_to_overwrite(tiny_shapes, tmp_path: Path) -> None:
    first = mlic("data", "shard", str(tiny_shapes["train"]), str(tmp_path / "a"), "--samples-per-shard", "20",
                 "--no-progress")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "64 samples in 4 shards, 6 classes" in first.stdout and "shard-{000000..000003}.tar" in first.stdout
    again = mlic("data", "shard", str(tiny_shapes["train"]), str(tmp_path / "a"), "--no-progress")
    assert again.returncode == 2 and "already holds a shard set" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    mlic("data", "shard", str(tiny_shapes["train"]), str(tmp_path / "b"), "--samples-per-shard", "20", "--no-progress")
    for name in ("shard-000000.tar", "shard-000003.tar", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [20, 20, 20, 4]
    assert sum(index["counts"]["positives"]) == sum(len(r.positives) for r in load_records(tiny_shapes["train"]))


def test_resized_shards_hold_jpegs_no_larger_than_asked(tiny_shapes, tmp_path: Path) -> None:
    write_shards(load_records(tiny_shapes["val"]), tmp_path, ShardOptions(resize=16), progress=False)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
        from PIL import Image

        image = Image.open(tar.extractfile(names[0]))
        assert names[0].endswith(".jpg") and image.format == "JPEG" and min(image.size) == 16


# ---- training from shards ------------------------------------------------------------------------------------


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if "per_second" not in k and k != "seconds"} for row in rows]


def test_training_from_one_shard_equals_training_from_its_label_file(tiny_shapes, tmp_path: Path) -> None:
    made = mlic("data", "shard", str(tiny_shapes["train"]), str(tmp_path / "one"), "--no-shuffle", "--no-progress")
    assert made.returncode == 0, made.stderr
    common = ["--val", str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "2", "--batch-size", "16",
              "--workers", "0", "--deterministic", "--no-progress", "--no-report",
              "--output-dir", str(tmp_path)]  # fmt: skip
    for name, data in (("files", str(tiny_shapes["train"])), ("shards", str(tmp_path / "one"))):
        done = mlic("train", data, *common, "--name", name)
        assert done.returncode == 0, done.stderr
    files, streamed = _metrics(tmp_path / "files"), _metrics(tmp_path / "shards")
    assert len(files) == 2 and files == streamed


def test_training_from_shards_through_a_pipe_with_validation_shards(shards, tmp_path: Path) -> None:
    spec = f"pipe:cat {shards['train']}/shard-{{000000..000009}}.tar"
    done = mlic("train", spec, "--shard-index", str(shards["train"] / "index.json"), "--val", str(shards["val"]),
                "--image-size", "32", "--epochs", "1", "--workers", "2", "--no-progress", "--no-report",
                "--output-dir", str(tmp_path), "--name", "pipe")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "64 train (streamed from 10 shards), 24 val" in done.stdout
    assert (tmp_path / "pipe" / "predictions" / "val.npz").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{train}/shard-{{000000..000001}}.tar"], "training from shards needs --val"),
        (["{train}/shard-{{000000..000099}}.tar", "--val", "{val}"], "shard-000010.tar: not a shard of"),
        (["{val}/nothing-here.tar", "--val", "{val}"], "not a shard of"),
        (["pipe:cat {train}/shard-000000.tar", "--val", "{val}"], "name their index with --shard-index"),
        (["{train}", "--val", "{val}", "--test", "{val}"], "the test set is read from a label file"),
    ],
)
def test_mistakes_with_shards_are_one_line_errors(shards, tmp_path: Path, args: list[str], message: str) -> None:
    filled = [a.format(train=shards["train"], val=shards["val"]) for a in args]
    done = mlic("train", *filled, "--image-size", "32", "--epochs", "1", "--no-progress", "--output-dir", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_damaged_shard_stops_the_run_naming_it(shards, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in shards["val"].iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    shard = broken / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    done = mlic("train", str(shards["train"]), "--val", str(broken), "--image-size", "32", "--epochs", "1",
                "--workers", "2", "--no-progress", "--output-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and f"{shard}: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# ---- torchrun: 2 ranks x 2 workers ---------------------------------------------------------------------------

DRIVER = """
import json, sys
import mlic
from mlic.data.loader import build_stream_loader
from mlic.data.streaming import ShardSet, ShardStream
from mlic.data.transforms import Preprocessing, build_train_pipeline
from mlic.runtime.distributed import init_distributed, gather_all
import numpy as np, torch, torch.distributed as dist

spec, val, out, runs = sys.argv[1:5]
info, _ = init_distributed(torch.device("cpu"))
shards = ShardSet.open(spec)
stream = ShardStream(shards, shards.table.class_names, build_train_pipeline(Preprocessing(image_size=32), "light"),
                     batch_size=5, seed=3, info=info)
loader = build_stream_loader(stream, num_workers=2, seed=3)
epochs = {}
for epoch in (1, 2):
    stream.set_position(epoch)
    epochs[epoch] = [b.indices.tolist() for b in loader]
gathered = [None] * info.world_size
dist.all_gather_object(gathered, epochs)
if info.rank == 0:
    json.dump(gathered, open(out, "w"))
mlic.train(spec, val=val, image_size=32, epochs=1, batch_size=8, output_dir=runs, name="ddp", device="cpu",
           progress=False, report=False, num_workers=2, precision="fp32")
"""


def test_torchrun_two_ranks_two_workers_see_each_sample_once_per_epoch(shards, tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "driver.py"), str(shards["pattern"]), str(shards["val"]), str(tmp_path / "seen.json"),
           str(tmp_path / "runs")]  # fmt: skip
    # 10 s on 2 idle cores; a hung rank or worker fails the test in 5 minutes and leaves no process behind
    done = run_group(cmd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((tmp_path / "seen.json").read_text())
    for epoch in ("1", "2"):
        per_rank = [r[epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 7  # 64 samples, batch 5, 2 ranks: 7 steps each
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(seen) == list(range(64)), epoch
    assert ranks[0]["1"] != ranks[0]["2"]
    assert (tmp_path / "runs" / "ddp" / "checkpoints" / "best" / "meta.json").is_file()


# ---- S3: a real S3-compatible server on 127.0.0.1 ------------------------------------------------------------


@pytest.fixture
def s3_server():
    """moto's S3 server in this process, on a free local port; the endpoint and dummy credentials for clients."""
    if os.environ.get("CI") == "true":
        from moto.server import ThreadedMotoServer
    else:
        ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer  # noqa: N806
        pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    yield env
    server.stop()


def test_training_streams_from_an_s3_compatible_server(shards, s3_server, tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket="data")
    for split in ("train", "val"):
        for path in shards[split].iterdir():
            client.upload_file(str(path), "data", f"sets/{split}/{path.name}")
    common = ["--image-size", "32", "--epochs", "1", "--workers", "2", "--deterministic", "--no-progress",
              "--no-report", "--output-dir", str(tmp_path)]  # fmt: skip
    remote = mlic("train", "s3://data/sets/train/shard-{000000..000009}.tar", "--val", "s3://data/sets/val/",
                  *common, "--name", "s3", env=s3_server)  # fmt: skip
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = mlic("train", str(shards["pattern"]), "--val", str(shards["val"]), *common, "--name", "local")
    assert local.returncode == 0, local.stderr
    assert _metrics(tmp_path / "s3") == _metrics(tmp_path / "local")
    missing = mlic("train", "s3://data/sets/nothing/shard-000000.tar", "--val", "s3://data/sets/val/", *common,
                   env=s3_server)  # fmt: skip
    assert missing.returncode == 2 and "s3://data/sets/nothing/index.json: no shard index here" in missing.stderr


def test_validation_rows_follow_the_shards_order(shards) -> None:
    pipeline = build_eval_pipeline(Preprocessing(image_size=32))
    stream = ShardStream(ShardSet.open(str(shards["val"])), ["circle"], pipeline, batch_size=8, shuffle=False)
    indices = np.concatenate([b.indices.numpy() for b in build_stream_loader(stream, num_workers=0)])
    assert indices.tolist() == list(range(24))


def test_streamed_training_data_is_never_cached(shards, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = mlic("train", str(shards["train"]), "--val", str(shards["val"]), "--cache", "auto", "--cache-dir",
                str(cache), "--image-size", "32", "--epochs", "1", "--workers", "0", "--no-progress", "--no-report",
                "--output-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cache: none for streamed training data" in done.stdout
    assert not (cache / "decoded").exists() or not any((cache / "decoded").iterdir())
    cached = mlic("data", "cache", str(shards["train"]), "--cache-dir", str(cache))
    assert cached.returncode == 2 and "shards are streamed, never cached" in cached.stderr


def test_sigterm_then_resume_at_a_shard_boundary_ends_with_the_same_weights(tiny_shapes, shards, tmp_path) -> None:
    """64 images in 8 shards of 8, batches of 8: every step is one whole shard. SIGTERM in epoch 2 writes the
    resume point; --resume continues the stream at the next shard; the weights equal an uninterrupted run's."""
    import signal

    import torch
    from safetensors.torch import load_file

    write_shards(load_records(tiny_shapes["train"]), tmp_path / "s8", ShardOptions(samples_per_shard=8),
                 progress=False)  # fmt: skip
    common = [str(tmp_path / "s8"), "--val", str(shards["val"]), "--image-size", "32", "--batch-size", "8",
              "--epochs", "3", "--workers", "0", "--deterministic", "--no-progress", "--no-report", "--device", "cpu",
              "--precision", "fp32", "--output-dir", str(tmp_path)]  # fmt: skip
    assert mlic("train", *common, "--name", "whole").returncode == 0
    run = tmp_path / "stopped"
    proc = subprocess.Popen([*MLIC, "train", *common, "--name", "stopped", "--checkpoint-every", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    meta = run / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            progress = json.loads(meta.read_text())["progress"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            progress = None
        if progress and progress["epoch"] == 1 and progress["step"] >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped_at = json.loads(meta.read_text())["progress"]
    assert stopped_at["epoch"] == 1 and 0 < stopped_at["step"] < 8, stopped_at  # inside epoch 2
    resumed = mlic("train", "--resume", str(run), "--no-progress", "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(tmp_path / "whole") == _metrics(run)
