# Test if concurrent test suites on one machine get different ROS domains (conftest's claims).
import subprocess
import sys
from pathlib import Path

from conftest import DOMAINS, claim_domain


def test_a_claimed_domain_is_skipped_until_released():
    first, first_lock = claim_domain(DOMAINS[4])
    second, second_lock = claim_domain(first)
    try:
        assert second != first and second in DOMAINS
    finally:
        second_lock.close()
    first_lock.close()
    again, again_lock = claim_domain(first)
    again_lock.close()
    assert again == first


def test_another_process_cannot_claim_a_domain_this_one_holds():
    domain, lock = claim_domain(DOMAINS[7])
    try:
        code = ('from conftest import claim_domain; '
                f'print(claim_domain({domain})[0])')
        other = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=60, check=True)
        assert int(other.stdout) != domain
    finally:
        lock.close()


def test_the_test_environment_holds_its_domain(ros_env):
    domain = int(ros_env['ROS_DOMAIN_ID'])
    other, other_lock = claim_domain(domain)
    other_lock.close()
    assert other != domain


def test_without_usable_lock_files_the_start_domain_runs_unlocked(tmp_path, monkeypatch):
    import conftest
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    monkeypatch.setattr(conftest, '_DOMAIN_LOCKS', blocker / 'locks')  # cannot be created
    assert claim_domain(DOMAINS[3]) == (DOMAINS[3], None)
    locks = tmp_path / 'locks'
    for domain in DOMAINS:  # a directory where each lock file would be: none can be opened
        (locks / f'{domain}.lock').mkdir(parents=True)
    monkeypatch.setattr(conftest, '_DOMAIN_LOCKS', locks)
    assert claim_domain(DOMAINS[5]) == (DOMAINS[5], None)
