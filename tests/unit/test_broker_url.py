"""amqp_connection values: zones, URLs, TLS (spec §6.1, test vectors §15.8)."""

from __future__ import annotations

import pytest

from kazoo_amqp.core.broker_url import BrokerSpec, parse_connection, redact_url
from kazoo_amqp.errors import ConfigError

# value -> (zone, primary, user, password, host, port, vhost, tls); primary zone is "local".
SPEC_15_8 = [
    (
        "amqp://guest:guest@localhost:5672",
        ("local", True, "guest", "guest", "localhost", 5672, "/", False),
    ),
    ("amqp://localhost", ("local", True, "guest", "guest", "localhost", 5672, "/", False)),
    ("kazoo://u:p@h:5673", ("local", True, "u", "p", "h", 5673, "/", False)),
    # rabbitmq-c gives the empty vhost here; we use "/" (compat difference).
    ("amqp://h/", ("local", True, "guest", "guest", "h", 5672, "/", False)),
    ("amqp://h/%2f", ("local", True, "guest", "guest", "h", 5672, "/", False)),
    ("amqp://u:p@h:1234/v%2Fx", ("local", True, "u", "p", "h", 1234, "v/x", False)),
    ("amqps://h", ("local", True, "guest", "guest", "h", 5671, "/", True)),
    ("amqp://[::1]:5672", ("local", True, "guest", "guest", "::1", 5672, "/", False)),
    ("amqp://user@h", ("local", True, "user", "guest", "h", 5672, "/", False)),
    ("zone=east;amqp://h2", ("east", False, "guest", "guest", "h2", 5672, "/", False)),
    ("zone=local;amqp://h3", ("local", True, "guest", "guest", "h3", 5672, "/", False)),
]

MORE_VALID = [
    ("amqp://", ("local", True, "guest", "guest", "localhost", 5672, "/", False)),
    ("amqps://u:p@h:5999/vh", ("local", True, "u", "p", "h", 5999, "vh", True)),
    ("amqp://u:p%40ss%3Aw%2Frd@h", ("local", True, "u", "p@ss:w/rd", "h", 5672, "/", False)),
    ("amqp://us%65r:@h", ("local", True, "user", "", "h", 5672, "/", False)),
    ("amqp://u:p@[fe80::1]:5673/v", ("local", True, "u", "p", "fe80::1", 5673, "v", False)),
    ("amqp://[::1]", ("local", True, "guest", "guest", "::1", 5672, "/", False)),
    ("amqp://h:5672/caf%C3%A9", ("local", True, "guest", "guest", "h", 5672, "café", False)),
    ("amqp://h/%zz", ("local", True, "guest", "guest", "h", 5672, "%zz", False)),
    ("zone=west;amqps://h", ("west", False, "guest", "guest", "h", 5671, "/", True)),
]


def _fields(spec: BrokerSpec) -> tuple[object, ...]:
    return (
        spec.zone,
        spec.primary,
        spec.user,
        spec.password,
        spec.host,
        spec.port,
        spec.vhost,
        spec.tls,
    )


@pytest.mark.parametrize(("value", "expected"), SPEC_15_8 + MORE_VALID)
def test_connection_value_parses_like_rabbitmq_c(value: str, expected: tuple[object, ...]) -> None:
    """Each §15.8 row (and a few more) gives the zone, credentials, address, vhost and TLS."""
    assert _fields(parse_connection(value, server_id=1, primary_zone="local")) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("zone=;amqp://h", "zone name after 'zone=' is empty"),
        ("zone=east", "needs a ';'"),
        ("amqp://h:abc", "port 'abc' is not a number"),
        ("http://h", "scheme 'http' is not supported"),
        ("amqp://h//", "write a '/' inside it as %2F"),
        ("amqp://h:", "port '' is not a number"),
        ("amqp://h:0", "port '0' is not a number"),
        ("amqp://h:65536", "port '65536' is not a number"),
        ("amqp://h:-1", "port '-1' is not a number"),
        ("amqp://h:1:2", "more than one ':PORT'"),
        ("AMQP://h", "scheme 'AMQP' is not supported"),
        ("localhost:5672", "is not supported"),
        ("amqp://h?heartbeat=10", "query strings and fragments are not supported"),
        ("amqp://h/v#frag", "query strings and fragments are not supported"),
        ("amqp://h[::1]", "'[' may only start an IPv6 host"),
        ("amqp://[::1", "needs a closing ']'"),
        ("amqp://[::1]x:5672", "after the IPv6 host"),
        ("amqp://u@h@x", "unexpected '@'"),
        ("amqp://h/%ff", "not valid UTF-8"),
        ("amqp://" + "h" * 506, "at most 512 are accepted"),
    ],
)
def test_bad_connection_value_is_a_config_error(value: str, fragment: str) -> None:
    """Malformed zone prefixes, URLs and over-long values are ConfigErrors that say why."""
    with pytest.raises(ConfigError) as info:
        parse_connection(value, server_id=1, primary_zone="local")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("config key 'amqp_connection' = ")
    assert "e.g. amqp_connection = " in message
    assert info.value.key == "amqp_connection"


@pytest.mark.parametrize(
    ("value", "mechanism", "url"),
    [
        ("amqps://h", "PLAIN", "amqps://h"),
        ("amqps://h?auth_mechanism=external", "EXTERNAL", "amqps://h"),
        ("amqps://u@h:5671/v?auth_mechanism=EXTERNAL", "EXTERNAL", "amqps://u@h:5671/v"),
        ("amqps://h/?auth_mechanism=External", "EXTERNAL", "amqps://h/"),
        ("amqp://u:p@h?auth_mechanism=plain", "PLAIN", "amqp://u:p@h"),
        ("zone=z;amqps://h?auth_mechanism=external", "EXTERNAL", "amqps://h"),
    ],
)
def test_auth_mechanism_query_parameter_chooses_the_login(
    value: str, mechanism: str, url: str
) -> None:
    """``?auth_mechanism=external`` logs in with the client certificate; PLAIN by default."""
    spec = parse_connection(value, server_id=1, primary_zone="local")
    assert (spec.auth_mechanism, spec.url) == (mechanism, url)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("amqp://h?auth_mechanism=external", "needs amqps://"),
        ("amqps://h?auth_mechanism=cram-md5", "auth_mechanism 'cram-md5' is not supported"),
        ("amqps://h?auth_mechanism=", "auth_mechanism '' is not supported"),
        ("amqps://h?auth_mechanism=external&heartbeat=5", "query strings and fragments"),
        ("amqps://h?heartbeat=5&auth_mechanism=external", "query strings and fragments"),
    ],
)
def test_bad_auth_mechanism_is_a_config_error(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_connection(value, server_id=1, primary_zone="local")


def test_value_of_exactly_512_characters_is_accepted() -> None:
    """The 512-character limit counts the whole value, zone prefix included."""
    value = "zone=z;amqp://" + "h" * (512 - len("zone=z;amqp://"))
    assert len(value) == 512
    assert parse_connection(value, server_id=1, primary_zone="local").zone == "z"


@pytest.mark.parametrize(
    "value",
    ["amqp://u:s3cr#t@h", "amqp://u:s3cr?t@h/v", "amqp://u:12#34@h", "zone=z;amqp://u:s3cr#t@h"],
)
def test_error_for_unencoded_password_delimiter_does_not_leak_the_password(value: str) -> None:
    """A password with an unencoded delimiter gives an encoding hint and never echoes it."""
    with pytest.raises(ConfigError) as info:
        parse_connection(value, server_id=1, primary_zone="local")
    message = str(info.value)
    assert "s3cr" not in message and "12#34" not in message and "34" not in message
    assert "percent-encode" in message


def test_server_id_and_primary_follow_the_arguments() -> None:
    """The caller's server id is kept; primary means the zone equals the primary zone."""
    spec = parse_connection("zone=east;amqp://h", server_id=3, primary_zone="east")
    assert (spec.server_id, spec.zone, spec.primary) == (3, "east", True)
    other = parse_connection("amqp://h", server_id=4, primary_zone="east")
    assert (other.zone, other.primary) == ("east", True)


def test_url_keeps_the_url_part_with_kazoo_rewritten_to_amqp() -> None:
    """``url`` drops the zone prefix and rewrites ``kazoo://`` to ``amqp://``."""
    spec = parse_connection("zone=b;kazoo://u:p@h:5673/v", server_id=2, primary_zone="local")
    assert spec.url == "amqp://u:p@h:5673/v"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://u:secret@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqps://u:p%40ss@[::1]/v", "amqps://u:***@[::1]/v"),
        ("amqp://u:@h", "amqp://u:***@h"),
        ("amqp://user@h", "amqp://user@h"),
        ("amqp://h:5672/v%40x", "amqp://h:5672/v%40x"),
        ("amqp://h", "amqp://h"),
    ],
)
def test_redacted_url_hides_only_the_password(url: str, redacted: str) -> None:
    """``redacted`` replaces the password with *** and leaves everything else as written."""
    assert redact_url(url) == redacted
    assert parse_connection(url, server_id=1, primary_zone="local").redacted == redacted


def test_repr_never_shows_the_password() -> None:
    """repr() and str() of a BrokerSpec mask the password field and the URL's password."""
    spec = parse_connection("amqp://u:topsecret@h", server_id=1, primary_zone="local")
    assert spec.password == "topsecret"
    for text in (repr(spec), str(spec), f"{spec}"):
        assert "topsecret" not in text
        assert "password='***'" in text


def test_broker_spec_is_frozen_and_hashable() -> None:
    """BrokerSpec is an immutable value object."""
    spec = parse_connection("amqp://h", server_id=1, primary_zone="local")
    with pytest.raises(AttributeError):
        spec.port = 1  # type: ignore[misc]
    assert spec == parse_connection("amqp://h", server_id=1, primary_zone="local")
    assert len({spec, spec}) == 1


def test_custom_key_name_appears_in_errors() -> None:
    """The config key given by the caller is the one named in the message."""
    with pytest.raises(ConfigError, match=r"^config key 'brokers\[2\]' = "):
        parse_connection("amqp://h:x", server_id=2, primary_zone="local", key="brokers[2]")


def test_non_string_value_is_a_config_error() -> None:
    """A value that is not a string is rejected with an example."""
    with pytest.raises(ConfigError, match="must be a string"):
        parse_connection(5, server_id=1, primary_zone="local")  # type: ignore[arg-type]
