"""The same run on every executor: serial, the local process pool and a local Ray (2 CPUs).

Every executor runs the same units single-threaded, so the results tables are identical (up to
the timing columns); a run interrupted mid-way on Ray resumes to the same table.
"""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from saelab.config import RunConfig
from saelab.pipeline.run import run_pipeline
from saelab.pipeline.store import ResultStore
from tiny_models import build_tiny_model, write_word_dataset

TIMING = ["seconds", "unit_seconds", "config_hash", "unit_config", "run"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    model = build_tiny_model(root / "gpt2", "gpt2")
    write_word_dataset(root / "first.csv", 260, seed=11)
    write_word_dataset(root / "second.csv", 240, seed=12)
    return root, model


def _config(root, model, executor: str, **extra) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "exec",
            "cache_dir": str(root / "cache"),
            "model": {"name": str(model), "batch_size": 32},
            "layers": [1],
            "settings": ["normal", "scarcity", "label_noise"],
            "data": {
                "datasets": [str(root / "first.csv"), str(root / "second.csv")],
                "max_train": 96,
            },
            "saes": [
                {
                    "id": "sae",
                    "train": {"expansion_factor": 2, "k": 4, "epochs": 1, "batch_size": 256},
                }
            ],
            "probes": {
                "baselines": ["logreg", "knn", "pca"],
                "ks": [2, 8],
                "regime_ks": [8],
                "sae_variants": [{"penalty": "l1"}, {"penalty": "l2"}],
            },
            "regimes": {
                "scarcity": {"values": [3, 10, 40]},
                "label_noise": {"values": [0.0, 0.2], "baselines": ["logreg"]},
            },
            "executor": executor,
            **extra,
        }
    )


def _table(outcome) -> pd.DataFrame:
    keys = ["dataset", "setting", "setting_value", "layer", "method", "sae", "variant", "k"]
    frame = outcome.results.drop(columns=TIMING).sort_values(keys, na_position="first")
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def serial(setup, tmp_path_factory):
    root, model = setup
    out = run_pipeline(_config(root, model, "serial"), tmp_path_factory.mktemp("s") / "run", False)
    assert out.n_units == 2 * (5 + 4 + 2)  # per dataset: normal, scarcity, label noise units
    return out


def test_local_process_pool_gives_the_serial_table(setup, serial, tmp_path):
    root, model = setup
    pooled = run_pipeline(_config(root, model, "local", workers=2), tmp_path / "run", False)
    pd.testing.assert_frame_equal(_table(pooled), _table(serial))
    # the units really ran in other processes
    meta = pd.read_json(tmp_path / "run" / "run.json", typ="series")
    assert meta["executor"] == {"kind": "local", "workers": 2, "device": "cpu"}


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_gives_the_serial_table_and_resumes_after_an_interruption(
    setup, serial, tmp_path, monkeypatch
):
    import ray

    root, model = setup
    cfg = _config(root, model, "ray", ray={"num_cpus": 2})
    real_put = ResultStore.put
    calls = {"n": 0}

    def interrupted_put(self, key, rows, skipped=()):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C while Ray tasks are in flight
        return real_put(self, key, rows, skipped)

    monkeypatch.setattr(ResultStore, "put", interrupted_put)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert not ray.is_initialized()  # the local Ray this run started was shut down
    assert len(list((tmp_path / "run" / "units").glob("*.parquet"))) == 4
    monkeypatch.setattr(ResultStore, "put", real_put)
    resumed = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert resumed.n_units_done_before == 4
    pd.testing.assert_frame_equal(_table(resumed), _table(serial))
    assert not ray.is_initialized()


def test_local_workers_exit_when_the_run_is_killed(tmp_path):
    """A SIGKILLed run cannot close its pool; its spawned workers must not fit units for nobody."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from saelab.pipeline.executors import ProcessExecutor\n"
        "if __name__ == '__main__':\n"
        "    ex = ProcessExecutor(workers=2)\n"
        "    pool = ex._start()\n"
        "    for f in [pool.submit(time.sleep, 1) for _ in range(2)]:\n"
        "        f.result()\n"
        "    print(*[p.pid for p in pool._processes.values()], flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 15
        alive = workers
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [p for p in workers if _running(p)]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        proc.kill()


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; it only waits to be reaped by init.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False
