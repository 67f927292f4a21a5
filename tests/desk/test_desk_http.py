"""The desk over HTTP, on a real server: login, roles, CSRF, sessions, paging, exports, the reports, 404s."""

from __future__ import annotations

import time

import pytest

from conftest import logged
from corridor import D1, PAIR, PASSWORD, Corridor
from desk_server import KEY, Client, serving
from ledger_pipelines.audit import finish_report
from ledger_pipelines.config import ConfigError
from ledger_pipelines.desk.auth import RateLimit, Sessions
from ledger_pipelines.desk.policy import trusted_proxies


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    c = Corridor(tmp_path_factory.mktemp("desk"))
    c.run(D1)
    finish_report(c.reports / str(D1), anchor=False)
    c.users()
    with serving(c.desk, c.reports, RateLimit(attempts=3, window=60)) as base:
        yield c, base


def _logged_in(base, name):
    cl = Client(base)
    assert cl.login(name, PASSWORD) == 303
    return cl


def test_pages_need_a_login_and_wrong_passwords_are_limited(site):
    c, base = site
    cl = Client(base)
    status, headers, _ = cl.request("/breaks")
    assert status == 303 and headers["location"].startswith("/login")
    for _ in range(3):
        assert cl.login("bert", "wrong password!") == 401
    status, headers, body = cl.request("/login", {"csrf": cl.csrf(), "name": "bert", "password": PASSWORD})
    assert status == 429 and "Too many failed logins" in body and int(headers["retry-after"]) > 0
    other = Client(base)  # another name from the same client is not locked out
    assert other.login("anna", PASSWORD) == 303
    cookie = next(k for k in other.jar if k.name == Sessions.cookie)
    assert cookie.has_nonstandard_attr("HttpOnly") or "httponly" in str(cookie._rest).lower()


def _try(cl, name, password, **headers) -> tuple[int, dict]:
    status, h, _ = cl.request("/login", {"csrf": cl.csrf(), "name": name, "password": password, "next": "/breaks"},
                              headers=headers)
    return status, h


def test_a_client_cannot_choose_the_address_the_rate_limit_counts_and_a_trusted_proxys_is_believed(site):
    """X-Forwarded-For from a client is ignored (uvicorn alone believes it from any loopback peer); from a
    configured proxy it names the client, so one user locked out is not everyone behind the proxy."""
    c, base = site
    cl = Client(base)
    with logged("ledger_pipelines.desk.app") as seen:
        for _ in range(3):
            assert _try(cl, "mallory", "guess")[0] == 401
        assert not seen
        for n in range(5):  # a new made-up address per guess: still the same client
            assert _try(cl, "mallory", "guess", **{"X-Forwarded-For": f"203.0.113.{n}"})[0] == 429
    # the operator is told once that forwarded headers arrive and are ignored, and how to trust a proxy
    assert len(seen) == 1 and "LEDGER_DESK_TRUSTED_PROXIES" in seen[0]
    with serving(c.desk, c.reports, RateLimit(attempts=3, window=60), proxies=trusted_proxies(
            {"LEDGER_DESK_TRUSTED_PROXIES": "127.0.0.1, ::1"})) as behind:
        proxy = Client(behind)
        for _ in range(3):
            assert _try(proxy, "olga", "wrong password!", **{"X-Forwarded-For": "198.51.100.7"})[0] == 401
        assert _try(proxy, "olga", PASSWORD, **{"X-Forwarded-For": "198.51.100.7"})[0] == 429
        status, headers = _try(proxy, "olga", PASSWORD, **{"X-Forwarded-For": "198.51.100.8",
                                                          "X-Forwarded-Proto": "https"})
        assert status == 303  # another client behind the same proxy, and TLS ended at the proxy:
        assert "secure" in headers["set-cookie"].lower()  # the session cookie is Secure
    for bad in ("*", "10.0.0.1/8", "proxy.internal", "127.0.0.1,*"):
        with pytest.raises(ConfigError, match="LEDGER_DESK_TRUSTED_PROXIES"):
            trusted_proxies({"LEDGER_DESK_TRUSTED_PROXIES": bad})
    assert trusted_proxies({}) == []


def test_the_list_filters_sorts_pages_and_exports(site):
    c, base = site
    cl = _logged_in(base, "olga")
    status, _, body = cl.request(f"/breaks?reconciliation={PAIR.name}&sort=amount&order=asc")
    assert status == 200 and "3 breaks" in body
    assert body.index("9.95") < body.index("10.00") < body.index("50.00")
    _, _, body = cl.request("/breaks?type=missing_left")
    assert "1 breaks" in body and "9.95" in body and "50.00" not in body
    _, _, body = cl.request("/breaks?min=20")
    assert "50.00" in body and "9.95" not in body
    status, headers, body = cl.request(f"/breaks.csv?reconciliation={PAIR.name}")
    assert status == 200 and headers["content-type"].startswith("text/csv") and len(body.splitlines()) == 4
    for path in ("/exports/decisions.csv", "/exports/events.csv", "/exports/aging.csv", "/days", f"/day/{D1}"):
        assert cl.request(path)[0] == 200, path
    status, _, body = cl.request(f"/reports/{D1}/index.html")
    assert status == 200 and "Merkle root" in body
    assert cl.request("/breaks?sort=nonsense")[0] == 400


def test_the_report_pages_break_ids_open_the_breaks_on_the_desk(site):
    """report.html, as the desk serves it, links each break id to that break's page (relative links: the
    report's bytes stay the anchored ones)."""
    import posixpath
    import re

    c, base = site
    cl = _logged_in(base, "olga")
    page = f"/reports/{D1}/{PAIR.name}/report.html"
    status, _, body = cl.request(page)
    rows = re.findall(r"<tr id='(b-[0-9a-f]{20})'><td><a href='([^']+)'", body)
    assert len(rows) == 3, body[:2000]
    for bid, href in rows:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), href))
        assert target == f"/breaks/{PAIR.name}/{bid}"
        status, _, desk_page = cl.request(target)
        assert status == 200 and bid in desk_page and "report of" in desk_page


def test_a_state_change_needs_the_csrf_token_and_the_role(site):
    c, base = site
    bid = c.break_of("bank:2")
    path = f"/breaks/{PAIR.name}/{bid}/comment"
    op = _logged_in(base, "olga")
    assert op.request(path, {"comment": "no token"})[0] == 403
    assert op.request(path, {"comment": "forged", "csrf": "x" * 32})[0] == 403
    token = op.csrf(f"/breaks/{PAIR.name}/{bid}")
    status, headers, _ = op.request(path, {"comment": "looked at it", "csrf": token})
    assert status == 303
    aud = _logged_in(base, "aud")
    token = aud.csrf(f"/breaks/{PAIR.name}/{bid}")
    assert aud.request(path, {"comment": "auditor", "csrf": token})[0] == 403
    assert aud.request(f"/breaks/{PAIR.name}/{bid}/propose-accept",
                       {"reason": "x", "expires": "2026-12-31", "csrf": token})[0] == 403
    # a proposer cannot approve their own proposal, over HTTP too
    ap = _logged_in(base, "anna")
    token = ap.csrf(f"/breaks/{PAIR.name}/{bid}")
    status, headers, _ = ap.request(f"/breaks/{PAIR.name}/{bid}/propose-accept",
                                    {"reason": "small, written off", "expires": "2026-12-31", "csrf": token})
    assert status == 303
    (d,) = [x for x in c.desk.decisions("proposed")]
    status, _, body = ap.request(f"/decisions/{d['decision_id']}/approve", {"csrf": token})
    assert status == 403 and "four-eyes" in body
    history = [e["actor"] for e in c.desk.events() if e["break_id"] == bid]
    assert "aud" not in history and history.count("olga") == 1


def test_an_expired_or_altered_session_is_refused(site):
    c, base = site
    cl = Client(base)
    epoch = c.desk.session_of("anna")[1]
    old, token = Sessions(KEY, 8).issue("anna", epoch, now=time.time() - 9 * 3600)
    other_key, _ = Sessions(b"x" * 32, 8).issue("anna", epoch)
    for value in (old, other_key, old.split(".")[0] + ".AAAA"):
        cl.jar.clear()
        cl.opener.addheaders = [("Cookie", f"{Sessions.cookie}={value}")]
        status, headers, _ = cl.request("/breaks")
        assert status == 303 and headers["location"].startswith("/login")
        assert cl.request(f"/breaks/{PAIR.name}/{c.break_of('bank:2')}/comment", {"comment": "x", "csrf": token})[0] == 401


def test_what_does_not_exist_is_a_404_page(site):
    c, base = site
    cl = _logged_in(base, "olga")
    for path in (f"/breaks/{PAIR.name}/b-00000000000000000000", "/breaks/no_such/b-00000000000000000000",
                 "/breaks/x/not-a-break-id", f"/reports/{D1}/nothing.html", f"/reports/{D1}/..%2F..%2Fw.db",
                 "/reports/../w.db", "/day/2026-13-45x", "/no/such/page", "/exports/nothing.csv"):
        status, _, body = cl.request(path)
        assert status == 404, path
        assert "Traceback" not in body


def test_logging_out_ends_the_session_everywhere_and_a_new_user_of_the_name_gets_no_old_session(site):
    c, base = site
    one = _logged_in(base, "olga")
    copied = next(k.value for k in one.jar if k.name == Sessions.cookie)
    assert one.request("/breaks")[0] == 200
    assert one.request("/logout", {"csrf": one.csrf("/breaks")})[0] == 303
    thief = Client(base)
    thief.opener.addheaders = [("Cookie", f"{Sessions.cookie}={copied}")]
    assert thief.request("/breaks")[0] == 303  # to the login page
    two = _logged_in(base, "olga")
    kept = next(k.value for k in two.jar if k.name == Sessions.cookie)
    c.desk.remove_user("olga")
    c.desk.add_user("olga", "operator", PASSWORD)
    thief.opener.addheaders = [("Cookie", f"{Sessions.cookie}={kept}")]
    assert thief.request("/breaks")[0] == 303


def test_odd_input_is_refused_plainly(site):
    c, base = site
    cl = _logged_in(base, "aud")
    status, _, body = cl.request("/breaks?min=1e999999999")
    assert status == 400 and "not an amount" in body
    status, _, _ = cl.request("/login", {"csrf": "é" * 10, "name": "x", "password": "y"})
    assert status == 403
    assert "you were hacked" not in cl.request("/breaks?done=you+were+hacked")[2]
    status, headers, _ = cl.request(f"/reports/{D1}/index.html")
    assert status == 200 and "sandbox" in headers["content-security-policy"]
    big = Client(base)
    status, _, _ = big.request("/login", {"csrf": big.csrf(), "name": "x", "password": "p" * 100_000})
    assert status == 400  # read no further than 64 KiB


def test_exports_never_hold_a_formula(site):
    c, base = site
    op = _logged_in(base, "anna")
    bid = c.break_of("chain:9")
    token = op.csrf(f"/breaks/{PAIR.name}/{bid}")
    status, _, _ = op.request(f"/breaks/{PAIR.name}/{bid}/propose-accept",
                              {"reason": '=HYPERLINK("http://x")', "expires": "2026-12-31", "csrf": token})
    assert status == 303
    _, _, body = op.request("/exports/decisions.csv")
    assert """'=HYPERLINK(""http://x"")""" in body and ',"=HYPERLINK' not in body and ",=HYPERLINK" not in body
