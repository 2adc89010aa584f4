"""Config loading and validation (pure: no Synapse).

Every error is a ConfigError that names the file and the offending key, so an
operator can fix it without reading code; secrets never appear in messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_config

GOOD_KEY = "0123456789abcdef0123456789abcdef"


def minimal() -> dict[str, Any]:
    return {
        "homeserver": {"url": "https://matrix.example.org"},
        "bot": {"user_id": "@lethe:example.org", "password": "hunter2-hunter2"},
        "e2ee": {"pickle_key": GOOD_KEY},
    }


def write(tmp_path: Path, data: Any, name: str = "lethe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    message = str(info.value)
    assert str(path) in message, f"error does not name the file: {message}"
    assert "Traceback" not in message
    return message


def with_(data: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    data.setdefault(section, {})
    if value is None:
        data[section].pop(key, None)
    else:
        data[section][key] = value
    return data


# --- valid configs -----------------------------------------------------------------


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    config = load_config(path, env={})
    assert config.path == path
    assert config.homeserver.url == "https://matrix.example.org"
    assert config.bot.user_id == "@lethe:example.org"
    assert config.bot.password == "hunter2-hunter2"
    assert config.bot.server_name == "example.org"
    assert config.e2ee.pickle_key == GOOD_KEY
    assert config.e2ee.trust == "tofu"
    # Defaults.
    assert list(config.invites_allow) == ["@*:example.org"]
    assert config.command_prefix == "!lethe"
    assert config.default_cap_ms == 7 * 24 * 3600 * 1000
    assert config.ignore_readers == ()
    # The data dir is relative to the config file, and the secrets live under it.
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.credentials_path.parent == config.data_dir
    assert config.database.path.parent == config.data_dir
    assert config.store_dir.parent == config.data_dir


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), env={})
    text = repr(config)
    assert GOOD_KEY not in text
    assert "hunter2-hunter2" not in text


def test_default_invites_follow_the_bots_server_with_port(tmp_path: Path) -> None:
    data = with_(minimal(), "bot", "user_id", "@lethe:chat.example.net:8448")
    config = load_config(write(tmp_path, data), env={})
    assert list(config.invites_allow) == ["@*:chat.example.net:8448"]


def test_explicit_values_are_kept(tmp_path: Path) -> None:
    data = minimal()
    data["invites"] = {"allow": ["@alice:example.org", "@*:friends.example"]}
    data["commands"] = {"prefix": "!gone"}
    data["policy"] = {"default_cap": "1h30m"}
    data["e2ee"]["trust"] = "verified"
    data["data_dir"] = str(tmp_path / "elsewhere")
    config = load_config(write(tmp_path, data), env={})
    assert list(config.invites_allow) == ["@alice:example.org", "@*:friends.example"]
    assert config.command_prefix == "!gone"
    assert config.default_cap_ms == 90 * 60 * 1000
    assert config.e2ee.trust == "verified"
    assert config.data_dir == tmp_path / "elsewhere"


def test_trailing_slash_of_homeserver_url_is_dropped(tmp_path: Path) -> None:
    data = with_(minimal(), "homeserver", "url", "http://127.0.0.1:8008/")
    assert load_config(write(tmp_path, data), env={}).homeserver.url == "http://127.0.0.1:8008"


# --- pickle key --------------------------------------------------------------------


def test_pickle_key_from_environment_is_accepted(tmp_path: Path) -> None:
    data = with_(minimal(), "e2ee", "pickle_key", None)
    env_key = "f" * 40
    config = load_config(write(tmp_path, data), env={"LETHE_PICKLE_KEY": env_key})
    assert config.e2ee.pickle_key == env_key


def test_pickle_key_from_environment_wins_over_file(tmp_path: Path) -> None:
    env_key = "e" * 40
    config = load_config(write(tmp_path, minimal()), env={"LETHE_PICKLE_KEY": env_key})
    assert config.e2ee.pickle_key == env_key


def test_missing_pickle_key(tmp_path: Path) -> None:
    data = with_(minimal(), "e2ee", "pickle_key", None)
    message = error(write(tmp_path, data))
    assert "e2ee.pickle_key" in message
    assert "LETHE_PICKLE_KEY" in message


def test_missing_e2ee_section_means_missing_pickle_key(tmp_path: Path) -> None:
    data = minimal()
    del data["e2ee"]
    assert "e2ee.pickle_key" in error(write(tmp_path, data))


@pytest.mark.parametrize("weak", ["changeme", "DEFAULT_KEY", "secret", "short-key-12"])
def test_weak_pickle_key(tmp_path: Path, weak: str) -> None:
    data = with_(minimal(), "e2ee", "pickle_key", weak)
    message = error(write(tmp_path, data))
    assert "e2ee.pickle_key" in message
    assert "weak" in message
    assert weak not in message.replace(str(tmp_path), ""), "the key itself is echoed"


def test_weak_pickle_key_from_environment_is_refused(tmp_path: Path) -> None:
    data = with_(minimal(), "e2ee", "pickle_key", None)
    message = error(write(tmp_path, data), env={"LETHE_PICKLE_KEY": "changeme"})
    assert "e2ee.pickle_key" in message


# --- errors, each naming file and key ----------------------------------------------


def test_missing_homeserver_url(tmp_path: Path) -> None:
    data = with_(minimal(), "homeserver", "url", None)
    assert "homeserver.url" in error(write(tmp_path, data))


def test_missing_homeserver_section(tmp_path: Path) -> None:
    data = minimal()
    del data["homeserver"]
    assert "homeserver" in error(write(tmp_path, data))


@pytest.mark.parametrize(
    "url", ["matrix.example.org", "ftp://matrix.example.org", "https://", "not a url", 8008]
)
def test_bad_homeserver_url(tmp_path: Path, url: Any) -> None:
    data = with_(minimal(), "homeserver", "url", url)
    assert "homeserver.url" in error(write(tmp_path, data))


@pytest.mark.parametrize(
    "user_id", ["lethe", "@lethe", "lethe:example.org", "@le the:example.org", "@:example.org"]
)
def test_bad_bot_user_id(tmp_path: Path, user_id: str) -> None:
    data = with_(minimal(), "bot", "user_id", user_id)
    assert "bot.user_id" in error(write(tmp_path, data))


def test_missing_bot_user_id(tmp_path: Path) -> None:
    data = with_(minimal(), "bot", "user_id", None)
    assert "bot.user_id" in error(write(tmp_path, data))


@pytest.mark.parametrize("trust", ["always", "TOFU ", "none"])
def test_bad_e2ee_trust(tmp_path: Path, trust: str) -> None:
    data = with_(minimal(), "e2ee", "trust", trust)
    assert "e2ee.trust" in error(write(tmp_path, data))


@pytest.mark.parametrize("allow", ["@*:example.org", {"a": 1}, [1, 2], ["@*:x", ""]])
def test_invites_allow_not_a_list_of_globs(tmp_path: Path, allow: Any) -> None:
    data = minimal()
    data["invites"] = {"allow": allow}
    assert "invites.allow" in error(write(tmp_path, data))


@pytest.mark.parametrize("cap", ["7 days", "forever", "0s", "1m1h", "", 7])
def test_bad_default_cap(tmp_path: Path, cap: Any) -> None:
    data = minimal()
    data["policy"] = {"default_cap": cap}
    assert "policy.default_cap" in error(write(tmp_path, data))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    message = error(write(tmp_path, text))
    assert "mapping" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    message = error(write(tmp_path, "homeserver: [unclosed\nbot: {user_id: \n"))
    assert "YAML" in message


@pytest.mark.parametrize("broken", [
    # An unclosed quote right after the secret: PyYAML's message quotes that line.
    'e2ee:\n  pickle_key: "{key}\nbot: {{user_id: "@lethe:example.org"}}\n',
    # A tab and a stray colon next to the password.
    "bot:\n  password: {key}: oops\n\t- x\n",
    # A mapping value where none is allowed, on the secret's own line.
    "bot:\n  user_id: @lethe:example.org\n  password: {key}\n   x: y: z\n",
])
def test_invalid_yaml_names_line_and_column_but_never_the_text(
    tmp_path: Path, broken: str
) -> None:
    secret = "s3cret-" + GOOD_KEY
    message = error(write(tmp_path, broken.format(key=secret)))
    assert "not valid YAML at line " in message and ", column " in message, message
    assert "Error" in message, message  # the problem class, e.g. ScannerError
    assert secret not in message and secret[:12] not in message, message
    assert "\n" not in message, message  # one line, no quoted source


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    data = minimal()
    data["bot"]["password"] = 918273645546372819
    message = error(write(tmp_path, data))
    assert "bot.password" in message and "918273645546372819" not in message, message


def test_missing_file(tmp_path: Path) -> None:
    message = error(tmp_path / "nope.yaml")
    assert "not found" in message


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    data = minimal()
    data["e2ee"] = "just-a-key-0123456789"
    assert "e2ee" in error(write(tmp_path, data))


@pytest.mark.parametrize(("section", "key", "named", "nearest"), [
    (None, "polcy", "polcy", "policy"),
    ("redaction", "worker", "redaction.worker", "redaction.workers"),
    ("e2ee", "trusted", "e2ee.trusted", "e2ee.trust"),
    ("bot", "zzz", "bot.zzz", None),
])
def test_unknown_keys_are_named_with_the_nearest_valid_one(
        tmp_path: Path, section: str | None, key: str, named: str, nearest: str | None) -> None:
    """A misspelt key is an error, not a silent default."""
    data = minimal()
    if section is None:
        data[key] = {"default_cap": "1d"}
    else:
        data.setdefault(section, {})[key] = 2
    message = error(write(tmp_path, data))
    assert f"{named}: unknown key" in message, message
    if nearest:
        assert f"did you mean {nearest}?" in message, message
    else:
        assert "known keys here" in message and "user_id" in message, message


# --- the example config --------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_in_the_package_is_the_repositorys() -> None:
    """bot/config.example.yaml is a link to the root file: one text, no drift."""
    from bot.cli.config import example_config

    assert example_config() == (ROOT / "config.example.yaml").read_text(encoding="utf-8")


def test_a_built_package_includes_the_example() -> None:
    """A wheel (a non-editable install) carries only the package data pyproject names."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "config.example.yaml" in setuptools["package-data"]["bot"]
    assert any(glob.rstrip("*") == "bot" for glob in setuptools["packages"]["find"]["include"])


def run_lethe(*args: str, env: dict[str, str] | None = None) -> Any:
    from click.testing import CliRunner

    from bot.cli.main import main

    return CliRunner().invoke(main, list(args), env=env)


def test_lethe_config_example_prints_the_example() -> None:
    result = run_lethe("config", "example")
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / "config.example.yaml").read_text(encoding="utf-8")


def test_the_example_loads_once_the_secrets_are_set(tmp_path: Path) -> None:
    path = write(tmp_path, run_lethe("config", "example").stdout)
    result = run_lethe("-c", str(path), "config", "check", env={"LETHE_PICKLE_KEY": GOOD_KEY})
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: valid for the bot\n"
    config = load_config(path, env={"LETHE_PICKLE_KEY": GOOD_KEY})
    assert config.bot.user_id == "@lethe:example.org"


def test_config_check_names_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, with_(minimal(), "redaction", "worker", 2))
    result = run_lethe("config", "check", "-c", str(path))
    assert result.exit_code == 3
    assert result.stderr.startswith(f"lethe: {path}: redaction.worker: unknown key")


def test_config_check_also_checks_a_bridge_section(tmp_path: Path) -> None:
    data = minimal()
    data["bridge"] = {"user_id": "@lethe-bridge:example.org",
                      "listen": {"port": "not a port"}}
    result = run_lethe("config", "check", "-c", str(write(tmp_path, data)))
    assert result.exit_code == 3
    assert "bridge.listen.port" in result.stderr


def test_without_a_config_the_cli_points_to_the_example() -> None:
    result = run_lethe("config", "check", env={"LETHE_CONFIG": ""})
    assert result.exit_code == 2
    assert result.stderr == ("lethe: no config given: use lethe config check -c CONFIG "
                             "(see `lethe config example`)\n")


def test_without_an_admin_token_nothing_is_erased_beyond_redaction(tmp_path: Path) -> None:
    erasure = load_config(write(tmp_path, minimal()), env={}).erasure
    assert erasure.admin_token is None and not erasure.deletes_media
    assert erasure.max_held_ms == 7 * 86_400_000 and erasure.ledger_ms == 30 * 86_400_000


def test_the_admin_token_comes_from_the_environment_and_stays_out_of_repr(
        tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), env={"LETHE_ADMIN_TOKEN": "syt_admin_x"})
    assert config.erasure.admin_token == "syt_admin_x" and config.erasure.deletes_media
    assert config.erasure.token_source == "LETHE_ADMIN_TOKEN"
    assert "syt_admin_x" not in repr(config)


def test_the_admin_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "admin-token"
    token.write_text("syt_secret_admin\n")
    data = with_(minimal(), "erasure", "admin_token_file", "admin-token")
    token.chmod(0o644)
    message = error(write(tmp_path, data))
    assert "erasure.admin_token_file" in message and "chmod 600" in message
    assert "syt_secret_admin" not in message
    token.chmod(0o600)
    config = load_config(write(tmp_path, data), env={})
    assert config.erasure.admin_token == "syt_secret_admin"
    assert config.erasure.token_source == str(token)


@pytest.mark.parametrize(("key", "value"), [("media", "yes"), ("max_held", "soon"),
                                            ("ledger", "-1d")])
def test_bad_erasure_settings_are_named(tmp_path: Path, key: str, value: str) -> None:
    assert f"erasure.{key}" in error(write(tmp_path, with_(minimal(), "erasure", key, value)))
