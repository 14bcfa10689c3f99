"""The storage catalog and local storage provisioning, on real files and real git repositories."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from juliarun.backends.local.storage import RAM_ROOT, provision
from juliarun.errors import SpecError, StorageError, StorageNotFoundError
from juliarun.specs import StorageSpec
from juliarun.storage import StorageCatalog

# ---------------------------------------------------------------------------------------------
# StorageCatalog
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "storage.json"


@pytest.fixture
def catalog(catalog_path: Path) -> StorageCatalog:
    return StorageCatalog(catalog_path)


def host(name: str, *aliases: str, path: str = "/srv/data") -> StorageSpec:
    return StorageSpec(name=name, kind="host", path=path, aliases=list(aliases))


def test_define_then_get_by_name(catalog: StorageCatalog, catalog_path: Path) -> None:
    spec = host("data")
    assert catalog.define(spec) == spec
    assert catalog.get("data") == spec
    assert json.loads(catalog_path.read_text())["data"]["path"] == "/srv/data"


def test_get_by_alias(catalog: StorageCatalog) -> None:
    spec = host("data", "d", "dataset")
    catalog.define(spec)
    assert catalog.get("d") == spec
    assert catalog.get("dataset") == spec


def test_get_unknown_lists_what_is_defined(catalog: StorageCatalog) -> None:
    with pytest.raises(StorageNotFoundError) as info:
        catalog.get("nope")
    assert info.value.known == []
    assert "(defined: none)" in str(info.value)
    catalog.define(host("b"))
    catalog.define(host("a", "alias-a"))
    with pytest.raises(StorageNotFoundError) as info:
        catalog.get("nope")
    assert info.value.name == "nope"
    assert sorted(info.value.known) == ["a", "b"]
    assert "defined: a, b" in str(info.value)
    assert "define_storage" in info.value.hint


def test_define_replaces_same_name(catalog: StorageCatalog) -> None:
    catalog.define(host("data", "old", path="/srv/one"))
    catalog.define(host("data", "new", path="/srv/two"))
    assert [s.path for s in catalog.all()] == ["/srv/two"]
    assert catalog.get("new").path == "/srv/two"
    with pytest.raises(StorageNotFoundError):
        catalog.get("old")


@pytest.mark.parametrize(
    ("second", "clash"),
    [
        (host("other", "shared"), "shared"),  # alias used as an alias elsewhere
        (host("other", "data"), "data"),  # alias is another storage's name
        (host("shared"), "shared"),  # name is another storage's alias
    ],
)
def test_alias_clash_is_an_error(catalog: StorageCatalog, second: StorageSpec, clash: str) -> None:
    first = host("data", "shared")
    catalog.define(first)
    with pytest.raises(SpecError) as info:
        catalog.define(second)
    ((field, rule),) = info.value.errors
    assert field in {"name", "aliases"}
    assert repr(clash) in rule
    assert "'data'" in rule
    # Nothing changed.
    assert catalog.all() == [first]


def test_clash_on_the_name_names_the_name_field(catalog: StorageCatalog) -> None:
    catalog.define(host("data", "shared"))
    with pytest.raises(SpecError) as info:
        catalog.define(host("shared"))
    assert info.value.errors[0][0] == "name"
    with pytest.raises(SpecError) as info:
        catalog.define(host("other", "shared"))
    assert info.value.errors[0][0] == "aliases"


def test_remove(catalog: StorageCatalog) -> None:
    catalog.define(host("data", "d"))
    catalog.define(host("logs"))
    assert catalog.remove("data") is True
    assert catalog.remove("data") is False
    assert catalog.remove("never-defined") is False
    assert [s.name for s in catalog.all()] == ["logs"]
    with pytest.raises(StorageNotFoundError):
        catalog.get("d")
    # Its alias is free again.
    catalog.define(host("other", "d"))
    assert catalog.get("d").name == "other"


def test_all_is_sorted_by_name(catalog: StorageCatalog) -> None:
    assert catalog.all() == []
    for name in ["zeta", "alpha", "mid"]:
        catalog.define(host(name))
    assert [s.name for s in catalog.all()] == ["alpha", "mid", "zeta"]


def test_resolve_keeps_order_and_raises_on_first_unknown(catalog: StorageCatalog) -> None:
    catalog.define(host("a", "x"))
    catalog.define(host("b"))
    assert [s.name for s in catalog.resolve(["b", "x", "a"])] == ["b", "a", "a"]
    assert catalog.resolve([]) == []
    with pytest.raises(StorageNotFoundError) as info:
        catalog.resolve(["a", "missing", "also-missing"])
    assert info.value.name == "missing"


def test_kinds_round_trip_through_the_file(catalog: StorageCatalog) -> None:
    specs = [
        StorageSpec(name="code", kind="git", url="https://example.com/r.git", ref="v1"),
        StorageSpec(name="data", kind="host", path="/srv/data"),
        StorageSpec(name="scratch", kind="ramdisk", size="64Mi", aliases=["tmp"]),
    ]
    for spec in specs:
        catalog.define(spec)
    assert StorageCatalog(catalog.path).all() == specs


def test_two_catalogs_on_one_file_see_each_other(catalog_path: Path) -> None:
    one, two = StorageCatalog(catalog_path), StorageCatalog(catalog_path)
    one.define(host("from-one", "uno"))
    assert two.get("uno").name == "from-one"
    two.define(host("from-two"))
    assert [s.name for s in one.all()] == ["from-one", "from-two"]
    with pytest.raises(SpecError):
        two.define(host("clash", "uno"))
    assert one.remove("from-two")
    with pytest.raises(StorageNotFoundError):
        two.get("from-two")


def _define_many(path: str, prefix: str, count: int, barrier: object) -> None:
    catalog = StorageCatalog(Path(path))
    barrier.wait()  # type: ignore[attr-defined]
    for i in range(count):
        catalog.define(host(f"{prefix}-{i}", f"{prefix}-alias-{i}"))


def test_concurrent_defines_from_two_processes_keep_every_entry(catalog_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    count = 40
    procs = [
        ctx.Process(target=_define_many, args=(str(catalog_path), p, count, barrier))
        for p in ("left", "right")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    names = {s.name for s in StorageCatalog(catalog_path).all()}
    expected = {f"{p}-{i}" for p in ("left", "right") for i in range(count)}
    assert names == expected
    assert json.loads(catalog_path.read_text()).keys() == expected


# ---------------------------------------------------------------------------------------------
# Local provisioning: host and ramdisk
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A unique JULIARUN home; RAM disks provisioned for it are removed afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    before = set(RAM_ROOT.glob("juliarun-*"))
    yield home
    for made in set(RAM_ROOT.glob("juliarun-*")) - before:
        shutil.rmtree(made, ignore_errors=True)


def test_host_creates_the_directory(tmp_path: Path, home: Path) -> None:
    target = tmp_path / "data" / "deep" / "dir"
    path = provision(host("data", path=str(target)), home)
    assert path == target
    assert target.is_dir()
    (target / "keep.txt").write_text("kept")
    assert provision(host("data", path=str(target)), home) == target
    assert (target / "keep.txt").read_text() == "kept"


@pytest.mark.parametrize("under_file", [True, False])
def test_host_unwritable_path_names_the_storage(
    tmp_path: Path, home: Path, under_file: bool
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "sub" if under_file else blocker
    with pytest.raises(StorageError) as info:
        provision(host("blocked", path=str(target)), home)
    assert "'blocked'" in str(info.value)
    assert str(target) in str(info.value)
    assert info.value.hint
    assert blocker.read_text() == "not a directory"


def _fs_type(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_ramdisk_lands_on_tmpfs_and_is_idempotent(home: Path) -> None:
    spec = StorageSpec(name="scratch", kind="ramdisk", size="16Mi")
    path = provision(spec, home)
    assert path.is_dir()
    assert path.name == "scratch"
    assert path.is_relative_to(RAM_ROOT)
    assert _fs_type(path) == "tmpfs"
    (path / "x").write_text("in memory")
    assert provision(spec, home) == path
    assert (path / "x").read_text() == "in memory"


def test_ramdisks_of_different_homes_are_separate(tmp_path: Path, home: Path) -> None:
    other_home = home.parent / "other-home"
    other_home.mkdir()
    spec = StorageSpec(name="scratch", kind="ramdisk")
    one, two = provision(spec, home), provision(spec, other_home)
    assert one != two
    assert provision(StorageSpec(name="other", kind="ramdisk"), home).parent == one.parent


# ---------------------------------------------------------------------------------------------
# Local provisioning: git
# ---------------------------------------------------------------------------------------------

GIT_ENV = {
    "GIT_AUTHOR_NAME": "juliarun tests",
    "GIT_AUTHOR_EMAIL": "tests@juliarun.invalid",
    "GIT_COMMITTER_NAME": "juliarun tests",
    "GIT_COMMITTER_EMAIL": "tests@juliarun.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent)}
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def commit(repo: Path, content: str, message: str) -> str:
    (repo / "version.txt").write_text(content)
    git(repo, "add", "version.txt")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class Repo:
    """A real repository: main has `one` (tagged v1) then `two`; `feature` adds `feature`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        git(path, "init", "--quiet", "-b", "main")
        self.first = commit(path, "one", "first")
        git(path, "tag", "v1")
        self.second = commit(path, "two", "second")
        git(path, "checkout", "--quiet", "-b", "feature")
        self.feature = commit(path, "feature", "on the branch")
        git(path, "checkout", "--quiet", "main")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "upstream")


def code(repo: Repo | Path | str, ref: str | None = None, name: str = "code") -> StorageSpec:
    url = str(repo.path if isinstance(repo, Repo) else repo)
    return StorageSpec(name=name, kind="git", url=url, ref=ref)


def checked_out(path: Path) -> tuple[str, str]:
    return (path / "version.txt").read_text(), git(path, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    ("ref", "content", "commit_attr"),
    [
        (None, "two", "second"),
        ("HEAD", "two", "second"),
        ("main", "two", "second"),
        ("feature", "feature", "feature"),
        ("v1", "one", "first"),
        ("@first", "one", "first"),
        ("@first-short", "one", "first"),
    ],
)
def test_git_checks_out_the_ref(
    repo: Repo, home: Path, ref: str | None, content: str, commit_attr: str
) -> None:
    sha = getattr(repo, commit_attr)
    if ref == "@first":
        ref = repo.first
    elif ref == "@first-short":
        ref = repo.first[:10]
    path = provision(code(repo, ref), home)
    assert path.is_relative_to(home)
    assert checked_out(path) == (content, sha)


def test_git_refs_get_separate_checkouts(repo: Repo, home: Path) -> None:
    at_tag = provision(code(repo, "v1"), home)
    at_branch = provision(code(repo, "feature"), home)
    assert at_tag != at_branch
    assert checked_out(at_tag)[0] == "one"
    assert checked_out(at_branch)[0] == "feature"


def test_git_reprovision_fetches_new_commits(repo: Repo, home: Path) -> None:
    on_branch = provision(code(repo, "feature"), home)
    at_head = provision(code(repo), home)
    git(repo.path, "checkout", "--quiet", "feature")
    newer = commit(repo.path, "feature 2", "more on the branch")
    git(repo.path, "checkout", "--quiet", "main")
    newer_main = commit(repo.path, "three", "third")
    assert provision(code(repo, "feature"), home) == on_branch
    assert checked_out(on_branch) == ("feature 2", newer)
    assert provision(code(repo), home) == at_head
    assert checked_out(at_head) == ("three", newer_main)


def test_git_reprovision_discards_local_changes(repo: Repo, home: Path) -> None:
    path = provision(code(repo, "main"), home)
    (path / "version.txt").write_text("scribbled")
    provision(code(repo, "main"), home)
    assert checked_out(path) == ("two", repo.second)


def test_git_reprovision_follows_a_moved_tag(repo: Repo, home: Path) -> None:
    path = provision(code(repo, "v1"), home)
    assert checked_out(path)[0] == "one"
    git(repo.path, "tag", "--force", "v1", repo.second)
    provision(code(repo, "v1"), home)
    assert checked_out(path) == ("two", repo.second)


def test_git_new_tag_is_found_on_reprovision(repo: Repo, home: Path) -> None:
    provision(code(repo, "main"), home)
    git(repo.path, "tag", "v2", repo.feature)
    assert checked_out(provision(code(repo, "v2"), home))[0] == "feature"


def test_git_unknown_ref_names_the_ref(repo: Repo, home: Path) -> None:
    with pytest.raises(StorageError) as info:
        provision(code(repo, "no-such-branch"), home)
    message = str(info.value)
    assert "'no-such-branch'" in message
    assert "'code'" in message
    assert info.value.hint


def test_git_unknown_url(tmp_path: Path, home: Path) -> None:
    missing = tmp_path / "no-such-repo"
    with pytest.raises(StorageError) as info:
        provision(code(missing), home)
    assert "'code'" in str(info.value)
    assert str(missing) in str(info.value)
    # Once the repository exists, the same storage provisions fine.
    Repo(missing)
    assert checked_out(provision(code(missing), home))[0] == "two"


def test_git_url_that_is_not_a_repository(tmp_path: Path, home: Path) -> None:
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    with pytest.raises(StorageError):
        provision(code(plain), home)


def test_git_changed_url_is_followed(tmp_path: Path, home: Path) -> None:
    first, second = Repo(tmp_path / "first"), Repo(tmp_path / "second")
    commit(second.path, "from the second repo", "differs")
    assert checked_out(provision(code(first, "main"), home))[0] == "two"
    path = provision(code(second, "main"), home)
    assert checked_out(path)[0] == "from the second repo"


def test_git_refs_that_sanitize_alike_do_not_share_a_checkout(repo: Repo, home: Path) -> None:
    git(repo.path, "branch", "team/x", repo.first)
    git(repo.path, "branch", "team_x", repo.feature)
    slash = provision(code(repo, "team/x"), home)
    underscore = provision(code(repo, "team_x"), home)
    assert slash != underscore
    assert checked_out(slash)[0] == "one"
    assert checked_out(underscore)[0] == "feature"


def _provision_git(url: str, home: str, barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        path = provision(code(url, "feature"), Path(home))
        out.put(("ok", str(path)))  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent, which asserts
        out.put(("error", repr(exc)))  # type: ignore[attr-defined]


def test_git_concurrent_provisions_of_one_storage(repo: Repo, home: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_provision_git, args=(str(repo.path), str(home), barrier, out))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in results] == ["ok"] * 3, results
    paths = {Path(where) for _, where in results}
    assert len(paths) == 1
    assert checked_out(paths.pop()) == ("feature", repo.feature)
