"""A real SMTP server on loopback for the tests (aiosmtpd, Debian's python3-aiosmtpd).

Usage: /usr/bin/python3 tests/smtp_server.py PORT USER PASSWORD OUTDIR [MODE CERT KEY]

MODE is plain (the default), starttls (STARTTLS required before AUTH) or implicit (TLS from the
first byte); CERT and KEY are the server's PEM certificate and key for the TLS modes.

Requires AUTH (PLAIN or LOGIN) with USER/PASSWORD before MAIL; writes each received message as
OUTDIR/NNNN.json {"mail_from", "rcpt_tos", "login", "data"}; prints "ready" once listening and
stops when its stdin closes.
"""
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, user, password, outdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
mode = sys.argv[5] if len(sys.argv) > 5 else "plain"
context = None
if mode != "plain":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[6], sys.argv[7])


class Handler:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        login = getattr(session, "auth_data", None)
        if isinstance(login, LoginPassword):
            login = login.login.decode()
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": login if isinstance(login, str) else None,
            "data": envelope.content.decode("utf8", "replace"),
        }
        tmp = os.path.join(outdir, ".%04d.tmp" % self.n)
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(outdir, "%04d.json" % self.n))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
            and auth_data.password.decode() == password:
        return AuthResult(success=True, auth_data=auth_data)
    # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting).
    return AuthResult(success=False, handled=False)


tls = {}
if mode == "starttls":
    tls = {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
elif mode == "implicit":
    tls = {"ssl_context": context, "auth_require_tls": False}
else:
    tls = {"auth_require_tls": False}
controller = Controller(
    Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
    auth_required=True, **tls,
)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
