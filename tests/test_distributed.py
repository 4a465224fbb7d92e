"""Two-process DDP through torchrun on CPU (gloo)."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from timeouts import run_group

from mlic.evaluation.evaluate import evaluate_checkpoint
from mlic.evaluation.scoring import BatchOptions

DRIVER = """
import os, sys
from safetensors.torch import save_file
import mlic

train, val, out, dump = sys.argv[1:5]
# calibration none: metrics.csv's F1 at 0.5 is the raw model's, and the test compares it with evaluate's
result = mlic.train(train, val=val, image_size=32, epochs=2, batch_size=8, output_dir=out, name="ddp",
                    device="cpu", progress=False, report=False, num_workers=0, precision="fp32", calibration="none")
rank = int(os.environ["RANK"])
save_file({k: v.contiguous() for k, v in result.last_model.state_dict().items()}, f"{dump}/rank{rank}.safetensors")
"""


@pytest.fixture(scope="module")
def ddp_run(tiny_shapes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # 23 validation images: not divisible by 2 ranks, so the sampler pads and the gather must drop the duplicate
    rows = list(csv.reader(tiny_shapes["val"].read_text().splitlines()))
    val = tiny_shapes["val"].parent / "val23.csv"
    with open(val, "w", newline="") as f:
        csv.writer(f).writerows(rows[:24])
    (tmp / "driver.py").write_text(textwrap.dedent(DRIVER))
    (tmp / "dump").mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(tmp / "driver.py"),
        str(tiny_shapes["train"]),
        str(val),
        str(tmp / "runs"),
        str(tmp / "dump"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores: one thread each
    proc = run_group(cmd, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, val, proc


def test_ddp_completes_with_equal_parameters_on_every_rank(ddp_run):
    tmp, _, _ = ddp_run
    r0, r1 = load_file(tmp / "dump" / "rank0.safetensors"), load_file(tmp / "dump" / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key


def test_only_rank_zero_writes_and_logs(ddp_run):
    tmp, _, proc = ddp_run
    run = tmp / "runs" / "ddp"
    names = {p.name for p in run.iterdir()}
    required = {"checkpoints", "config.yaml", "history.png", "metrics.csv"}
    assert required <= names <= required | {"predictions"}, names
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]
    assert proc.stdout.count("run folder:") + proc.stderr.count("run folder:") == 1
    assert (proc.stdout + proc.stderr).count("epoch 2/2") == 1
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_distributed_metrics_equal_single_process(ddp_run):
    tmp, val, _ = ddp_run
    run = tmp / "runs" / "ddp"
    last = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))[-1]
    report = evaluate_checkpoint(
        run / "checkpoints" / "last", val, batch=BatchOptions(device="cpu", num_workers=0, progress=False)
    )
    assert report["num_images"] == 23
    assert float(last["val_mAP"]) == pytest.approx(report["mAP"], abs=1e-9)
    assert float(last["val_f1_micro"]) == pytest.approx(report["at_threshold_0.5"]["f1_micro"], abs=1e-9)
    assert float(last["val_exact_match"]) == pytest.approx(report["at_threshold_0.5"]["exact_match"], abs=1e-9)


def test_torchrun_predict_shards_and_merges_in_order(ddp_run, tiny_shapes, tmp_path):
    tmp, _, _ = ddp_run
    ckpt = tmp / "runs" / "ddp" / "checkpoints" / "best"
    images = tiny_shapes["test"].parent / "images" / "test"
    (tmp_path / "broken.png").write_text("not an image")  # errors keep their place in the merged order too
    inputs = [str(images), str(tmp_path / "broken.png")]
    predict = ["-m", "mlic", "predict", str(ckpt), *inputs, "--to", "csv", "--device", "cpu", "--output"]
    single, merged = tmp_path / "single.csv", tmp_path / "merged.csv"
    assert subprocess.run([sys.executable, *predict, str(single)], capture_output=True).returncode == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*torchrun, *predict, str(merged)]
    proc = run_group(cmd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert merged.read_text() == single.read_text()
    assert len(merged.read_text().splitlines()) == 1 + 24 + 1
    assert not list(tmp_path.glob("merged.csv.part*"))
