"""Nothing the user owns is deleted or overwritten; concurrent writers cannot both win; artifacts follow the umask."""

from __future__ import annotations

import concurrent.futures
import os
import stat

import pytest

from cli_harness import assert_one_line_error, run_cli, tree_snapshot
from resadapter_rt import ResAdapterRTError
from resadapter_rt.cli import main
from resadapter_rt.files import exclusive_lock

TINY = ["--model", "tiny-sd15", "--resadapter", "tiny-sd15"]


def test_demo_never_deletes_a_directory_it_did_not_create(tmp_path, capsys):
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "thesis.txt").write_text("draft")
    assert main(["demo", "--artifacts", str(mydata), "--output-dir", str(tmp_path / "out"), "-q"]) == 2
    assert capsys.readouterr().err == (f"error: {mydata}: not an export and not created by resadapter-rt, so demo leaves it "
                                       "alone; pass --artifacts with a new directory (or one demo made)\n")
    assert (mydata / "thesis.txt").read_text() == "draft"


def test_concurrent_exports_into_one_directory_cannot_both_succeed(tmp_path):
    args = ["export", *TINY, "--out", "shared", "-q"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_cli(args, cwd=tmp_path), range(2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 2)
    line = loser.stderr.strip()
    assert ("another resadapter-rt process is writing it" in line or "directory is not empty; pass --force" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no lock, temp or old directories left


def test_a_held_output_lock_refuses_a_second_writer(tmp_path, capsys):
    out = tmp_path / "o"
    with exclusive_lock(tmp_path / ".o.lock", str(out)):
        assert main(["merge", *TINY, "--out", str(out)]) == 2
        assert capsys.readouterr().err == (f"error: {out}: another resadapter-rt process is writing it (lock {tmp_path / '.o.lock'}); "
                                           "wait for it to finish or choose another output\n")
        with pytest.raises(ResAdapterRTError, match="another resadapter-rt process"):
            with exclusive_lock(tmp_path / ".o.lock", str(out)):
                pass
    assert not out.exists() and not (tmp_path / ".o.lock").exists()


def test_artifacts_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["merge", *TINY, "--out", str(tmp_path / "merged")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in (tmp_path / "merged").iterdir())


def test_export_into_the_current_directory_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    before = tree_snapshot(tmp_path)
    result = run_cli(["export", *TINY, "--out", ".", "-q"], cwd=tmp_path)
    assert_one_line_error(result, "error: .: is the current directory (or holds it); choose a new directory for --out")
    assert tree_snapshot(tmp_path) == before
