"""rsync_argv is pure: each flag that protects the user's files is pinned here."""

import shlex

from launcher.sync import ALWAYS_EXCLUDED, IGNORE_FILES, rsync_argv


def test_delete_only_when_asked():
    assert "--delete" not in rsync_argv("a/", "b/")
    assert "--delete" in rsync_argv("a/", "b/", delete=True)


def test_remote_shell_is_one_quoted_argument_with_the_command_channel_options():
    rsh = ["ssh", "-o", "StrictHostKeyChecking=yes", "-i", "/tmp/my key", "-p", "2222"]
    argv = rsync_argv("a/", "h:b/", rsh=rsh)
    value = argv[argv.index("--rsh") + 1]
    assert shlex.split(value) == rsh


def test_ignore_files_and_excludes_come_before_the_paths():
    argv = rsync_argv("src/", "dst/", excludes=ALWAYS_EXCLUDED, ignore_files=IGNORE_FILES)
    assert argv[-2:] == ["src/", "dst/"]
    assert "--filter=:- .gitignore" in argv and "--filter=:- .gpurunignore" in argv
    assert "--exclude=/runs/" in argv  # results pulled into the task dir never travel back


def test_partial_transfers_are_kept_and_symlinks_not_followed():
    argv = rsync_argv("a/", "b/")
    assert "--partial" in argv and "--links" in argv
    assert "--copy-links" not in argv and "-L" not in argv
