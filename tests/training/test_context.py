"""ElasticContext: reading the launcher's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import inplace
from launcher.training import ElasticContext, LauncherEnvError

FULL = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "ELASTIC_RDZV_GENERATION": "5",
        "ELASTIC_PREVIOUS_WORLD_SIZE": "2", "ELASTIC_BASE_WORLD_SIZE": "8",
        "ELASTIC_LR_SCALING": "sqrt", "ELASTIC_BATCHING": "fixedGlobal",
        "ELASTIC_CHECKPOINT_DIR": "/ckpt", "ELASTIC_CHECKPOINT_INTERVAL": "100",
        "ELASTIC_HEARTBEAT_FILE": "/tmp/hb"}


def test_reads_every_field() -> None:
    ctx = ElasticContext.from_env(FULL)
    assert (ctx.world_size, ctx.rank, ctx.local_rank, ctx.local_world_size) == (4, 3, 1, 2)
    assert (ctx.master_addr, ctx.master_port, ctx.generation) == ("10.0.0.1", 29500, 5)
    assert (ctx.previous_world_size, ctx.base_world_size) == (2, 8)
    assert (ctx.lr_scaling, ctx.batching) == ("sqrt", "fixedGlobal")
    assert (ctx.checkpoint_dir, ctx.checkpoint_interval, ctx.heartbeat_file) == ("/ckpt", 100,
                                                                                 "/tmp/hb")
    assert ctx.is_resize and not ctx.is_main and not ctx.standalone


def test_defaults_for_optional_fields() -> None:
    required = {k: FULL[k] for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                     "MASTER_PORT")}
    ctx = ElasticContext.from_env(required)
    assert ctx.base_world_size == 4 and ctx.generation == 0 and not ctx.is_resize
    assert (ctx.lr_scaling, ctx.batching, ctx.checkpoint_dir) == ("none", "fixedPerWorker", None)


def test_outside_launcher_names_missing_variables_and_how_to_launch() -> None:
    with pytest.raises(LauncherEnvError) as err:
        ElasticContext.from_env({})
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "python -m launcher",
                 "allow_standalone"):
        assert name in str(err.value)


def test_standalone_only_when_asked_and_no_partial_env() -> None:
    ctx = ElasticContext.from_env({"ELASTIC_CHECKPOINT_DIR": "/c"}, allow_standalone=True)
    assert (ctx.world_size, ctx.rank, ctx.standalone, ctx.checkpoint_dir) == (1, 0, True, "/c")
    with pytest.raises(LauncherEnvError, match="MASTER_PORT"):
        ElasticContext.from_env({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                                 "MASTER_ADDR": "h"}, allow_standalone=True)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("WORLD_SIZE", "two", "WORLD_SIZE='two' is not an integer"),
    ("WORLD_SIZE", "0", "WORLD_SIZE=0 must be >= 1"),
    ("RANK", "4", "RANK=4 is not below WORLD_SIZE=4"),
    ("ELASTIC_LR_SCALING", "cubic", "ELASTIC_LR_SCALING='cubic' is not one of linear"),
    ("ELASTIC_BATCHING", "fixed", "ELASTIC_BATCHING='fixed' is not one of"),
])
def test_invalid_values_name_field_and_value(key: str, value: str, message: str) -> None:
    with pytest.raises(LauncherEnvError, match=message):
        ElasticContext.from_env({**FULL, key: value})


def test_tells_the_agent_at_once_that_it_takes_the_restart_path(tmp_path: Path) -> None:
    """The agent then restarts it on a re-formation without waiting for it to finish its
    start-up; the short API (announce=False) says in-place itself."""
    status = tmp_path / "status"
    ElasticContext.from_env({**FULL, inplace.STATUS_FILE: str(status)})
    assert inplace.read_status(status) == inplace.WorkerStatus(inplace=False)
    status.unlink()
    ElasticContext.from_env({**FULL, inplace.STATUS_FILE: str(status)}, announce=False)
    assert not status.exists()
