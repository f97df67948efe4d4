"""Attack: secrets shaped every way a platform delivers them. What must hold: no form
of a secret leaves the process: not in logs, errors, the run log's meta, the console."""

from __future__ import annotations

import base64
import json
import logging
import socket
import sys
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from gpuwatch import cli, redact
from gpuwatch.agent import Agent
from gpuwatch.config import load_settings
from gpuwatch.faults import FaultLog
from gpuwatch.records import Meta
from gpuwatch.runlog import RunLogReader
from tests.fakes import solo
from tests.wait import wait_for

TOKEN = "glsa_S3cr3tT0ken+/=é"  # characters that JSON-, URL- and repr-escaping all change
REGISTERED = [  # (row id, how the secret was delivered, how it shows up in text)
    ("as-given", TOKEN, TOKEN),
    ("k8s-from-file-newline", TOKEN + "\n", TOKEN),
    ("newline-escaped-in-repr", TOKEN + "\n", repr(TOKEN + "\n")),
    ("json-escaped", TOKEN, json.dumps(TOKEN)),
    ("json-escaped-with-newline", TOKEN + "\n", json.dumps(TOKEN + "\n")),
    ("url-quoted", TOKEN, quote(TOKEN, safe="")),
    ("form-quoted", TOKEN, quote_plus(TOKEN)),
    ("crlf-padded", "  " + TOKEN + "\r\n", TOKEN),
]


@pytest.mark.parametrize(("given", "shown"), [pytest.param(g, s, id=i) for i, g, s in REGISTERED])
def test_a_registered_secret_is_redacted_in_every_form(given: str, shown: str) -> None:
    redact.register(given)
    text = redact.redact(f"POST failed: header value {shown} rejected")
    assert "S3cr3tT0ken" not in text and "rejected" in text


SHAPES = [  # (row id, text, the secret part) — never registered: found by shape
    ("signed-url-sig", "GET https://a.blob.core.windows.net/c/x?sv=2022-11-02&sp=r&"
     "sig=Zk9vQmFyU2lnbmF0dXJl%3D&se=2030", "Zk9vQmFyU2lnbmF0dXJl"),
    ("quoted-value-with-spaces", "export WANDB_API_KEY='abc 123456789'", "123456789"),
    ("quoted-option-value-with-spaces",
     "python eval.py --password 'correct horse SECRETstaple' --x 1", "SECRETstaple"),
    ("azure-connection-string", "DefaultEndpointsProtocol=https;AccountName=x;"
     "AccountKey=Zq7xW2vK9mPr4tY8abc==;EndpointSuffix=core", "Zq7xW2vK9mPr4tY8abc"),
    ("dotted-config-key-in-text", "failed: python t.py --config.wandb.key=SECRETdot7 x",
     "SECRETdot7"),
    ("presigned-s3-url", "GET https://b.s3.amazonaws.com/x?X-Amz-Signature=abc123def456&y=1",
     "abc123def456"),
    ("environ-item-assigned", "python -c \"os.environ['HF_TOKEN']='SECRETenv99'\"",
     "SECRETenv99"),
    ("url-userinfo-password", "connect https://admin:hunter2hunter2@grafana.local/api", "hunter2"),
    ("slack-webhook-path", "POST https://hooks.slack.com/services/T01/B02/xYzSeCrEt failed",
     "xYzSeCrEt"),
    ("env-assignment", "HF_TOKEN=hf_abcdefSECRET python train.py", "hf_abcdefSECRET"),
    ("option-equals", "train.py --api-key=sk-proj-SECRET42 --lr 3e-4", "sk-proj-SECRET42"),
    ("query-parameter", "GET /x?access_token=ya29SECRET&y=1", "ya29SECRET"),
    ("json-field", '{"password": "pw-SECRET-123", "user": "a"}', "pw-SECRET-123"),
    ("bearer-header", "Authorization: Bearer eyJhbGciSECRET.payload", "eyJhbGciSECRET"),
    ("token-header", "--header Authorization: token ghp_abcSECRETdef", "ghp_abcSECRETdef"),
    ("api-key-header", "X-Api-Key: sk-hdrSECRET42", "sk-hdrSECRET42"),
    ("url-encoded-slack-webhook",
     "https%3A%2F%2Fhooks.slack.com%2Fservices%2FT01%2FB02%2FxYzEncSECRET", "xYzEncSECRET"),
    ("url-password-with-slash-and-at", "s3://AKIAEXAMPLE:wJal/K7MD@ENG/bPxSECRET@bucket/ckpt",
     "bPxSECRET"),
    # tokens known by their issuers' prefixes, wherever they stand
    ("hugging-face-token", "resume from hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "hf_AbCdEf"),
    ("github-token-as-url-user",
     "git clone https://ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789@github.com/o", "ghp_AbCdEf"),
    ("aws-access-key-id", "--aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("openai-style-key", "--openai sk-proj-AbCdEfGhIjKlMnOpQrStUv", "sk-proj-AbCdEf"),
    ("slack-bot-token", "bot xoxb-1234567890-AbCdEfGhIj", "xoxb-1234567890"),
    ("slack-app-level-token", "socket mode xapp-1-A0123ABC-1234-abcdefSECRET", "abcdefSECRET"),
    ("azure-function-key", "GET https://fn.azurewebsites.net/api/f?code=AzFnSECRET77==&x=1",
     "AzFnSECRET77"),
    ("java-session-in-url", "GET https://h.example/app;jsessionid=JSESSSECRET9?a=1",
     "JSESSSECRET9"),
    ("jwt", "cookie eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
     "dozjgNryP4J3jVmNHl0w5N"),
    # command lines and config lines quoted in errors and tracebacks
    ("called-process-error", "Command '['python', 'train.py', '--hf-token', 'abcdSECRETmnop']'"
     " returned non-zero exit status 1.", "abcdSECRETmnop"),
    ("option-then-value-in-text", "python train.py --password hunterSECRET", "hunterSECRET"),
    ("traceback-source-line", '    password = "hunterSECRET2"', "hunterSECRET2"),
    ("credentials-file", "aws_secret_access_key = wJalrXUtnFEMISECRET", "wJalrXUtnFEMISECRET"),
    ("yaml-line", "password: hunterSECRET3", "hunterSECRET3"),
    ("whole-name-option", "--key=abcdefSECRET4 and DB_PASS=hunterSECRET5", "SECRET"),
    ("url-quoted-token", "body=%7B%22token%22%3A+%22hf_abcdefghijklmnopqrstuvwxyzABCDEFGH%22%7D",
     "hf_abcdefghij"),
    ("grafana-service-account-token", "push with glsa_abcdef0123456789 failed",
     "glsa_abcdef0123456789"),
    ("grafana-token-in-a-query", "https://grafana.example/?auth_token=glsa_abcdef0123456789",
     "abcdef0123456789"),
    ("token-as-the-url-user", "clone https://0123456789abcdef0123456789abcdef01234567@"
     "github.com/acme/data.git", "0123456789abcdef"),
    ("token-as-the-url-user-before-x-oauth-basic",
     "https://Q3v9Zr7KpXw2Lm8NtY4a:x-oauth-basic@github.com/acme", "Q3v9Zr7KpXw2Lm8NtY4a"),
    ("odbc-connection-string-pwd", "Driver={ODBC 18};Server=db;UID=sa;PWD=Tr0ub4dor-and-3;",
     "Tr0ub4dor"),
    ("odbc-pwd-in-braces", "Server=db;Uid=sa;Pwd={Tr0ub;4dor};Encrypt=yes", "4dor"),
    ("login-user-password", "docker login --login ci:Tr0ub4dorLogin -x", "Tr0ub4dorLogin"),
    ("discord-webhook", "POST https://discord.com/api/webhooks/1234567/AbCdTr0ub4dorHook failed",
     "AbCdTr0ub4dorHook"),
    ("teams-webhook", "https://acme.webhook.office.com/webhookb2/Tr0ub4dorTeams@x/Incoming",
     "Tr0ub4dorTeams"),
]


@pytest.mark.parametrize("text", [
    "monkey --sort-keys --passes 3 KEYBOARD=us", "KeyError: sort_key=loss not in metrics",
    "bad value: {'metric_key': 'val_loss'}", "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "task-1234567890abcdefghij", "/data/shards/sk-wiki-deduplicated-2024-v2/part-0001.tar",
    "opus-mt-en-sk-finetuned-on-europarl-v7", "/runs/exp1/hf_checkpointsStep0012000/model.pt",
    "a basic checkpoint layout", "token embeddings of size 4096",
    "ValueError: max_tokens=4096 exceeds the context", "tokenizer=gpt2 pad_token_id=50256",
    "pulling docker://registry.example.com:5000/img@sha256:abcdef",
    "see https://example.com:8443/users/me@example.com for details",
    "PWD=/home/me/project", "the bearer instrument failed", "the author=alice",
    "design=sig, signal=1, sigma=0.5", "--sort-key loss --csv-img-key filepath",
    "--data.sort.key=len --trainer.sig=1 --sig 3.0",
    "FROM python:3.11-slim@sha256:4c2c0a5b", "image ubuntu:22.04@sha256:0eb0f877",
    "contact mailto:alice@example.com", "git@github.com:org/repo.git",
    "https://git@github.com/org/repo.git", "ssh://jane.doe@host.example/x",
    "ftp://anonymous@ftp.example.org/pub", "https://build-bot-2024@ci.example/x",
    "docker run --user 1000:1000 img", "PWD=/home/me; cd x", "--auth-mode login",
    "see https://discord.com/channels/123/456"])
def test_ordinary_words_paths_and_hashes_are_no_secrets(text: str) -> None:
    assert redact.redact(text) == text


def test_options_named_like_keys_are_not_all_secret() -> None:
    argv = ["train.py", "--csv-img-key", "filepath", "--sort_key", "loss", "--pass_count", "3",
            "--keys", "a,b", "--max-tokens", "4096", "--tokenizer", "gpt2", "--author", "alice",
            "--pad_token_id", "0", "--first-pass", "3", "--data.sort.key=len",
            "--trainer.sig", "1", "--sig", "3.0", "--use_auth_token", "--model", "gpt2",
            "--token-budget", "4096", "--session-key-len", "32", "--pad-token", "0",
            "--auth-mode", "login", "--token-type", "bearer", "--auth_method", "oauth",
            "--authorization-url", "https://auth.example/authorize", "--user", "1000:1000",
            "--login", "alice", "ssh://git@host.example/x.git"]
    assert redact.redact_argv(argv) == argv  # (a switch's next word that is a flag: a flag)
    assert not [n for n in ("SSL_KEY_FILE", "PRIMARY_KEY_COLUMN", "KEYBOARD", "PASSES")
                if redact.SECRET_NAME.match(n)]
    assert all(redact.SECRET_NAME.match(n) for n in ("DB_PASS", "WANDB_API_KEY", "key", "cred"))


def test_a_message_body_is_redacted_field_by_field() -> None:
    body = {"blocks": [{"text": {"text": "<https://admin:Gr4fanaPassw0rd@grafana.example/d/x|"
                                         "open>"}}], "n": 3, "cookie: x": "kept"}
    out = redact.redact_tree(body)
    assert "Gr4fanaPassw0rd" not in json.dumps(out) and out["n"] == 3
    assert out["cookie: x"] == "kept"  # keys are structure, never run together with values


@pytest.mark.parametrize(("text", "secret"), [pytest.param(t, s, id=i) for i, t, s in SHAPES])
def test_a_secret_shaped_value_is_redacted_without_being_registered(text: str,
                                                                    secret: str) -> None:
    assert secret not in redact.redact(text)


ARGV = [  # (row id, command line, the secret)
    ("token-starting-with-a-dash", ["train.py", "--hub-token", "-q8Zp3xV_k2LmN0pQrStUvW"],
     "-q8Zp3xV_k2LmN0pQrStUvW"),
    ("lowercase-token-after-a-dash", ["train.py", "--token", "-ab3def9ghijklmnopq"],
     "-ab3def9ghijklmnopq"),
    ("provider-key-option", ["train.py", "--comet-key", "7f3a9c1e5b2d4f6a8c0e"],
     "7f3a9c1e5b2d4f6a8c0e"),
    ("openai-key-option", ["train.py", "--openai-key", "ARGSECRET9xx"], "ARGSECRET9xx"),
    ("dotted-config-key", ["train.py", "--config.wandb.key=ARGSECRET8xx"], "ARGSECRET8xx"),
    ("dotted-password", ["train.py", "--db.password", "ARGSECRET7xx"], "ARGSECRET7xx"),
    ("storage-account-key", ["az.py", "--storage-account-key", "ARGSECRET6xx"],
     "ARGSECRET6xx"),
    ("option-then-value", ["train.py", "--hf-token", "hf_ARGSECRET1"], "hf_ARGSECRET1"),
    ("option-equals-value", ["train.py", "--token=ARGSECRET2xx"], "ARGSECRET2xx"),
    ("env-like-argument", ["env", "WANDB_API_KEY=ARGSECRET3xx", "python"], "ARGSECRET3xx"),
    ("password-option", ["train.py", "--db-password", "ARGSECRET4xx"], "ARGSECRET4xx"),
    ("url-with-password", ["train.py", "--data", "s3://u:ARGSECRET5xx@bucket/x"],
     "ARGSECRET5xx"),
    ("value-with-separators", ["train.py", "--db-password=ab;c,ARGSECRET6xx"], "ARGSECRET6xx"),
    ("value-with-spaces", ["train.py", "--hf-token=words ARGSECRET7xx"], "ARGSECRET7xx"),
    ("value-in-quotes", ["train.py", '--TOKEN="ARGSECRET8xx here"'], "ARGSECRET8xx"),
    ("key-option", ["train.py", "--wandb-key", "0123456789abcdefARGSECRET9"], "ARGSECRET9"),
    ("pass-option", ["train.py", "--db-pass=hunter2ARGSECRET10"], "ARGSECRET10"),
    ("cred-option", ["train.py", "--cred", "s3cr3tARGSECRET11"], "ARGSECRET11"),
    ("prefixed-token-value", ["train.py", "--hub", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"],
     "hf_AbCdEfGh"),
    ("json-config-provider-key", ["train.py", '--config={"wandb_key":"ARGSECRET12"}'],
     "ARGSECRET12"),
    ("url-encoded-credentials", ["train.py",
                                 "--db-url=postgresql%3A%2F%2Fu%3AARGSECRET13%40host%2Fdb"],
     "ARGSECRET13"),
    ("credentials-without-a-scheme", ["train.py", "--proxy=user:ARGSECRET14@proxy:3128"],
     "ARGSECRET14"),
    ("bearer-option", ["train.py", "--bearer", "ARGSECRET15zz9"], "ARGSECRET15"),
    ("name-colon-value", ["train.py", "--env=HF_TOKEN:ARGSECRET16x"], "ARGSECRET16"),
    ("more-provider-keys", ["train.py", "--kaggleKey", "ARGSECRET17", "--hmac-key",
                            "ARGSECRET17", "--license-key", "ARGSECRET17", "--pat",
                            "ARGSECRET17"], "ARGSECRET17"),
    ("sentry-dsn", ["train.py", "--sentry-dsn", "https://ARGSECRET18@o1.ingest.sentry.io/1"],
     "ARGSECRET18"),
    ("token-as-the-url-user", ["train.py", "--data", "https://0123456789abcdef0123456789abcd"
                               "ef01234567@github.com/acme/data.git"], "0123456789abcdef"),
    ("odbc-pwd", ["train.py", "--conn", "Driver={ODBC};Server=db;UID=sa;PWD=Tr0ub4dor-and-3;"],
     "Tr0ub4dor"),
    ("authorization-option", ["train.py", "--authorization", "ARGSECRET19zz"], "ARGSECRET19"),
    ("token-as-the-username-before-x-oauth-basic",
     ["train.py", "--repo", "https://ARGSECRET20zz:x-oauth-basic@github.com"], "ARGSECRET20"),
    ("login-user-password", ["train.py", "--login", "user:ARGSECRET21zz"], "ARGSECRET21"),
    ("discord-webhook", ["train.py", "--notify-url",
                         "https://discord.com/api/webhooks/123/ARGSECRET22zz"], "ARGSECRET22"),
]


@pytest.mark.parametrize(("argv", "secret"), [pytest.param(a, s, id=i) for i, a, s in ARGV])
def test_the_run_log_meta_records_the_command_line_without_its_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], secret: str) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    agent = Agent(load_settings(out_dir=tmp_path, nvml=False), nvml_library=None,
                  memory_stats=None, environ={}, identity=solo())
    agent.start()
    wait_for(lambda: agent.runlog_path is not None and agent.runlog_path.exists()
             and agent.runlog_path.stat().st_size, 10, "the meta line")
    agent.stop()
    assert agent.runlog_path is not None
    (meta,) = [r for r in RunLogReader(agent.runlog_path) if isinstance(r, Meta)]
    assert secret not in json.dumps(meta.argv) and secret not in agent.runlog_path.read_text()
    assert meta.argv[0] == argv[0] and len(meta.argv) == len(argv)  # the rest is kept


def test_a_secret_from_the_environment_is_masked_in_its_other_encodings() -> None:
    """Values of KAGGLE_KEY and GITHUB_PAT (names SECRET_NAME's words do not cover) and
    a registered token passed on in base64, hex or lower-case percent-encoding."""
    secret = "envSECRET/+=0142"
    redact.register_environ({"KAGGLE_KEY": "envKAGGLE0143", "GITHUB_PAT": "envPAT0144xyz",
                             "SSL_KEY_FILE": "/etc/ssl/private/job.pem", "HF_TOKEN": secret})
    shown = [base64.b64encode(secret.encode()).decode(), secret.encode().hex(),
             quote(secret, safe="").lower().replace("envsecret", "envSECRET"),
             "envKAGGLE0143", "envPAT0144xyz"]
    for form in shown:
        assert redact.redact(f"--x {form} end") == f"--x {redact.MASK} end", form
    assert redact.redact("/etc/ssl/private/job.pem") == "/etc/ssl/private/job.pem"


def test_a_registered_password_holding_colon_and_at_is_masked_whole() -> None:
    """user:password@host's shape must not cut a registered password in two before the
    registered value is looked for; an environment value that is no UTF-8 is kept
    (gpuwatch run crashed on it, the job never started)."""
    redact.register_environ({"DB_PASSWORD": "Tr0ub4dor:horse@Battery-staple",
                             "LICENSE_KEY": "caf\udce9-1234-5678"})
    assert redact.redact("password was Tr0ub4dor:horse@Battery-staple") == "password was ***"
    assert "1234-5678" not in redact.redact("key caf\udce9-1234-5678")


def test_url_encoded_control_characters_stay_encoded_once_decoded() -> None:
    """Decoding a URL-encoded run to find its secret must not turn %0A into a line of
    its own in the log."""
    out = redact.redact("open s3://b/d?password%3Dx%0AERROR%20forged%20line")
    assert "\n" not in out and "password=***" in out
    crlf = redact.redact("ftp://u%3Apw%40host/a%0D%0Ab")
    assert "\r" not in crlf and "\n" not in crlf and "pw" not in crlf


def test_fault_log_messages_never_carry_a_secret_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "envSECRET-0123456789\n")
    load_settings()  # registers secret-named variables' values
    faults = FaultLog()
    with caplog.at_level(logging.WARNING, logger="gpuwatch"):
        faults.record("slack", RuntimeError("bad header 'Bearer envSECRET-0123456789\\n'"))
        faults.record("exporter", f"peer sent {json.dumps('envSECRET-0123456789')}")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "envSECRET" not in text and "bad header" in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("token_source", ["env-with-newline", "file-with-newline"])
def test_dashboards_push_errors_never_echo_the_token_or_the_url_password(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        token_source: str) -> None:
    token = "glsa_PUSHSECRET_0123456789"
    if token_source == "env-with-newline":
        monkeypatch.setenv("GPUWATCH_GRAFANA__TOKEN", token + "\n")
    else:
        (clean_env / "token").write_text(token + "\n")
        monkeypatch.setenv("GPUWATCH_GRAFANA__TOKEN_FILE", str(clean_env / "token"))
    url = f"http://admin:URLSECRETpw@127.0.0.1:{_closed_port()}"
    code = cli.main(["dashboards", "push", "--url", url])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "PUSHSECRET" not in err and "URLSECRETpw" not in err and "failed" in err


def test_a_registered_prefix_never_hides_a_secret_shaped_value_from_its_pattern() -> None:
    redact.register("https://hooks.slack.com")  # e.g. a webhook setting cut short
    assert "xYzPrefixed" not in redact.redact(
        "POST https://hooks.slack.com/services/T01/B02/xYzPrefixed failed")


def test_the_working_directory_is_no_secret_though_its_variable_says_pwd() -> None:
    """PWD and OLDPWD match "pwd": masking them would hide every path under the current
    directory in every error (``cannot read ***/runs/x``)."""
    workdir = "/srv/team-gpuwatch-workdir-7f3a"
    redact.register_environ({"PWD": workdir, "OLDPWD": workdir + "-old",
                             "DB_PWD": "hunter2-db-password"})
    text = redact.redact(f"cannot read {workdir}/runs/x/run.jsonl (DB hunter2-db-password)")
    assert f"{workdir}/runs/x/run.jsonl" in text and "hunter2" not in text


def test_a_command_line_holding_a_secret_names_no_job_and_errors_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gpuwatch run -- bash -c "HF_TOKEN=... python train.py"``: the job is the script's
    name, not the whole string (it becomes a directory, a label, a report title); a
    command that cannot be found is named without its secret."""
    assert cli.job_name(["bash", "-c", "HF_TOKEN=hf_JOBSECRET9 python /x/train.py --lr 1"]) \
        == "train"
    assert cli.job_name(["./my run!.sh"]) == "my_run_.sh"
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", "--", "WANDB_API_KEY=RUNSECRET0123456789", "python"])
    err = capsys.readouterr().err
    assert code == 127 and "RUNSECRET" not in err and "command not found" in err


@pytest.mark.parametrize("argv", [
    ["run", "--token=hf_ARGSECRETabcdefghijklmnopqrstu", "--", "python", "-c", "pass"],
    ["rules", "export", "out", "--bogus=https://u:ARGSECRETpw@x.example/"],
    ["demo", "--seconds", "hf_ARGSECRETabcdefghijklmnopqrstu"],
    ["alerts", "silence", "run", "data_starvation", "--for", "xoxb-123456789012-ARGSECRET"],
])
def test_an_argument_error_quotes_what_was_given_without_its_secret(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse quotes an argument it refuses (a training flag put before ``--``, a bad
    value): that line is redacted as every other error is."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error:" in err and "***" in err, err
    assert "ARGSECRET" not in err, err


def test_a_password_or_a_token_in_the_runbook_url_stays_out_of_the_alert_rules() -> None:
    from gpuwatch.detection.alerts import lifecycle_alerts
    rules = json.dumps(lifecycle_alerts("https://wiki:W1kiPassw0rd@wiki.example/runbooks.md"))
    assert "W1kiPassw0rd" not in rules and "wiki.example/runbooks.md#run_vanished" in rules
    rules = json.dumps(lifecycle_alerts("https://wikitok3n@wiki.example/runbooks.md"))
    assert "wikitok3n" not in rules and "wiki.example/runbooks.md#run_vanished" in rules


@pytest.mark.parametrize("unit", ["secret", "cookie", "token.", "password", "x-", "a-", "--a",
                                  "api-key", "sk-", "https://a:", "db_pass", "'token':", "-.",
                                  "x.wandb.", "\n", " \n", "a%", "u:p@h", "HF_TOKEN:"])
def test_a_long_argument_is_redacted_in_linear_time(unit: str) -> None:
    """The agent redacts the job's command line on its thread with the GIL held: a
    pattern that backtracks over a long argument (4 KB of "secret" once took 22 s)
    would stall training. 40 KB of any of these takes ~0.05 s when linear; the bound is
    generous for a shared box, and far below what quadratic time takes."""
    text = unit * (40_000 // len(unit))
    started = time.perf_counter()
    redact.redact(text)
    redact.redact_argv(["train.py", text, "--" + text])
    assert time.perf_counter() - started < 5.0
