"""The output root through directory descriptors, and the job process's entry into staging.

Matrix: a staged directory installed at a nested output (parents created), put aside and
restored; install refuses an existing output and a parent that is a symlink (nothing written
through it); a job process enters only the staging directory the node made (a `.jobs` swapped
for a symlink to a look-alike directory is refused, the working directory unchanged) and then
writes relative to it even after the path is swapped; a second tree on the same root is
refused naming node.output_root; discarded directories are deleted once emptying starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from data_node.errors import ConfigError
from data_node.jobs._output_tree import OutputTree
from data_node.jobs._worker import enter_staging


@pytest.fixture
def tree(tmp_path):
    tree = OutputTree(tmp_path / "outputs")
    yield tree
    tree.close()


@pytest.fixture
def restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


def test_install_move_aside_and_restore(tree):
    output = PurePosixPath("a/b/out")
    staging, _ = tree.make_staging("j1")
    (staging / "file").write_text("first")
    tree.install("j1", output)
    assert (tree.root / "a/b/out/file").read_text() == "first"
    staging, _ = tree.make_staging("j2")
    (staging / "file").write_text("second")
    assert tree.move_aside("j2", output)
    tree.install("j2", output)
    assert (tree.root / "a/b/out/file").read_text() == "second"
    tree.restore("j2", output)  # undo both steps
    assert (tree.root / "a/b/out/file").read_text() == "first"
    assert (tree.staging("j2") / "file").read_text() == "second"
    assert not tree.move_aside("j3", PurePosixPath("missing/out"))


def test_install_refuses_an_existing_output_and_a_symlinked_parent(tree, tmp_path):
    tree.make_staging("j")
    (tree.root / "taken").mkdir()
    with pytest.raises(FileExistsError, match="appeared while the job ran"):
        tree.install("j", PurePosixPath("taken"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree.root / "parent").symlink_to(outside)
    with pytest.raises(NotADirectoryError, match="is a symlink or not a directory"):
        tree.install("j", PurePosixPath("parent/out"))
    assert list(outside.iterdir()) == []
    assert tree.has_staging("j")


def test_a_job_process_enters_only_the_staging_the_node_made(tree, tmp_path, restore_cwd):
    staging, identity = tree.make_staging("j")
    lookalike = tmp_path / "outside" / "j"
    lookalike.mkdir(parents=True)
    jobs = tree.root / ".jobs"
    jobs.rename(tree.root / ".jobs-moved")
    jobs.symlink_to(lookalike.parent)
    cwd = os.getcwd()
    with pytest.raises(PermissionError, match=r"^output: Expected the staging directory"):
        enter_staging(str(staging), identity)
    assert os.getcwd() == cwd
    jobs.unlink()
    (tree.root / ".jobs-moved").rename(jobs)
    enter_staging(str(staging), identity)
    jobs.rename(tree.root / ".jobs-moved")  # swapped after the process entered it
    jobs.symlink_to(lookalike.parent)
    Path("patches.h5").write_text("written")  # as a local build writes: relative
    assert (tree.root / ".jobs-moved" / "j" / "patches.h5").read_text() == "written"
    assert list(lookalike.iterdir()) == []


def test_one_tree_per_root(tree):
    with pytest.raises(ConfigError, match=r"^node\.output_root: Expected a directory no other"):
        OutputTree(tree.root)


def test_discarded_directories_are_deleted_once_emptying_starts(tree):
    staging, _ = tree.make_staging("j")
    (staging / "file").write_text("x")
    tree.discard_staging("j")
    assert not tree.has_staging("j")
    (trashed,) = (tree.root / ".trash").iterdir()
    assert (trashed / "file").is_file()
    tree.start_emptying()
    deadline = time.monotonic() + 10
    while list((tree.root / ".trash").iterdir()):
        assert time.monotonic() < deadline, "the trash was not emptied"
        time.sleep(0.01)
