"""Hints that work where the user is: an ssh-config alias's real host and key, a typo'd host, a missing
`python:`, and a `logs -f` against a host that was never reached."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from launcher.errors import EXIT_STOPPED
from launcher.follow import FIRST_CONNECT_TRIES
from launcher.hosts import Host, resolve_host
from launcher.remote import LocalRemote, check_python, ssh_failure
from launcher.runs import History, RunRecord
from launcher.sshconfig import identity_hint, keyscan_hint, parse_ssh_config, resolve_ssh_config
from tests.conftest import gpurun_argv, run_gpurun
from tests.sshd import free_port
from tests.test_lifecycle import kill_sshd_and_sessions, start_long_run, wait_for

# `ssh -G gpubox` (OpenSSH 9.2) for this ~/.ssh/config, trimmed of the lines gpurun does not read:
#   Host gpubox
#     HostName 10.0.0.5
#     Port 2299
#     User bob
#     IdentityFile ~/.ssh/gpubox_ed25519
ALIAS_G = """\
host gpubox
user bob
hostname 10.0.0.5
port 2299
addressfamily any
batchmode yes
identitiesonly no
stricthostkeychecking true
identityfile ~/.ssh/gpubox_ed25519
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
userknownhostsfile /home/me/.ssh/known_hosts /home/me/.ssh/known_hosts2
"""

# `ssh -G plainbox` with no ~/.ssh/config entry at all: ssh lists its default keys, existing or not.
DEFAULTS_G = """\
user me
hostname plainbox
port 22
identityfile ~/.ssh/id_rsa
identityfile ~/.ssh/id_ecdsa
identityfile ~/.ssh/id_ecdsa_sk
identityfile ~/.ssh/id_ed25519
identityfile ~/.ssh/id_ed25519_sk
identityfile ~/.ssh/id_xmss
identityfile ~/.ssh/id_dsa
userknownhostsfile /home/me/.ssh/known_hosts /home/me/.ssh/known_hosts2
"""


@pytest.fixture
def laptop_home(tmp_path, monkeypatch) -> Path:
    """A home of our own for `~` in key paths, with no ssh-agent: the machine's ~/.ssh is never read."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def test_unknown_host_key_hint_for_an_alias_scans_its_real_hostname_and_port():
    config = parse_ssh_config(ALIAS_G)
    assert keyscan_hint(config) == (
        "check its fingerprint, then add it: ssh-keyscan -p 2299 10.0.0.5 >> /home/me/.ssh/known_hosts"
    )


def test_keyscan_hint_leaves_out_port_22_and_goes_through_a_jump_host_under_the_key_alias():
    config = parse_ssh_config("hostname 10.0.0.6\nport 22\nhostkeyalias gpu6\nproxyjump bastion\n")
    assert keyscan_hint(config) == (
        "check its fingerprint, then add it: ssh bastion 'ssh-keyscan 10.0.0.6' | sed 's/^[^ ]*/gpu6/'"
        " >> ~/.ssh/known_hosts"
    )


def test_wrong_key_hint_names_the_aliases_identity_file_and_user(laptop_home):
    (laptop_home / ".ssh" / "gpubox_ed25519").write_text("key")
    hint = identity_hint(parse_ssh_config(ALIAS_G), None, "gpubox")
    assert hint == (
        "ssh logged in to 10.0.0.5:2299 as bob with ~/.ssh/gpubox_ed25519: add the public key (.pub) to "
        "~bob/.ssh/authorized_keys there, or name the right key with IdentityFile in ~/.ssh/config "
        "(or identity: of gpubox in hosts.yaml)"
    )


def test_wrong_key_hint_says_when_ssh_had_no_key_to_offer(laptop_home):
    hint = identity_hint(parse_ssh_config(DEFAULTS_G), None, "plainbox")
    assert "as me with no key at all (~/.ssh/id_*: not found)" in hint, hint
    (laptop_home / ".ssh" / "id_ed25519").write_text("key")
    assert "as me with ~/.ssh/id_ed25519:" in identity_hint(parse_ssh_config(DEFAULTS_G), None, "plainbox")


def test_ssh_dash_G_is_asked_with_the_argv_gpurun_uses(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host gpubox\n  HostName 10.0.0.5\n  Port 2299\n  User bob\n  IdentityFile ~/.ssh/gpubox_key\n")
    known = tmp_path / "known_hosts"
    resolved = resolve_ssh_config(["ssh", "-F", str(config), "-o", f"UserKnownHostsFile={known}"], "gpubox")
    assert (resolved.hostname, resolved.port, resolved.user) == ("10.0.0.5", 2299, "bob")
    assert resolved.identity_files == ["~/.ssh/gpubox_key"]
    assert keyscan_hint(resolved).endswith(f"ssh-keyscan -p 2299 10.0.0.5 >> {known}")


def test_an_unknown_host_key_hint_is_the_command_that_fixes_it(ssh_project, sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    hosts = (ssh_project / "hosts.yaml").read_text().replace(str(sshd.known_hosts), str(empty))
    (ssh_project / "hosts.yaml").write_text(hosts)
    refused = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
    assert refused.returncode == 1
    assert f"Error: the host key of a100 ([127.0.0.1]:{sshd.port}) is not known" in refused.stderr, refused.stderr
    command = f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}"
    assert f"Hint: check its fingerprint, then add it: {command}" in refused.stderr, refused.stderr
    assert empty.read_text() == "", "the unknown key was accepted"

    subprocess.run(command, shell=True, check=True, capture_output=True)  # what the user runs, verbatim
    pushed = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
    assert pushed.returncode == 0, pushed.stderr


def test_a_refused_key_names_the_key_offered_and_the_user(ssh_project, sshd, tmp_path):
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    hosts = (ssh_project / "hosts.yaml").read_text().replace(str(sshd.identity), str(stranger))
    (ssh_project / "hosts.yaml").write_text(hosts)
    result = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a100")
    assert result.returncode == 1
    assert f"Error: a100 refused the login as {sshd.user} (" in result.stderr, result.stderr
    assert (
        f"Hint: ssh logged in to 127.0.0.1:{sshd.port} as {sshd.user} with {stranger}: "
        f"add the public key (.pub) to ~{sshd.user}/.ssh/authorized_keys there, or set identity: of a100"
    ) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_mistyped_host_gets_did_you_mean(ssh_project):
    assert resolve_host(ssh_project, "a10").nearby == ["a100"]
    assert resolve_host(ssh_project, "a100").nearby == []
    result = run_gpurun(ssh_project, "push", "tasks/hr", "--host", "a10")
    assert result.returncode == 1
    assert "Error: cannot resolve a10: " in result.stderr, result.stderr
    assert "Hint: did you mean a100? (a10 is not in hosts.yaml, so ssh was asked for it)" in result.stderr


def test_resolve_failure_without_a_close_name_points_at_the_config():
    failure = ssh_failure(Host(name="zzz", ssh="zzz"), "ssh: Could not resolve hostname zzz: Name or service not known")
    assert failure.hint == "check `ssh:` in hosts.yaml or the HostName in ~/.ssh/config"


def _set_host(project: Path, name: str, **values) -> None:
    hosts = yaml.safe_load((project / "hosts.yaml").read_text())
    hosts["hosts"][name].update(values)
    (project / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))


def test_a_missing_python_is_told_before_the_local_checks_naming_the_path(ssh_project, host_workdir):
    _set_host(ssh_project, "a100", python="/opt/venvs/nope/bin/python")
    # A task the local checks would refuse too: the python's error coming out shows it came first.
    (ssh_project / "tasks" / "hr" / "task.yaml").write_text("base_model: builtin:tiny\nunknown_key: 1\n")
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: on a100: python /opt/venvs/nope/bin/python does not exist"], result.stderr
    assert "Hint: set python: of a100 in hosts.yaml to a Python 3.10+ on a100 (its python3 is /" in result.stderr
    assert not (host_workdir / "tasks").exists(), "the task was pushed"


def test_a_python_that_is_not_executable_is_told_as_such(ssh_project, tmp_path):
    not_python = tmp_path / "not_python"
    not_python.write_text("")
    _set_host(ssh_project, "a100", python=str(not_python))
    result = run_gpurun(ssh_project, "train", "tasks/hr", "--host", "a100")
    assert result.returncode == 1
    assert f"Error: on a100: python {not_python} is not an executable file" in result.stderr, result.stderr


def test_the_python_check_expands_home_and_runs_once_per_host(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "venvs" / "train" / "bin").mkdir(parents=True)
    (home / "venvs" / "train" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("HOME", str(home))
    cache = tmp_path / "cache"
    remote = LocalRemote(Host(name="box", transport="local", python="~/venvs/nope/bin/python", workdir=str(tmp_path)))
    with pytest.raises(Exception, match=r"^on box: python ~/venvs/nope/bin/python does not exist$"):
        check_python(remote, cache)

    remote.host.python = "~/venvs/train/bin/python"
    check_python(remote, cache)
    calls = []
    monkeypatch.setattr(remote, "run", lambda *a, **k: calls.append(a))
    check_python(remote, cache)
    assert calls == [], "a python found once was checked again"


def _record_run_on(project: Path, host_name: str) -> str:
    run_id = "hr-20260101-000000-dead"
    task_dir = str(project / "tasks" / "hr")
    History(project).add(RunRecord(run_id, "hr", task_dir, host_name, "trainer/x", time.time(), state="running"))
    return run_id


@pytest.mark.parametrize(
    "entry, error",
    [
        ({"ssh": "127.0.0.1", "port": "PORT"}, "Error: cannot reach gone: ssh: connect to host 127.0.0.1 port PORT"),
        ({"ssh": "gpurun-no-such-host.invalid"}, "Error: cannot resolve gone: ssh: Could not resolve hostname"),
    ],
    ids=["nothing-listening", "name-does-not-resolve"],
)
def test_logs_follow_gives_up_on_a_host_never_reached(ssh_project, entry, error):
    port = free_port()
    entry = {k: port if v == "PORT" else v for k, v in entry.items()}
    hosts = yaml.safe_load((ssh_project / "hosts.yaml").read_text())
    hosts["hosts"]["gone"] = {**entry, "workdir": "/tmp/gpurun-gone", "python": "python3"}
    (ssh_project / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    run_id = _record_run_on(ssh_project, "gone")
    # Before, this retried forever: the timeout would end the test instead of gpurun.
    result = run_gpurun(ssh_project, "logs", "-f", run_id, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(error.replace("PORT", str(port))), result.stderr
    assert any(line.startswith("Hint: ") for line in result.stderr.splitlines()), result.stderr
    shown = result.stdout + result.stderr
    assert "try 2 of 3" in shown and "try 3 of 3" not in shown, shown
    assert "Traceback" not in shown


def test_logs_follow_reconnects_without_limit_once_it_has_connected(ssh_project, host_workdir, sshd):
    run_id, _ = start_long_run(ssh_project, "--set", "training.logging_steps=1", steps=400)
    follower = subprocess.Popen(
        [*gpurun_argv(), "logs", "-f", run_id],
        cwd=ssh_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("[log] step" in line for line in lines), timeout=300, what="the follower's first step")
        kill_sshd_and_sessions(sshd)
        # More failed reconnections than a never-reached host is allowed: the follower still waits.
        wait_for(lambda: sum("reconnecting" in line for line in lines) > FIRST_CONNECT_TRIES, what="reconnects")
        assert follower.poll() is None, "".join(lines)
    finally:
        if sshd.proc.poll() is not None:
            sshd.start()
    assert run_gpurun(ssh_project, "stop", run_id).returncode == 0
    assert follower.wait(timeout=300) == EXIT_STOPPED, "".join(lines)
    reader.join(timeout=10)
    assert not any(line.startswith("Error:") for line in lines), "".join(lines)
