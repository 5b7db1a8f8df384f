"""The SMTP server the notification tests deliver to: aiosmtpd with STARTTLS required
and one login (AUTH after TLS only). Each accepted message is written to its own file in
--out, after two header lines saying how it came: X-Peer-TLS and X-Peer-Login."""

import argparse
import os
import ssl
import threading
import uuid

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Keep:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        content = envelope.content
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        login = getattr(session, "auth_data", None)
        user = login.decode() if isinstance(login, bytes) else (login or "")
        head = "X-Peer-TLS: {}\nX-Peer-Login: {}\nX-Envelope-From: {}\nX-Envelope-To: {}\n".format(
            "yes" if session.ssl is not None else "no",
            user,
            envelope.mail_from,
            ",".join(envelope.rcpt_tos),
        )
        path = os.path.join(self.out, uuid.uuid4().hex + ".eml")
        with open(path + ".part", "w") as f:
            f.write(head + content)
        os.rename(path + ".part", path)
        return "250 OK"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    a = p.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.user
            and auth_data.password.decode() == a.password
        )
        return AuthResult(success=ok, auth_data=auth_data.login if ok else None)

    controller = Controller(
        Keep(a.out),
        hostname="127.0.0.1",
        port=a.port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
