"""Two "nodes" (two torchrun launches on this machine, one process each, torchrun's static rendezvous on a
free port) train and checkpoint as one run of world size 2; only node 0 prints and writes."""

from __future__ import annotations

import json
import subprocess
import sys

from ebmlab.checkpoint import load_checkpoint
from ebmlab.io import CHECKPOINT, METRICS, read_metrics
from launch import free_port, torchrun_env

TRAIN = ["-m", "ebmlab", "train", "--data", "eight_gaussians", "--steps", "8", "--batch-size", "32",
         "--langevin-steps", "5", "--hidden", "16,16", "--eval-every", "1000", "--log-every", "4", "--out", "run",
         "--json", "--seed", "1"]


def test_two_nodes_train_as_one_run(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for i in range(2):
        cwd = tmp_path / f"node{i}"  # each node its own directory: nothing is shared but the rendezvous
        cwd.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(i), "--rdzv_endpoint", endpoint, *TRAIN]
        nodes.append(subprocess.Popen(cmd, cwd=cwd, env=torchrun_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=120))
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    summary = json.loads(outputs[0][0])
    assert summary["world_size"] == 2 and summary["steps"] == 8
    assert outputs[1][0].strip() == ""  # node 1 prints nothing
    run = tmp_path / "node0" / "run"
    assert not (tmp_path / "node1" / "run").exists()  # nor writes anything
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["world_size"] == 2 and meta["step"] == 8
    assert {"generator.rank0", "generator.rank1"} <= set(tensors) and tensors["buffer.data"].shape == (64, 2)
    assert [r["step"] for r in read_metrics(run / METRICS)] == [4, 8]
