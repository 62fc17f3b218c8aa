# SIGKILL the trainer's storage writer (replay buffer, policy files, training state) at random
# moments and restart it: nothing committed is lost, no stale temp file survives a restart and
# no policy name ever holds two different contents. bench/storage_kills.py runs 100 kills.
import pytest
from storage_torture import run_kills, temp_files


@pytest.mark.slow
def test_killed_writers_lose_nothing_and_leave_no_temp_files_after_restart(tmp_path):
    figures = run_kills(tmp_path / 'run', kills=12, seed=3, capacity=6000)
    assert figures['kills'] == 12
    assert figures['committed_reported'] > 100
    assert figures['lost'] == 0, figures
    assert figures['stale_after_restart'] == 0, figures
    assert figures['name_collisions'] == 0, figures
    # The torture did what it is for: some kills left temp files behind, and resumed
    # writers reached names an earlier run had written (and kept them).
    assert figures['kills_leaving_temps'] >= 1, figures
    assert figures['rewrites_refused'] >= 1, figures
    assert temp_files(tmp_path / 'run') == []
