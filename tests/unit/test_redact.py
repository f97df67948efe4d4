"""Secrets by shape, as properties: whatever the token, host or path, the credential is
masked; whatever the ordinary user name or flag, nothing is."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpuwatch.redact import MASK, mask_url, redact, redact_argv

HEX = st.text("0123456789abcdef", min_size=40, max_size=40).filter(
    lambda t: any(c.isalpha() for c in t) and any(c.isdigit() for c in t))
# an issuer's random token: letters and digits, a capital, a small letter and a digit
TOKEN = st.text(string.ascii_letters + string.digits, min_size=20, max_size=48).filter(
    lambda t: any(c.isupper() for c in t) and any(c.islower() for c in t)
    and any(c.isdigit() for c in t))
LABEL = st.text(string.ascii_lowercase, min_size=1, max_size=10)
HOST = st.lists(LABEL, min_size=2, max_size=4).map(".".join)
PATH = st.lists(st.text(string.ascii_letters + string.digits + "-_.", min_size=1,
                        max_size=12), max_size=4).map(lambda p: "".join("/" + x for x in p))
SCHEME = st.sampled_from(["https", "http", "git", "ssh", "git+https"])
# a password as people write them (no ";" or "}": those end a connection-string value)
PASSWORD = st.text(string.ascii_letters + string.digits + "!#$%()*+-./:<=>?@[]^_|~",
                   min_size=8, max_size=40).filter(lambda p: any(c.isalnum() for c in p))


def _gone(secret: str, text: str) -> bool:
    return not any(secret[i:i + 8] in text for i in range(len(secret) - 7))


@settings(max_examples=150, deadline=None)
@given(SCHEME, st.one_of(HEX, TOKEN), HOST, PATH)
def test_a_token_as_a_url_user_is_masked(scheme: str, token: str, host: str,
                                         path: str) -> None:
    url = f"{scheme}://{token}@{host}{path}"
    assert redact(f"clone {url} failed") == f"clone {scheme}://{MASK}@{host}{path} failed"
    assert redact_argv(["git", "clone", url]) == ["git", "clone",
                                                  f"{scheme}://{MASK}@{host}{path}"]
    assert redact(f"{scheme}://{token}:x-oauth-basic@{host}{path}") == \
        f"{scheme}://{MASK}:{MASK}@{host}{path}"


@settings(max_examples=150, deadline=None)
@given(SCHEME, st.from_regex(r"[a-z]{1,10}([._-][a-z]{1,8}){0,2}(-?[0-9]{1,4})?",
                             fullmatch=True).filter(lambda u: len(u) < 20), HOST, PATH)
def test_an_ordinary_user_name_in_a_url_is_kept(scheme: str, user: str, host: str,
                                                path: str) -> None:
    """(under 20 characters without capitals: a token's shape starts there)"""
    url = f"{scheme}://{user}@{host}{path}"
    assert redact(url) == url and redact_argv(["git", "clone", url]) == ["git", "clone", url]


@settings(max_examples=150, deadline=None)
@given(PASSWORD.filter(lambda p: not set(p) & set(";{}\"'")), st.booleans(), HOST)
@example("0000%00<", True, "a.a")  # (a "<" and a "%00": the braced value whole)
def test_an_odbc_pwd_is_masked(password: str, braced: bool, host: str) -> None:
    value = "{" + password + ";x}" if braced else password
    conn = f"Driver={{ODBC Driver 18}};Server={host};UID=sa;PWD={value};Encrypt=yes"
    masked = f"Driver={{ODBC Driver 18}};Server={host};UID=sa;PWD={MASK};Encrypt=yes"
    assert redact(f"cannot connect: {conn}") == f"cannot connect: {masked}"
    assert redact_argv(["t.py", "--conn", conn]) == ["t.py", "--conn", masked]


@settings(max_examples=150, deadline=None)
@given(LABEL, PASSWORD.filter(lambda p: ":" not in p and not p.isdigit()
                              and not p.startswith("//")),  # (user://host: a URL)
       st.sampled_from(["--login", "--user", "-u"]))
@example("a", "0000%00+", "--login")  # (not URL-decoded: the "+" stays no " ")
def test_the_password_of_a_login_option_is_masked_its_user_kept(user: str, password: str,
                                                               option: str) -> None:
    assert redact_argv(["t.py", option, f"{user}:{password}"]) == ["t.py", option,
                                                                 f"{user}:{MASK}"]
    assert redact_argv(["t.py", f"{option}={user}:{password}"]) == [
        "t.py", f"{option}={user}:{MASK}"]
    assert redact(f"run: cli {option} {user}:{password} --x 1") == \
        f"run: cli {option} {user}:{MASK} --x 1"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**19), TOKEN,
       st.sampled_from(["discord.com", "discordapp.com", "ptb.discord.com"]))
def test_a_discord_webhook_is_masked(hook_id: int, token: str, host: str) -> None:
    url = f"https://{host}/api/webhooks/{hook_id}/{token}"
    shown = redact_argv(["t.py", "--notify-url", url])[2]
    assert _gone(token, shown) and shown.startswith(f"https://{host}/api/webhooks/")


@settings(max_examples=100, deadline=None)
@given(TOKEN)
def test_an_authorization_option_is_masked(token: str) -> None:
    assert redact_argv(["t.py", "--authorization", token]) == ["t.py", "--authorization", MASK]
    assert redact_argv(["t.py", f"--proxy-authorization={token}"]) == [
        "t.py", f"--proxy-authorization={MASK}"]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["auth", "token", "secret", "authorization", "password"]),
       st.sampled_from(["mode", "type", "method", "scheme"]),
       st.sampled_from(["-", "_"]), st.from_regex(r"[a-z]{2,12}", fullmatch=True))
def test_a_flag_naming_a_kind_of_credential_is_no_secret(word: str, kind: str, sep: str,
                                                         value: str) -> None:
    argv = ["t.py", f"--{word}{sep}{kind}", value, f"--{word}{sep}{kind}={value}"]
    assert redact_argv(argv) == argv


@settings(max_examples=100, deadline=None)
@given(st.text(string.ascii_letters + string.digits, min_size=10, max_size=40))
def test_a_grafana_service_account_token_is_masked(body: str) -> None:
    token = f"glsa_{body}_0a1b2c3d"
    assert _gone(token, redact(f"GET /api/search ({token}) -> 401"))
    assert _gone(token, redact(f"https://grafana.example/d/x?auth_token={token}&orgId=1"))


@settings(max_examples=150, deadline=None)
@given(SCHEME, st.one_of(LABEL, TOKEN), st.one_of(st.none(), LABEL, TOKEN), HOST, PATH,
       st.sampled_from(["auth_token", "access_token", "api_key", "password", "X-Amz-Signature"]),
       TOKEN)
def test_a_url_as_shown_has_no_user_password_or_secret_parameter(
        scheme: str, user: str, password: str | None, host: str, path: str, parameter: str,
        token: str) -> None:
    userinfo = user if password is None else f"{user}:{password}"
    url = f"{scheme}://{userinfo}@{host}{path}?orgId=1&{parameter}={token}"
    assert mask_url(url) == f"{scheme}://{MASK}@{host}{path}?orgId=1&{parameter}={MASK}"


@pytest.mark.parametrize("url", [
    "https://github.com/gpuwatch/gpuwatch/blob/main/docs/runbooks.md",
    "https://example.com:8443/users/me@example.com", "mailto:alice@example.com",
    "https://grafana.example/d/gpuwatch-job?var-training_job=gpt&orgId=1&refresh=30s"])
def test_a_url_without_credentials_is_shown_as_it_is(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize("text", [
    'Server=db;User Id=sa;Password="p;Secr3tValue";Encrypt=yes',  # quoted (ADO.NET)
    "Server=db;UID=sa;PWD=ab'Secr3tValue;Encrypt=yes",  # a quote inside
    "Server=db;UID=sa;PWD='Secr3t''Value';Encrypt=yes",  # quoted, a doubled quote in it
    "curl -uadmin:Secr3tValue https://x",  # curl's -u with its value attached
    "curl --proxy-user admin:Secr3tValue https://x",
    "wget --http-user=admin --basic-auth admin:Secr3tValue https://x",
])
def test_quoted_passwords_and_curl_s_login_forms_are_masked(text: str) -> None:
    """A quoted connection-string password was left whole with the mask before it
    ("PWD=***'Secr3tValue"), and curl's -uuser:pw and --proxy-user not masked at all."""
    assert "Secr3t" not in redact(text) and "Value" not in redact(text)
    assert not any("Secr3t" in a for a in redact_argv(text.split(" ")))
    assert "Server=db" in redact(text) or "https://x" in redact(text)
