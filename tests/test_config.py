"""Configuration: loading, validation messages, environment overrides, the docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from starling.config import ConfigError, all_keys, load_config, load_config_dict, parse_size


def test_minimal_config_gets_synapse_like_defaults() -> None:
    cfg = load_config_dict({"server_name": "example.org"}, environ={})
    assert cfg.listeners[0].port == 8008
    assert cfg.database.name == "sqlite3"
    assert cfg.enable_registration is False
    assert cfg.rc_message.per_second == 0.2 and cfg.rc_message.burst_count == 10
    assert cfg.default_room_version == "12"


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({}, "server_name: required"),
        ({"server_name": "bad name!"}, "not a valid Matrix server name"),
        ({"server_name": "a.org", "enable_registraton": True}, "'enable_registraton'"),
        ({"server_name": "a.org", "listeners": [{"port": "x"}]}, "listeners[0].port"),
        ({"server_name": "a.org", "listeners": [{"port": 70000}]}, "between 0 and 65535"),
        ({"server_name": "a.org", "database": {"name": "mysql"}}, "database.name"),
        ({"server_name": "a.org", "database": {"args": {"nope": 1}}}, "'database.args.nope'"),
        ({"server_name": "a.org", "rc_message": {"per_second": "fast"}}, "rc_message.per_second"),
        ({"server_name": "a.org", "default_room_version": "99"}, "default_room_version"),
        ({"server_name": "a.org", "max_upload_size": "lots"}, "max_upload_size"),
        ({"server_name": "a.org", "enable_registration": "yes please"}, "enable_registration"),
        ({"server_name": "a.org", "listeners": [{"resources": [{"names": ["x"]}]}]}, "names[0]"),
    ],
)
def test_bad_values_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_dict(data, environ={})
    assert fragment in str(e.value)


def test_unknown_key_lists_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as e:
        load_config_dict({"server_name": "a.org", "databse": {}}, environ={})
    assert "allowed here:" in str(e.value) and "database" in str(e.value)


def test_environment_overrides_top_level_and_nested() -> None:
    env = {
        "STARLING_ENABLE_REGISTRATION": "true",
        "STARLING_ENABLE_REGISTRATION_WITHOUT_VERIFICATION": "true",
        "STARLING_DATABASE__ARGS__DATABASE": "/tmp/other.db",
        "STARLING_RC_MESSAGE__PER_SECOND": "5",
        "STARLING_SPEC_DIR": "/not/a/config/key",
    }
    cfg = load_config_dict({"server_name": "a.org"}, environ=env)
    assert cfg.enable_registration is True
    assert cfg.database.args.database == "/tmp/other.db"
    assert cfg.rc_message.per_second == 5.0


def test_environment_override_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="enable_registration"):
        load_config_dict({"server_name": "a.org"}, environ={"STARLING_ENABLE_REGISTRATION": "7"})


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy, environ={})


def test_relative_paths_resolve_from_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "starling.yaml"
    f.write_text("server_name: a.org\nsigning_key_path: k.key\n")
    cfg = load_config(f, environ={})
    assert cfg.resolve_path(cfg.signing_key_path) == tmp_path / "k.key"


def test_sizes() -> None:
    assert parse_size("50M") == 50 * 1024 * 1024
    assert parse_size("10K") == 10240
    assert parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("12Q")


def test_docs_list_every_key() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [key for key, _, _ in all_keys() if f"`{key}`" not in doc]
    assert not missing, f"docs/configuration.md does not describe: {missing}"


def test_open_registration_without_verification_must_be_confirmed() -> None:
    with pytest.raises(ConfigError, match="enable_registration_without_verification"):
        load_config_dict({"server_name": "a.org", "enable_registration": True}, environ={})
    confirmed = load_config_dict(
        {
            "server_name": "a.org",
            "enable_registration": True,
            "enable_registration_without_verification": True,
        },
        environ={},
    )
    assert confirmed.enable_registration
    # A registration token is verification enough.
    tokens = load_config_dict(
        {"server_name": "a.org", "enable_registration": True, "registration_requires_token": True},
        environ={},
    )
    assert tokens.registration_requires_token


def test_transport_limits_checked() -> None:
    base: dict[str, Any] = {"server_name": "a.org"}
    cfg = load_config_dict({**base, "websocket": {"max_in_flight": 3}}, environ={})
    assert cfg.websocket.max_in_flight == 3
    for bad in (
        {"websocket": {"max_message_size": "1G"}},
        {"websocket": {"heartbeat": 0}},
        {"low_bandwidth": {"port": 70000}},
        {"low_bandwidth": {"port": 8008, "max_sessions_per_ip": 5000}},
        {"low_bandwidth": {"port": 8008, "max_body_size": "12Q"}},
        {
            "low_bandwidth": {"port": 8008},
            "listeners": [{"resources": [{"names": ["federation"]}]}],
        },
    ):
        with pytest.raises(ConfigError):
            load_config_dict({**base, **bad}, environ={})


def test_workers_with_oidc_need_public_baseurl() -> None:
    """Each process would otherwise name its own listener in the OIDC callback URL, and a
    callback landing on another process would fail the code exchange."""
    data: dict[str, Any] = {
        "server_name": "a.org",
        "database": {"name": "psycopg2", "args": {"database": "starling"}},
        "redis": {"host": "127.0.0.1"},
        "oidc_providers": [
            {
                "idp_id": "x",
                "issuer": "https://idp.example/",
                "client_id": "c",
                "client_secret": "s",
            }
        ],
    }
    with pytest.raises(ConfigError) as e:
        load_config_dict(data, environ={})
    assert "public_baseurl" in str(e.value)
    cfg = load_config_dict({**data, "public_baseurl": "https://matrix.a.org/"}, environ={})
    assert cfg.client_base_url == "https://matrix.a.org/"
    cas = {"enabled": True, "server_url": "https://cas.example/cas"}
    del data["oidc_providers"]
    with pytest.raises(ConfigError) as e:
        load_config_dict({**data, "cas_config": cas}, environ={})
    assert "public_baseurl" in str(e.value)
