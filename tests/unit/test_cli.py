"""web.cli: user add/list/del/passwd, migrate, config resolution and run's hand-off, via main([...])."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from storage import Storage, compute_ha1, current_revision, users
from web import cli
from web.cli import main, resolve_config_path
from web.settings import Settings


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in an empty directory with no CALLPATH_* variables from the outer environment."""
    import os

    for var in list(os.environ):
        if var.startswith("CALLPATH_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def db_url(workdir: Path) -> str:
    """The SQLite URL the default settings give in ``workdir``."""
    return f"sqlite:///{workdir.resolve() / 'data' / 'callpath.db'}"


def stored_users(url: str) -> list[tuple[str, str | None, str, bool, str]]:
    """(username, extension, display_name, enabled, realm) of every account in the database."""
    with Storage(url) as store, store.session() as session:
        return [(u.username, u.extension, u.display_name, u.enabled, u.realm) for u in users.list_sip_users(session)]


def test_user_add_list_del(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "add", "alice", "--password", "pw", "--extension", "1001", "--display-name", "Alice A"]) == 0
    assert "created SIP user alice (sip:alice@127.0.0.1, extension 1001)" in capsys.readouterr().out
    assert main(["user", "add", "bob", "--password", "pw"]) == 0
    assert stored_users(db_url(workdir)) == [
        ("alice", "1001", "Alice A", True, "127.0.0.1"),
        ("bob", None, "", True, "127.0.0.1"),
    ]
    capsys.readouterr()

    assert main(["user", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["USERNAME", "EXTENSION", "ENABLED", "DISPLAY", "NAME"]
    assert out[1].split() == ["alice", "1001", "yes", "Alice", "A"]
    assert out[2].split() == ["bob", "-", "yes"]

    assert main(["user", "del", "alice"]) == 0
    assert "deleted SIP user alice" in capsys.readouterr().out
    assert [u[0] for u in stored_users(db_url(workdir))] == ["bob"]


def test_list_empty(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no SIP users"


def test_duplicates_exit_1_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "add", "alice", "--password", "pw", "--extension", "1001"]) == 0
    capsys.readouterr()
    assert main(["user", "add", "alice", "--password", "pw"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "callpath: error: SIP user 'alice' already exists"
    assert main(["user", "add", "bob", "--password", "pw", "--extension", "1001"]) == 1
    err = capsys.readouterr().err
    assert "extension 1001 is already assigned to 'alice'" in err and "Traceback" not in err


def test_invalid_input_and_unknown_user_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "add", "al:ice", "--password", "pw"]) == 1
    assert "invalid username" in capsys.readouterr().err
    assert main(["user", "del", "nobody"]) == 1
    assert "no SIP user 'nobody'" in capsys.readouterr().err
    assert main(["user", "passwd", "nobody", "--password", "x"]) == 1
    assert "no SIP user 'nobody'" in capsys.readouterr().err


def test_password_required_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert main(["user", "add", "alice"]) == 1
    assert "--password is required" in capsys.readouterr().err


def test_password_prompt_on_a_terminal(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin = types.SimpleNamespace(isatty=lambda: True)
    monkeypatch.setattr(cli.sys, "stdin", fake_stdin)
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(answers))
    assert main(["user", "add", "alice"]) == 0
    with Storage(db_url(workdir)) as store, store.session() as session:
        user = users.get_sip_user(session, "alice")
        assert user is not None and user.ha1_md5 == compute_ha1("alice", "127.0.0.1", "typed")

    answers = iter(["one", "two"])
    assert main(["user", "passwd", "alice"]) == 1  # confirmation mismatch


def test_passwd_uses_the_configured_realm(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["user", "add", "alice", "--password", "old"]) == 0
    monkeypatch.setenv("CALLPATH_SIP_DOMAIN", "pbx.example.com")
    capsys.readouterr()
    assert main(["user", "list"]) == 0
    assert "password set for realm '127.0.0.1'" in capsys.readouterr().out
    assert main(["user", "passwd", "alice", "--password", "new"]) == 0
    assert "realm pbx.example.com" in capsys.readouterr().out
    with Storage(db_url(workdir)) as store, store.session() as session:
        user = users.get_sip_user(session, "alice")
        assert user is not None and user.realm == "pbx.example.com"
        assert user.ha1("MD5", "pbx.example.com") == compute_ha1("alice", "pbx.example.com", "new")


def test_add_disabled(workdir: Path) -> None:
    assert main(["user", "add", "alice", "--password", "pw", "--disabled"]) == 0
    assert stored_users(db_url(workdir))[0][3] is False


def test_migrate_command(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    assert "is at revision 0001" in capsys.readouterr().out
    assert current_revision(db_url(workdir)) == "0001"


def test_config_file_and_env_data_dir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = workdir / "alt.toml"
    conf.write_text(f'[server]\ndata_dir = "{workdir / "alt"}"\n[sip]\ndomain = "example.org"\n')
    assert main(["user", "add", "alice", "--password", "pw", "--config", str(conf)]) == 0
    url = f"sqlite:///{workdir / 'alt' / 'callpath.db'}"
    assert stored_users(url)[0][4] == "example.org"

    monkeypatch.setenv("CALLPATH_SERVER_DATA_DIR", str(workdir / "envdir"))
    assert main(["user", "add", "bob", "--password", "pw", "--config", str(conf)]) == 0
    assert [u[0] for u in stored_users(f"sqlite:///{workdir / 'envdir' / 'callpath.db'}")] == ["bob"]


def test_config_resolution_order(workdir: Path) -> None:
    assert resolve_config_path(None, {}) is None
    (workdir / "callpath.toml").write_text("")
    assert resolve_config_path(None, {}) == Path("callpath.toml")
    assert resolve_config_path(None, {"CALLPATH_CONFIG": "/etc/c.toml"}) == Path("/etc/c.toml")
    assert resolve_config_path("x.toml", {"CALLPATH_CONFIG": "/etc/c.toml"}) == Path("x.toml")


def test_local_callpath_toml_is_read(workdir: Path) -> None:
    (workdir / "callpath.toml").write_text('[sip]\ndomain = "local.example"\n')
    assert main(["user", "add", "alice", "--password", "pw"]) == 0
    assert stored_users(db_url(workdir))[0][4] == "local.example"


def test_settings_errors_exit_1(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "bad.toml").write_text("[sip]\nudpport = 1\n")
    assert main(["migrate", "--config", "bad.toml"]) == 1
    assert "unknown setting sip.udpport" in capsys.readouterr().err
    monkeypatch.setenv("CALLPATH_CONFIG", str(workdir / "missing.toml"))
    assert main(["user", "list"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_database_errors_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLPATH_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert main(["user", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("callpath: error: database error:") and "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["user"])
    assert info.value.code == 2


def test_run_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for fragment in ("--sip-trace", "--config", "CALLPATH_SIP_UDP_PORT", "CALLPATH_DATABASE_URL",
                     "CALLPATH_SERVER_DATA_DIR", "CALLPATH_WEB_PORT", "CALLPATH_SIP_AUTH_ALGORITHMS", "default 5060"):
        assert fragment in out


def install_fake_server(monkeypatch: pytest.MonkeyPatch, serve) -> None:
    """Make ``from web.server import serve`` resolve to ``serve``."""
    module = types.ModuleType("web.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "web.server", module)


def test_run_migrates_then_serves(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    def serve(settings: Settings) -> None:
        assert current_revision(settings.database_url) == "0001"  # migrated before serving
        seen.append(settings)

    install_fake_server(monkeypatch, serve)
    monkeypatch.setenv("CALLPATH_SIP_UDP_PORT", "5071")
    assert main(["run", "--sip-trace"]) == 0
    assert seen[0].sip.sip_trace is True and seen[0].sip.udp_port == 5071
    assert seen[0].database_url == db_url(workdir)


def test_run_accepts_an_async_serve_and_its_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    async def serve(settings: Settings) -> int:
        return 3

    install_fake_server(monkeypatch, serve)
    assert main(["run"]) == 3


def test_run_treats_ctrl_c_as_clean_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(settings: Settings) -> None:
        raise KeyboardInterrupt

    install_fake_server(monkeypatch, serve)
    assert main(["run"]) == 0


def test_run_without_server_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "web.server", None)  # makes `import web.server` fail
    assert main(["run"]) == 1
    assert "web.server is not available" in capsys.readouterr().err
