from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.settings import Settings, load_settings, redact_url, split_urls

pytestmark = pytest.mark.timeout(30)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMQP_URL", "TASKSHUTTLE_QUEUE", "TASKSHUTTLE_PREFETCH", "TASKSHUTTLE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert (settings.queue, settings.prefetch, settings.workers) == ("tasks", 100, 2)
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/%2F"


def test_environment_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@broker:5672/%2F")
    monkeypatch.setenv("TASKSHUTTLE_QUEUE", "from-env")
    monkeypatch.setenv("TASKSHUTTLE_WORKERS", "7")
    settings = load_settings(queue="from-flag", workers=None)
    assert settings.amqp_url == "amqp://u:p@broker:5672/%2F"
    assert settings.queue == "from-flag"
    assert settings.workers == 7


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@host:5672/%2F", "amqp://guest:***@host:5672/%2F"),
        ("amqp://host/vhost", "amqp://host/vhost"),
        ("amqps://u:p%40ss@h/", "amqps://u:***@h/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),  # an unencoded @: the last one ends it
        # An unencoded / ? # in the password: where the user ends is not known safely.
        ("amqp://guest:se/cret@host:5672/%2F", "amqp://***@host:5672/%2F"),
        ("amqp://guest:se?cret@host/", "amqp://***@host/"),
        ("amqp://guest:se#cret@host/", "amqp://***@host/"),
        ("amqp://user@host/", "amqp://user@host/"),  # no password to hide
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "cret" not in shown


@pytest.mark.parametrize("password", ["se/cret", "se?cret", "se#cret"])
def test_a_password_with_an_unencoded_delimiter_is_never_printed(password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(amqp_url=f"amqp://guest:{password}@host:5672/%2F")
    message = str(caught.value)
    assert "cret" not in message and "guest:se" not in message
    assert "%2F, %3F, %23" in message  # and it says how to write it


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("heartbeat=abc", "Invalid heartbeat value 'abc'"),
        ("bogus=1", "Unknown URL parameter: 'bogus'"),
        ("heartbeat=-1", "heartbeat must >= 0"),
    ],
)
def test_a_bad_url_query_value_is_a_one_line_config_error(query: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(amqp_url=f"amqp://guest:secret@h:5672/%2F?{query}")
    message = str(caught.value)
    assert said in message and "\n" not in message and "secret" not in message


def test_repr_never_shows_the_password() -> None:
    assert "secret" not in repr(load_settings(amqp_url="amqp://u:secret@h/"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"amqp_url": "http://h"}, "scheme must be amqp:// or amqps://"),
        ({"amqp_url": "amqp://u:secret@:5/"}, "no host"),
        ({"prefetch": 0}, "invalid prefetch"),
        ({"queue": "has space"}, "invalid queue"),
    ],
)
def test_invalid_settings_are_one_line_config_errors(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_bad_value_from_the_environment_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKSHUTTLE_WORKERS", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == "invalid TASKSHUTTLE_WORKERS: must be at least 1"
    assert load_settings(workers=3).workers == 3  # an explicit value wins, and is checked alone


def test_settings_built_from_values_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSHUTTLE_WORKERS", "0")
    monkeypatch.setenv("AMQP_URL", "garbage")
    assert Settings(queue="q").workers == 2


def test_a_comma_separated_list_names_a_cluster_s_nodes() -> None:
    urls = " amqp://u:secret@n1:5681/%2F , amqp://u:secret@n2:5682/%2F,"
    settings = Settings(amqp_url=urls)
    assert settings.amqp_url == "amqp://u:secret@n1:5681/%2F,amqp://u:secret@n2:5682/%2F"
    assert split_urls(settings.amqp_url) == [
        "amqp://u:secret@n1:5681/%2F",
        "amqp://u:secret@n2:5682/%2F",
    ]
    assert settings.safe_url == "amqp://u:***@n1:5681/%2F,amqp://u:***@n2:5682/%2F"


@pytest.mark.parametrize(
    ("urls", "said"),
    [
        ("amqp://u:p@n1/,http://n2/", "scheme must be amqp:// or amqps://"),
        ("amqp://u:p@n1/,amqp://u:p@n2:0/", "port 0"),
        (" , ", "no AMQP URL given"),
    ],
)
def test_each_url_of_a_list_is_checked(urls: str, said: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(amqp_url=urls)
    assert said in str(error.value) and "\n" not in str(error.value)


def test_a_comma_inside_a_password_never_prints_any_of_it() -> None:
    url = "amqp://guest:s3cr,etZ@host/%2F"
    with pytest.raises(ConfigError) as error:
        load_settings(amqp_url=url)
    assert "%2C" in str(error.value)
    assert "s3cr" not in str(error.value) and "etZ" not in str(error.value)
    assert "s3cr" not in redact_url(url) and "etZ" not in redact_url(url)


def test_each_setting_is_declared_once_and_the_model_reads_it() -> None:
    from common.defaults import ENVIRONMENT, declared

    fields = declared()
    assert list(Settings.model_fields) == list(fields)  # no field of the model's own
    for name, field in fields.items():
        assert Settings.model_fields[name].default == field.default, name
        assert field.setting.help, name
        assert ENVIRONMENT[name] == field.setting.env
    assert Settings.model_fields["max_attempts"].default == 3
    assert len(set(ENVIRONMENT.values())) == len(ENVIRONMENT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prefetch": 65536}, "invalid prefetch: must be at most 65535"),
        ({"workers": 257}, "invalid workers: must be at most 256"),
        ({"max_deaths": 0}, "invalid max_deaths: must be at least 1"),
        ({"connect_timeout": -1}, "invalid connect_timeout: must be at least 0"),
        ({"shutdown_timeout": 0}, "invalid shutdown_timeout: must be more than 0"),
        ({"queue": ""}, "invalid queue: must be at least 1 characters long"),
        ({"queue": "q" * 201}, "invalid queue: must be at most 200 characters long"),
        ({"queue": "a/b"}, "invalid queue: must match ^[A-Za-z0-9_.:-]+$"),
    ],
)
def test_the_declared_bounds_are_checked(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert str(caught.value) == message


def test_the_declaration_imports_no_pydantic() -> None:
    import subprocess
    import sys

    code = "import sys, common.defaults; print('pydantic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout == "False\n", done.stderr
