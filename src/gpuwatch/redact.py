"""Secrets out of every text that leaves the process (logs, errors, run-log meta, console).

Two nets, both applied by :func:`redact`:

- by value: each secret gpuwatch is given (``register``) or finds in a secret-named
  environment variable (``register_environ``) is replaced in every form a platform
  or a library may print it: as given, stripped (a Kubernetes secret made
  ``--from-file`` ends in a newline), JSON-escaped, URL-quoted, ``repr``-escaped;
- by shape: URL passwords (``https://user:pw@host``) and tokens as a URL's user
  (``https://<40 hex>@github.com``, ``https://TOKEN:x-oauth-basic@...``), Slack, Discord
  and Teams webhook paths, connection strings' ``;PWD=``, ``--login user:pw``,
  ``--token X`` / ``--token=X`` arguments and ``API_KEY=X`` assignments whose name
  says secret, and tokens whose issuers give them a telling prefix (``hf_``, ``ghp_``,
  ``glsa_``, ``AKIA``, ``sk-``, ``xoxb-``, JWTs...) wherever they stand.

This module is in the lowest layer: everything above may call it, it calls nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

MASK = "***"
MIN_SECRET_CHARS = 6  # shorter values are too likely to occur by chance to replace
# (token and auth as words of their own: not max_tokens, tokenizer, pad_token_id, author;
# authorization as a name's last word: not --authorization-url)
_SECRET_WORDS = r"(?:token(?![a-z]|[-_]ids?(?![a-z]))|secret|passw(?:or)?d|passphrase|" \
                r"(?<=[-_.])pwd|" \
                r"api[-_]?key|access[-_]?key|private[-_]?key|auth(?![a-z])|credential|" \
                r"authori[sz]ation(?![\w.-])|" \
                r"webhook|cookie|session[-_]?key|signature|dsn(?![a-z])|" \
                r"(?:account|storage|encryption|signing|master)[-_]?key)"
# Whole names that say secret though their words alone do not: --key, --wandb-key,
# --openai-key, --config.wandb.key, --db-pass, DB_PASS, --cred (not --sort-key,
# --csv-img-key, --data.sort.key, --first-pass, SSL_KEY_FILE).
_PROVIDER_KEY = (r"(?:wandb|openai|anthropic|comet|neptune|clearml|ssh|hf|huggingface|cohere|"
                 r"mistral|groq|pinecone|replicate|openrouter|datadog|sentry|kaggle|github|"
                 r"gitlab|slack|stripe|twilio|aws|azure|gcp|hmac|license|licence|ngrok|"
                 r"together|fireworks|deepseek|voyage|elastic|sa|gcs)[-_.]?(?:api[-_]?)?key")
_SECRET_NAMES = (rf"(?:key|pw|pat|bearer|jwt|psk|otp|sas|{_PROVIDER_KEY}|creds?|"
                 r"(?:(?:db|database|sql|mysql|postgres|pg|redis|mongo|admin|user|root|ldap|"
                 r"smtp|mail|ftp|ssh|proxy)[-_])?"
                 r"pass)")
# Not a secret's name though it holds a secret word: a measure of one (--token-budget,
# --session-key-len), a kind of one (--auth-mode, --token-type), a tokenizer's special
# token (--pad-token).
_NOT_SECRET = (r"(?![\w.-]*[-_.](?:len|length|budget|limit|count|size|num|max|min|dim|"
               r"mode|type|method|scheme)s?"
               r"(?![\w.-]))(?!(?:[\w.-]*[-_.])?(?:pad|eos|bos|unk|sep|cls|mask)[-_]?token)")
# A name holding a secret word, matched in linear time: a lookahead finds the word, then
# the name is taken whole and never given back (nested "[\w.-]*" around the word made
# a long argument cost cubic time, with the GIL held). Patterns anchor where it starts.
_WORDY = rf"{_NOT_SECRET}(?=[\w.-]*?{_SECRET_WORDS})[\w.-]++"
_NAME = (rf"(?:{_WORDY}|(?<![\w.])-{{0,2}}(?:(?:\w++\.)*?{_PROVIDER_KEY}|{_SECRET_NAMES})"
         r"(?![\w.-]))")
# A name that says secret: HF_TOKEN, hf-token, GPUWATCH_SLACK__WEBHOOK_URL, aws_secret_access_key.
SECRET_NAME = re.compile(rf"(?i)^(?:{_WORDY}|{_SECRET_NAMES})$")
# (the password runs to the argument's last "@" within 512 characters: passwords hold "/"
# and "@" unescaped; a port is no password: host:8443/path@x)
_URL_PASSWORD = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*+://[^\s/:@]*+):"
                           r"(?!\d+(?:/|$))(\S{1,512})@")  # (bounded: linear time)
# A token as a URL's user: https://<40 hex>@github.com, https://TOKEN:x-oauth-basic@...,
# a Sentry DSN's key: 20 or more letters, digits, "_", "-" or "~" with a digit and a
# letter, or 16 or more with a digit, a capital and a small letter (not git@, jane.doe@,
# build-bot-2024@)
_URL_TOKEN_USER = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*+://)"
                             r"(?:(?:(?=[\w~-]*?\d)(?=[\w~-]*?[A-Za-z])[\w~-]{20,}+|"
                             r"(?=[\w~-]*?\d)(?=[\w~-]*?[A-Z])(?=[\w~-]*?[a-z])[\w~-]{16,}+)"
                             r"(?=@|:[^\s/@]{1,512}@)|[^\s/:@]++(?=:x-oauth-basic@))")
# Webhook paths: Slack, Discord, Microsoft Teams (as written, or URL-encoded)
_S = r"(?:/|%2F)"
_WEBHOOK = re.compile(rf"(?i)((?:hooks\.slack\.com{_S}(?:services|workflows|triggers)|"
                      rf"(?<![\w-])(?:(?:ptb|canary)\.)?discord(?:app)?\.com{_S}api"
                      rf"(?:{_S}v\d+)?{_S}webhooks|\.webhook\.office\.com{_S}webhookb2|"
                      rf"outlook\.office(?:365)?\.com{_S}webhook){_S})[^\s\"'<>&]+")
# An ODBC or ADO.NET connection string's password: Driver=...;UID=sa;PWD=x; (a value in
# braces or quotes whole: PWD={a;b}, Password="a;b", PWD='it''s'; else up to the next ";",
# quotes and all). Only after a ";": PWD=/home/me is the shell's directory.
_CONN_PWD = re.compile(r"(?i)((?<=;)\s*+(?:pwd|password)\s*=\s*)(?:\{[^}\r\n]*+\}?|"
                       r"\"(?:[^\"\r\n]|\"\")*+\"?|'(?:[^'\r\n]|'')*+'?|[^;\r\n]*+)")
# --login user:pw, --user=user:pw, -u user:pw or -uuser:pw (curl's, a registry's),
# --proxy-user, --basic-auth, --http-user: the part after the colon (not a uid:gid or a
# port: digits alone)
_LOGIN_OPTION = r"(?:--?(?:login|user|proxy-user|basic-auth|http-user)|-u)"
_LOGIN = re.compile(rf"(?i)((?<![\w.-]){_LOGIN_OPTION}(?:\s+|=|(?<=-u)(?=[^\s=]))[\"']?"
                    r"[^\s:@/\"']{1,64}:)(?!//)(?!\d+(?![^\s\"']))[^\s\"']+")
_USER_PASSWORD = re.compile(r"([^\s:@/\"']{1,64}:)(?!//)(?!\d+$)(.+)", re.DOTALL)
# Tokens whose issuers give them a prefix: Hugging Face, GitHub, GitLab, Grafana (service
# accounts' glsa_, Cloud's glc_), AWS access key ids, OpenAI/Anthropic-style keys, Slack
# (bot, user and app-level), Google API keys, JWTs.
_TOKEN = re.compile(r"(?:(?<![\w-])|(?<=%22)|(?<=%27))"  # (URL-quoted too)
                    r"(?:hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|"
                    r"github_pat_\w{20,}|glpat-[\w-]{20,}|glsa_\w{10,}|glc_[\w+/=-]{20,}|"
                    r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])|"
                    r"sk-(?:proj|ant|svcacct|admin)-[\w-]{20,}|sk-[A-Za-z0-9]{32,}|"
                    r"xox[abeprs]-[\w-]{10,}|xapp-[\w-]{10,}|AIza[\w-]{35}|"
                    r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,})")
# (the word after is a credential only if it has a digit: not "token embeddings")
_BEARER = re.compile(r"(?i)\b((?:bearer|basic|token)\s+(?=[A-Za-z0-9._~+/=-]*\d))"
                     r"[A-Za-z0-9._~+/=-]{8,}")
# A signed URL's signature (Azure SAS, S3 and GCS presigned): ?sig=X, &X-Amz-Signature=X;
# a function key or an OAuth code (?code=X: Azure Functions), a session (;jsessionid=X)
_SIGNED = re.compile(r"(?i)([?&;](?:sig|x-amz-signature|x-goog-signature|code|jsessionid)=)"
                     r"[^&;\s\"'<>]+")
# HTTP headers that carry credentials: "Authorization: ...", "X-Api-Key: ..." (each name
# from its start, found by a lookahead and never given back: linear time)
_HEADER = re.compile(r"(?i)(?<![\w-])((?:proxy-)?authorization|"
                     r"(?=[\w-]*?api-key(?![\w-]))[\w-]++|x-(?=[\w-]*?token(?![\w-]))[\w-]++|"
                     r"(?:set-)?cookie)(\s*:\s*)[^\r\n]+")
# --hf-token=X, HF_TOKEN=X, ?api_key=X, environ['HF_TOKEN']='X', password = "X" (a quoted
# value whole, spaces and all; else up to a space, quote or separator)
_QUOTED = r"\"[^\"\n]*+\"|'[^'\n]*+'"  # a quoted value, spaces and all (one line)
_ASSIGNED = re.compile(rf"(?i)((?<![\w.-]){_NAME}(?:[\"']\])?\s*=\s*)"
                       rf"(?:{_QUOTED}|[\"']?[^\s\"',;&]+)")
# --password X, '--hf-token', 'X' (a command line in text: a CalledProcessError's list)
_OPTION = re.compile(rf"(?i)((?<![\w.-])--?{_NAME}[\"']?(?:\s*,\s*|\s+))"
                     rf"(?!--?\w)(?:{_QUOTED}|[^\s\"',\])]+)")
# password: X at a line's start (YAML, credentials files)
_COLON = re.compile(rf"(?im)^([ \t]*+{_NAME}[ \t]*:[ \t]*)\S.*$")  # (one line each)
# "api_key": "X", "wandb_key": "X" (JSON, YAML flow, Python reprs)
_FIELD = re.compile(rf"(?i)([\"'](?:{_WORDY}|(?:\w+[-_.])?{_PROVIDER_KEY}|{_SECRET_NAMES})[\"']"
                    r"\s*:\s*[\"'])[^\"']+")
# user:password@host without a scheme (a proxy setting, a connection string's middle)
# (not mailto:a@b, nor an image's tag before its digest: python:3.11@sha256:ab12...)
_USERINFO = re.compile(r"(?<![\w/@:.%+-])(?!mailto:)([\w.~+-]{1,64}):(?!\d+(?:[/@]|$))"
                       r"([^\s:@/\"']{1,256})@(?=[\w-]+(?:\.[\w-]+)*(?::\d+)?(?![\w@:]))")
# Text with URL-encoded bytes (%2F, %40, %3A) is judged decoded as well, a run of it
# at a time (each taken whole, never given back: linear time)
_RUN = re.compile(r"[^\s\"'<>]++")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# NAME:value where NAME says secret (HF_TOKEN:hf_x in one argument)
_NAMED = re.compile(rf"(?i)(?<![\w.-])({_NAME}:)(?!//)\S+")
# Environment names whose last word says secret though SECRET_NAME's words do not:
# KAGGLE_KEY, GITHUB_PAT, DB_PW (not SSL_KEY_FILE, PRIMARY_KEY_COLUMN)
_ENV_SECRET = re.compile(r"(?i)[-_](?:key|pat|pass|pw|pwd)$")

_lock = threading.Lock()
_forms: tuple[str, ...] = ()  # every form of every registered secret, longest first


def forms(secret: str) -> set[str]:
    """The ways ``secret`` may appear in printed text."""
    out = set()
    for value in {secret, secret.strip()}:
        if len(value.strip()) < MIN_SECRET_CHARS:
            continue
        # (an environment value can hold bytes that are no UTF-8: kept as surrogates)
        encoded = value.encode("utf-8", "surrogateescape")
        quoted = quote(encoded, safe="")
        out |= {value, json.dumps(value)[1:-1], quoted, quote_plus(encoded),
                quote(encoded), repr(value)[1:-1], base64.b64encode(encoded).decode(),
                base64.urlsafe_b64encode(encoded).decode(),
                base64.b64encode(encoded).decode().rstrip("="), encoded.hex(),
                encoded.hex().upper(),
                re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quoted)}
    return {f for f in out if len(f.strip()) >= MIN_SECRET_CHARS}


def register(*secrets: str | None) -> None:
    """Remember secrets so that ``redact`` removes them wherever they appear."""
    global _forms
    new: set[str] = set()
    for secret in secrets:
        if secret:
            new |= forms(secret)
    if not new:
        return
    with _lock:
        _forms = tuple(sorted(set(_forms) | new, key=len, reverse=True))


# Names that look secret and are not: the shell's working directories ("pwd"). Masking
# them would hide every path under the current directory in every message.
NOT_SECRET = frozenset({"PWD", "OLDPWD"})


def register_environ(environ: Mapping[str, str]) -> None:
    """Register the values of environment variables whose names say secret (HF_TOKEN, ...)."""
    register(*(value for name, value in environ.items()
               if (SECRET_NAME.match(name) or _ENV_SECRET.search(name))
               and name not in NOT_SECRET))


def redact(text: str) -> str:
    """``text`` with every secret-shaped value and every registered secret masked.
    Shapes go first: a registered value that is only a prefix of a secret-shaped one
    (``https://hooks.slack.com``) must not hide the shape from its pattern."""
    text = _redact_plain(text)  # (first as written: a value spanning runs is one value)
    if "%" in text:
        text = _redact_plain(_RUN.sub(_decoded_if_secret, text))
    return text


# A URL's user and password (its authority up to the last "@"), and a query or fragment
# parameter (?auth_token=X, #access_token=X)
_AUTHORITY_USER = re.compile(r"^(\s*+[A-Za-z][A-Za-z0-9+.-]*+://)[^/?#\s]*@")  # (anchored)
_PARAMETER = re.compile(r"([?&;#])([^=&;#\s]++)=([^&;#\s]*+)")


def mask_url(url: str) -> str:
    """``url`` as it may be shown: its user and password masked whole (a token may be the
    user: ``https://***@host``), the value of each query or fragment parameter whose name
    says secret (``?auth_token=***``), then whatever else ``redact`` finds."""
    url = _AUTHORITY_USER.sub(rf"\1{MASK}@", url, count=1)
    url = _PARAMETER.sub(_masked_parameter, url)
    return redact(url)


def _masked_parameter(match: re.Match[str]) -> str:
    name = unquote_plus(match[2])
    if match[3] and (SECRET_NAME.match(name) or _ENV_SECRET.search(name)):
        return f"{match[1]}{match[2]}={MASK}"
    return match[0]


def _decoded_if_secret(match: re.Match[str]) -> str:
    """A run of text as it was, or, where it is URL-encoded and decoding shows a secret
    (``postgresql%3A%2F%2Fuser%3Apw%40host``), decoded and redacted."""
    run = match[0]
    if not _PERCENT.search(run):
        return run
    decoded = unquote_plus(run)
    cleaned = _redact_plain(decoded)
    if cleaned == decoded:
        return run
    # (decoded control characters stay encoded: a %0A must not forge a log line)
    return _CONTROL.sub(lambda m: f"%{ord(m[0]):02X}", cleaned)


def _redact_plain(text: str) -> str:
    """``redact`` without decoding."""
    text = _URL_TOKEN_USER.sub(rf"\1{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _WEBHOOK.sub(rf"\1{MASK}", text)
    text = _CONN_PWD.sub(_masked_value, text)
    text = _LOGIN.sub(_masked_value, text)
    text = _TOKEN.sub(MASK, text)
    text = _BEARER.sub(rf"\1{MASK}", text)
    text = _HEADER.sub(rf"\1\2{MASK}", text)
    text = _FIELD.sub(rf"\1{MASK}", text)
    text = _SIGNED.sub(rf"\1{MASK}", text)
    text = _ASSIGNED.sub(_masked_value, text)
    text = _OPTION.sub(_masked_value, text)
    text = _COLON.sub(rf"\1{MASK}", text)
    text = _NAMED.sub(rf"\1{MASK}", text)
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    # (after the registered values: a password holding ":" and "@" is masked whole)
    return _USERINFO.sub(rf"\1:{MASK}@", text)


def _masked_value(match: re.Match[str]) -> str:
    """An assignment with its value masked, the value's quotes kept."""
    value = match[0][len(match[1]):]
    quote = value[0] if value[:1] in ("'", '"') else ""
    close = quote if quote and len(value) > 1 and value.endswith(quote) else ""
    return f"{match[1]}{quote}{MASK}{close}"


# What a flag looks like (``--model_name_or_path``, ``--fp16=true``, ``-v``, ``-lr``):
# lower-case words, or a few letters after one dash. A secret's value that starts with
# "-" (one random token in 64 does) has digits or capitals in it.
_FLAG = re.compile(r"--[a-z][a-z0-9_.-]*(=.*)?|-[a-z]{1,6}", re.DOTALL)
_LOGIN_ARG = re.compile(_LOGIN_OPTION, re.IGNORECASE)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line safe to record: the whole value of a secret-named option masked
    (``--hf-token X``, ``--token=X``, ``KEY=X``, whatever the value holds), the password
    of ``--login user:pw`` (``--user``, ``-u``), then each argument redacted."""
    out: list[str] = []
    hide_next = login_next = False
    for arg in argv:
        if login_next:  # (--login user:pw: the part after the colon)
            login_next = False
            if match := _USER_PASSWORD.fullmatch(arg):
                out.append(f"{match[1]}{MASK}")
                continue
        login_next = bool(_LOGIN_ARG.fullmatch(arg))
        if hide_next:
            hide_next = False
            if not _FLAG.fullmatch(arg):  # (a flag after a secret-named switch is its own;
                out.append(MASK)            # a token may start with "-": -q8Zp3xV...)
                continue
        name, eq, value = arg.partition("=")
        if eq and _LOGIN_ARG.fullmatch(name) and (match := _USER_PASSWORD.fullmatch(value)):
            out.append(f"{name}={match[1]}{MASK}")  # (--login=user:pw: as given, not
            continue  # URL-decoded as text is, where a "+" in the password reads as " ")
        # (a dotted config key names its secret last: --config.wandb.key=X, --db.password)
        last = ".".join(name.lstrip("-").rsplit(".", 2)[-2:])  # (its last two words)
        if (SECRET_NAME.match(name.lstrip("-")) or SECRET_NAME.match(last)) \
                and (eq or arg.startswith("-")):
            hide_next = not eq
            out.append(f"{name}={MASK}" if eq else arg)
            continue
        out.append(redact(arg))
    return out


def redact_tree(value: Any) -> Any:
    """``value`` (JSON-like data: dicts, lists, strings, numbers) with every string in it
    redacted: a message body made of parts, each redacted on its own, never its
    serialised text (a pattern must not run across its fields)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message (arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True
