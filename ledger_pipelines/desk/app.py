"""``ledger-pipelines desk``: the breaks desk, a server-rendered web application (Starlette + Jinja2).

It needs no network beyond the browser's connection to it: no CDN, no JavaScript build, one inline
stylesheet. Every page but the login needs a session; every POST needs the session's CSRF token, and
the server checks the user's role for every action (an auditor reads only). The day reports and their
Data Docs are served under ``/reports/<day>/`` from the reports folder, files only, never outside it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from jinja2 import DictLoader, Environment, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .auth import RateLimit, Sessions, csrf_ok
from .store import CAN, PAGE, Desk, DeskError, NotFound

log = logging.getLogger(__name__)

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,80}")
_BREAK = re.compile(r"b-[0-9a-f]{20}")
FILTERS = ("day", "reconciliation", "type", "state", "priority", "assignee", "asset", "min", "max")
MAX_FORM = 64 * 1024

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
header{background:#17324d;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:16px}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#eef}th a{color:#111}td.num{text-align:right;font-variant-numeric:tabular-nums}
.overdue{color:#b00;font-weight:bold}.flash{background:#ffe;border:1px solid #cc8;padding:6px;margin:8px 0}
.error{background:#fee;border:1px solid #c88;padding:6px;margin:8px 0}
form.inline{display:inline}fieldset{margin:8px 0;background:#fff}label{margin-right:8px}
pre{background:#fff;border:1px solid #ddd;padding:6px;white-space:pre-wrap;font-size:12px}
nav.pages a{margin-right:6px}
"""

TEMPLATES = {
    "base.html": """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{% block title %}Breaks desk{% endblock %}</title>
<style>{{ style }}</style></head><body>
<header><a href="/breaks"><b>Breaks desk</b></a><a href="/breaks?state=unresolved">Open breaks</a>
<a href="/decisions">Decisions</a><a href="/days">Day reports</a><a href="/exports">Exports</a>
{% if user %}<span>{{ user }} ({{ role }})</span><form method="post" action="/logout"><input type="hidden" name="csrf" value="{{ csrf }}"><button>Log out</button></form>{% endif %}
</header><main>{% if flash %}<div class="flash" role="status">{{ flash }}</div>{% endif %}
{% if error %}<div class="error" role="alert">{{ error }}</div>{% endif %}{% block body %}{% endblock %}</main></body></html>""",
    "login.html": """{% extends "base.html" %}{% block title %}Log in: breaks desk{% endblock %}{% block body %}
<h1>Log in</h1><form method="post" action="/login"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="next" value="{{ next }}">
<p><label>Name <input name="name" autocomplete="username" required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<button>Log in</button></form>{% endblock %}""",
    "breaks.html": """{% extends "base.html" %}{% block title %}Breaks: breaks desk{% endblock %}{% block body %}
<h1>Breaks</h1>
<form method="get" action="/breaks"><fieldset><legend>Filter</legend>
<label>Day <input name="day" value="{{ f.day }}" placeholder="YYYY-MM-DD" size="10"></label>
<label>Reconciliation <select name="reconciliation"><option value="">any</option>{% for n in names %}<option {% if f.reconciliation == n %}selected{% endif %}>{{ n }}</option>{% endfor %}</select></label>
<label>Type <select name="type"><option value="">any</option>{% for t in types %}<option {% if f.type == t %}selected{% endif %}>{{ t }}</option>{% endfor %}</select></label>
<label>State <select name="state"><option value="">any</option>{% for s in states %}<option {% if f.state == s %}selected{% endif %}>{{ s }}</option>{% endfor %}</select></label>
<label>Priority <select name="priority"><option value="">any</option>{% for t in tiers %}<option {% if f.priority == t %}selected{% endif %}>{{ t }}</option>{% endfor %}</select></label>
<label>Assignee <input name="assignee" value="{{ f.assignee }}" size="8"></label>
<label>Asset <input name="asset" value="{{ f.asset }}" size="6"></label>
<label>Amount from <input name="min" value="{{ f.min }}" size="8"></label><label>to <input name="max" value="{{ f.max }}" size="8"></label>
<button>Filter</button> <a href="/breaks.csv?{{ query }}">CSV of all {{ total }}</a></fieldset></form>
<p>{{ total }} breaks{% if total %}, {{ first }}-{{ last }} shown{% endif %}.</p>
<table><thead><tr>{% for key, label in columns %}<th><a href="?{{ sort_links[key] }}">{{ label }}{% if sort == key %} {{ '▼' if order == 'desc' else '▲' }}{% endif %}</a></th>{% endfor %}<th>priority</th><th>due</th></tr></thead><tbody>
{% for b in rows %}<tr><td><a href="/breaks/{{ b.reconciliation }}/{{ b.break_id }}">{{ b.break_id }}</a></td><td>{{ b.reconciliation }}</td><td>{{ b.break_type|replace('_', ' ') }}</td>
<td>{{ b.asset or '' }}</td><td class="num">{{ b.amount }}</td><td>{{ b.first_seen }} ({{ b.age_days }} d)</td><td>{{ b.last_seen }}</td>
<td>{{ b.shown_state }}{% if b.pending %} (proposal waiting){% endif %}</td><td>{{ b.assignee or '' }}</td><td>{{ b.priority }}</td>
<td class="{{ 'overdue' if b.overdue else '' }}">{{ b.due[:16] }}{% if b.overdue %} overdue{% endif %}</td></tr>{% endfor %}
</tbody></table>
<nav class="pages">{% if page > 1 %}<a href="?{{ prev_link }}">previous</a>{% endif %} page {{ page }} of {{ pages }} {% if page < pages %}<a href="?{{ next_link }}">next</a>{% endif %}</nav>
{% endblock %}""",
    "break.html": """{% extends "base.html" %}{% block title %}{{ b.break_id }}: breaks desk{% endblock %}{% block body %}
<p><a href="/breaks?reconciliation={{ b.reconciliation }}">&larr; {{ b.reconciliation }}</a> · <a href="/reports/{{ b.last_seen }}/{{ b.reconciliation }}/report.html">report of {{ b.last_seen }}</a></p>
<h1>{{ b.break_type|replace('_', ' ') }} <code>{{ b.break_id }}</code></h1>
<table><tr><th>reconciliation</th><td>{{ b.reconciliation }}</td></tr><tr><th>state</th><td id="state">{{ b.shown_state }}{% if b.pending %} (proposal {{ b.pending }} waiting for approval){% endif %}</td></tr>
<tr><th>amount at stake</th><td class="num">{{ b.amount }} {{ b.asset or '' }}</td></tr><tr><th>first seen</th><td>{{ b.first_seen }} ({{ b.age_days }} days)</td></tr>
<tr><th>last reported</th><td>{{ b.last_seen }}</td></tr><tr><th>priority</th><td>{{ b.priority }}, due {{ b.due[:16] }}{% if b.overdue %} <span class="overdue">overdue</span>{% endif %}</td></tr>
<tr><th>assignee</th><td>{{ b.assignee or '' }}</td></tr>{% if b.accepted_until %}<tr><th>accepted until</th><td>{{ b.accepted_until }}</td></tr>{% endif %}
{% if b.resolution %}<tr><th>resolution</th><td>{{ b.resolution }}</td></tr>{% endif %}<tr><th>reason</th><td>{{ b.record_obj.reason }}</td></tr></table>
<h2>Legs</h2>{% for side in ('left', 'right') %}<h3>{{ side }}</h3>{% for e in b.entries[side] %}<table class="entry">{% for k, v in e.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>{% else %}<p>none</p>{% endfor %}{% endfor %}
<h2>The payment across ledgers</h2>{% if b.payment %}<table><tr><th>ledger</th><th>entry</th><th>day</th><th>direction</th><th>amount</th><th>asset</th><th>status</th></tr>
{% for e in b.payment %}<tr><td>{{ e.ledger }}</td><td>{{ e.entry_id }}</td><td>{{ e.snapshot_date }}</td><td>{{ e.direction }}</td><td class="num">{{ e.amount }}</td><td>{{ e.asset }}</td><td>{{ e.status }}</td></tr>{% endfor %}</table>{% else %}<p>No correlation id: no other legs known.</p>{% endif %}
<h2>Suggested matches</h2>{% if b.suggestions %}<table><tr><th>candidate</th><th>score</th><th>how the score is made</th>{% if can.propose %}<th></th>{% endif %}</tr>
{% for s in b.suggestions %}<tr><td><a href="/breaks/{{ b.reconciliation }}/{{ s.candidate_id }}">{{ s.candidate_id }}</a> ({{ s.break_type|replace('_', ' ') }}, {{ s.amount }} {{ s.asset }}, {{ s.candidate_state }})</td><td class="num">{{ s.score }}</td>
<td>{% for part, x in s.explain.items() %}{{ part }} {{ x.points }}/{{ x.of }}{% if part == 'time' %} ({{ x.hours_apart }} h apart){% elif part == 'amount' %} ({{ x.this }} vs {{ x.candidate }}){% elif x.this or x.candidate %} ("{{ x.this }}" vs "{{ x.candidate }}"){% endif %}{% if not loop.last %}; {% endif %}{% endfor %}</td>
{% if can.propose and not b.pending and b.state in ('open', 'assigned') %}<td><form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/propose-match"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="with" value="{{ s.candidate_id }}"><input name="reason" placeholder="reason" required><button>Propose this match</button></form></td>{% endif %}</tr>{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
{% if b.pending_decision %}<h2>Waiting for approval</h2><p>{{ b.pending_decision.kind|replace('_', ' ') }} proposed by {{ b.pending_decision.proposed_by }} at {{ b.pending_decision.proposed_at[:19] }}: {{ b.pending_decision.reason }}</p>
{% if can.approve and b.pending_decision.proposed_by != user %}<form method="post" action="/decisions/{{ b.pending }}/approve" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button>Approve</button></form>
<form method="post" action="/decisions/{{ b.pending }}/reject" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><input name="reason" placeholder="why not" required><button>Reject</button></form>{% elif can.approve %}<p>You proposed it: a second approver decides.</p>{% endif %}{% endif %}
{% if b.state in ('open', 'assigned', 'accepted') %}<h2>Actions</h2>
{% if can.assign %}<form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/assign"><input type="hidden" name="csrf" value="{{ csrf }}"><label>Assign to <input name="assignee" value="{{ b.assignee or user }}"></label><button>Assign</button></form>{% endif %}
{% if can.comment %}<form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/comment"><input type="hidden" name="csrf" value="{{ csrf }}"><label>Comment <input name="comment" required size="40"></label><button>Comment</button></form>{% endif %}
{% if can.propose and not b.pending and b.state != 'accepted' %}<form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/propose-accept"><input type="hidden" name="csrf" value="{{ csrf }}"><label>Accept, reason <input name="reason" required size="30"></label><label>until <input name="expires" value="{{ default_expiry }}" size="10"></label><button>Propose acceptance</button></form>
<form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/propose-match"><input type="hidden" name="csrf" value="{{ csrf }}"><label>Match with break ids <input name="with" size="30" placeholder="b-… b-…"></label><label>reason <input name="reason" required></label><button>Propose manual match</button></form>{% endif %}
{% if can.reopen and b.state == 'accepted' %}<form method="post" action="/breaks/{{ b.reconciliation }}/{{ b.break_id }}/reopen"><input type="hidden" name="csrf" value="{{ csrf }}"><label>Reopen, reason <input name="reason" required></label><button>Reopen</button></form>{% endif %}
{% if not (can.assign or can.propose) %}<p>Your role ({{ role }}) reads only.</p>{% endif %}{% endif %}
<h2>History</h2><table><tr><th>when (UTC)</th><th>who</th><th>what</th><th>details</th><th>before</th><th>after</th></tr>
{% for e in b.history %}<tr><td>{{ e.at[:19] }}</td><td>{{ e.actor }}</td><td>{{ e.action }}</td><td>{{ e.detail }}</td><td>{{ e.before or '' }}</td><td>{{ e.after or '' }}</td></tr>{% endfor %}</table>
<h2>The record</h2><pre>{{ record_text }}</pre>{% endblock %}""",
    "decisions.html": """{% extends "base.html" %}{% block title %}Decisions: breaks desk{% endblock %}{% block body %}
<h1>Decisions</h1><p><a href="/decisions?state=proposed">waiting</a> · <a href="/decisions?state=approved">approved</a> · <a href="/decisions?state=rejected">rejected</a> · <a href="/decisions">all</a> · <a href="/exports/decisions.csv">CSV</a></p>
<table><tr><th>decision</th><th>kind</th><th>reconciliation</th><th>breaks</th><th>reason</th><th>expires</th><th>from</th><th>proposed</th><th>state</th><th>decided</th><th></th></tr>
{% for d in rows %}<tr><td>{{ d.decision_id }}</td><td>{{ d.kind|replace('_', ' ') }}</td><td>{{ d.reconciliation }}</td><td>{% for b in d.breaks %}<a href="/breaks/{{ d.reconciliation }}/{{ b }}">{{ b }}</a> {% endfor %}</td>
<td>{{ d.reason }}</td><td>{{ d.expires or '' }}</td><td>{{ d.effective_from }}</td><td>{{ d.proposed_by }} {{ d.proposed_at[:16] }}</td><td>{{ d.state }}</td><td>{{ d.decided_by or '' }} {{ (d.decided_at or '')[:16] }}</td>
<td>{% if d.state == 'proposed' and can.approve and d.proposed_by != user %}<form method="post" action="/decisions/{{ d.decision_id }}/approve" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button>Approve</button></form>{% endif %}</td></tr>{% endfor %}</table>{% endblock %}""",
    "days.html": """{% extends "base.html" %}{% block title %}Day reports: breaks desk{% endblock %}{% block body %}
<h1>Day reports</h1><table><tr><th>day</th><th>report</th><th>Data Docs</th><th>breaks</th></tr>
{% for d in days %}<tr><td><a href="/day/{{ d.day }}">{{ d.day }}</a></td><td>{% if d.report %}<a href="/reports/{{ d.day }}/index.html">index</a>{% endif %}</td>
<td>{% for l in d.docs %}<a href="/reports/{{ d.day }}/data_docs/{{ l }}/index.html">{{ l }}</a> {% endfor %}</td><td><a href="/breaks?day={{ d.day }}">breaks open that day</a></td></tr>{% endfor %}</table>{% endblock %}""",
    "day.html": """{% extends "base.html" %}{% block title %}{{ day }}: breaks desk{% endblock %}{% block body %}
<p><a href="/days">&larr; day reports</a></p><h1>{{ day }}</h1>
{% if audit %}<p>Merkle root <code>{{ audit.merkle_root }}</code>{% if audit.anchor %}, anchored in tx <code>{{ audit.anchor.tx_hash }}</code> (version {{ audit.anchor.version }}){% else %}, not anchored{% endif %}.
<a href="/reports/{{ day }}/index.html">The report</a>{% if docs %} · Data Docs: {% for l in docs %}<a href="/reports/{{ day }}/data_docs/{{ l }}/index.html">{{ l }}</a> {% endfor %}{% endif %}</p>
<table><tr><th>reconciliation</th><th>matches</th><th>breaks</th><th></th></tr>{% for name, r in recs %}<tr><td><a href="/reports/{{ day }}/{{ name }}/report.html">{{ name }}</a></td><td class="num">{{ r.matches }}</td><td class="num">{{ r.breaks }}</td><td><a href="/breaks?day={{ day }}&reconciliation={{ name }}">on the desk</a></td></tr>{% endfor %}</table>
<p>Decisions honoured: {{ audit.decisions.manual_match if audit.decisions else 0 }} manual matches, {{ audit.decisions.acceptance if audit.decisions else 0 }} acceptances.</p>{% else %}<p>No report for this day.</p>{% endif %}{% endblock %}""",
    "exports.html": """{% extends "base.html" %}{% block title %}Exports: breaks desk{% endblock %}{% block body %}
<h1>Exports (CSV)</h1><ul><li><a href="/breaks.csv?state=unresolved">open breaks</a> (any filter of the breaks list works: <code>/breaks.csv?day=…</code>)</li>
<li><a href="/exports/decisions.csv">decisions</a> (<code>?from=YYYY-MM-DD&amp;to=YYYY-MM-DD</code> for a period)</li>
<li><a href="/exports/events.csv">the audit trail</a> (every action; same period parameters)</li><li><a href="/exports/aging.csv">aging</a> of the unresolved breaks</li></ul>{% endblock %}""",
    "error.html": """{% extends "base.html" %}{% block title %}{{ status }}: breaks desk{% endblock %}{% block body %}<h1>{{ status }}</h1><p>{{ message }}</p><p><a href="/breaks">Breaks</a></p>{% endblock %}""",
}

_env = Environment(loader=DictLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))


class DeskApp:
    def __init__(self, desk: Desk, reports: Path, sessions: Sessions, limiter: RateLimit | None = None) -> None:
        self.desk, self.reports, self.sessions = desk, Path(reports).resolve(), sessions
        self.limiter = limiter or RateLimit()
        self._names_cache: list[str] = []
        self._names_at = float("-inf")

    # ---- plumbing ------------------------------------------------------------------------------------

    def page(self, request: Request, name: str, http_status: int = 200, **ctx) -> HTMLResponse:
        s = request.state.session
        user = s.get("u") if s else None
        role = request.state.role
        can = {a: a in CAN.get(role or "", set()) for a in ("assign", "comment", "propose", "reopen", "approve", "reject")}
        html = _env.get_template(name).render(style=_STYLE, user=user, role=role, csrf=s["csrf"] if s else "",
                                              can=can, flash=DONE.get(request.query_params.get("done", ""), ""),
                                              **ctx)
        resp = HTMLResponse(html, status_code=http_status)
        resp.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def set_cookie(self, resp: Response, value: str, secure: bool = False) -> None:
        resp.set_cookie(Sessions.cookie, value, max_age=self.sessions.seconds, httponly=True, samesite="strict",
                        path="/", secure=secure)

    async def form(self, request: Request) -> dict[str, str]:
        """A urlencoded form of at most ``MAX_FORM`` bytes (read no further than that)."""
        if int(request.headers.get("content-length") or 0) > MAX_FORM:
            raise DeskError("the form is too large")
        if getattr(request.state, "body", None) is not None:
            body = request.state.body
        else:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_FORM:
                    raise DeskError("the form is too large")
                chunks.append(chunk)
            body = request.state.body = b"".join(chunks)
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status, status=status, message=message)

    def build(self) -> Starlette:
        routes = [
            Route("/login", self.login_form, methods=["GET"]), Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", lambda r: RedirectResponse("/breaks?state=unresolved", 303)),
            Route("/breaks", self.breaks), Route("/breaks.csv", self.breaks_csv),
            Route("/breaks/{rec}/{bid}", self.one_break),
            Route("/breaks/{rec}/{bid}/{action}", self.act, methods=["POST"]),
            Route("/decisions", self.decisions), Route("/decisions/{did}/{action}", self.decide, methods=["POST"]),
            Route("/days", self.days), Route("/day/{day}", self.day),
            Route("/reports/{day}/{path:path}", self.report_file),
            Route("/exports", lambda r: self.page(r, "exports.html")),
            Route("/exports/{name}.csv", self.export),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(_Guard, owner=self)
        return app

    # ---- login ---------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/breaks?state=unresolved")
        resp = self.page(request, "login.html", next=_local(nxt))
        return resp

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        if not csrf_ok(request.state.session, form.get("csrf")):
            return self.error(request, 403, "The form has expired or was not sent by this site: reload the page.")
        name = form.get("name", "")[:64]
        who = (request.client.host if request.client else "?", name)
        wait = self.limiter.blocked(who)
        if wait:
            resp = self.error(request, 429, f"Too many failed logins: try again in {int(wait) + 1} s.")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        from starlette.concurrency import run_in_threadpool

        # scrypt takes a tenth of a second and 32 MiB: in a worker thread, so other users are not held up
        found = await run_in_threadpool(self.desk.authenticate, name, form.get("password", ""))
        if found is None:
            self.limiter.failed(who)
            return self.page(request, "login.html", 401, next=_local(form.get("next", "")),
                             error="Wrong name or password.")
        self.limiter.succeeded(who)
        value, _ = self.sessions.issue(name, found[1])  # a new session (and CSRF token) at login
        resp = RedirectResponse(_local(form.get("next", "")), 303)
        self.set_cookie(resp, value, secure=request.url.scheme == "https")
        return resp

    async def logout(self, request: Request) -> Response:
        """Ends every session of the user (a copied cookie too), not only this browser's."""
        user = request.state.session.get("u")
        if user:
            self.desk.end_sessions(user)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(Sessions.cookie, path="/")
        return resp

    # ---- lists ---------------------------------------------------------------------------------------

    def _filters(self, request: Request) -> dict[str, str]:
        return {k: request.query_params.get(k, "").strip()[:100] for k in FILTERS}

    async def breaks(self, request: Request) -> Response:
        f = self._filters(request)
        sort = request.query_params.get("sort", "amount")
        order = "asc" if request.query_params.get("order") == "asc" else "desc"
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page = 1
        try:
            rows, total = self.desk.list_breaks(f, sort, order, page)
        except DeskError as exc:
            return self.error(request, 400, str(exc))
        pages = max(1, -(-total // PAGE))
        base = {k: v for k, v in f.items() if v}

        def link(**kw) -> str:
            return urlencode({**base, "sort": sort, "order": order, "page": page, **kw})

        columns = [("break_id", "break"), ("reconciliation", "reconciliation"), ("type", "type"), ("asset", "asset"),
                   ("amount", "amount at stake"), ("first_seen", "first seen (age)"), ("last_seen", "last reported"),
                   ("state", "state"), ("assignee", "assignee")]
        sort_links = {k: urlencode({**base, "sort": k, "order": "asc" if sort == k and order == "desc" else "desc"})
                      for k, _ in columns}
        return self.page(request, "breaks.html", rows=rows, total=total, f=f, sort=sort, order=order, page=page,
                         pages=pages, first=(page - 1) * PAGE + 1, last=(page - 1) * PAGE + len(rows),
                         columns=columns, sort_links=sort_links, prev_link=link(page=page - 1),
                         next_link=link(page=page + 1), query=urlencode(base),
                         names=self._names(), types=_TYPES, states=_STATES,
                         tiers=[t.name for t in self.desk.settings.tiers])

    def _names(self) -> list[str]:
        """The reconciliations on the desk, for the filter (read again at most every 30 s)."""
        import time

        from sqlalchemy import select

        from ..warehouse.schema import desk_breaks

        if time.monotonic() - self._names_at > 30:
            with self.desk.wh.engine.connect() as c:
                self._names_cache = [r[0] for r in c.execute(select(desk_breaks.c.reconciliation).distinct()
                                                             .order_by(desk_breaks.c.reconciliation))]
            self._names_at = time.monotonic()
        return self._names_cache

    async def breaks_csv(self, request: Request) -> Response:
        f = self._filters(request)
        cols = ["reconciliation", "break_id", "break_type", "asset", "amount", "correlation_id", "first_seen",
                "age_days", "last_seen", "shown_state", "assignee", "priority", "due", "overdue", "accepted_until",
                "decision_id", "pending", "resolution", "resolved_on"]
        try:
            rows = self.desk.iter_breaks(f)
            first = next(rows, None)
        except DeskError as exc:
            return self.error(request, 400, str(exc))
        return _csv_response("breaks.csv", cols, ([r[c] for c in cols] for r in _chain(first, rows)))

    async def one_break(self, request: Request) -> Response:
        rec, bid = request.path_params["rec"], request.path_params["bid"]
        if not _NAME.fullmatch(rec) or not _BREAK.fullmatch(bid):
            return self.error(request, 404, f"No break {bid} in {rec}.")
        try:
            b = self.desk.detail(rec, bid)
        except NotFound as exc:
            return self.error(request, 404, str(exc))
        expiry = (date.fromisoformat(b["last_seen"]) + timedelta(days=30)).isoformat()
        return self.page(request, "break.html", b=b, record_text=json.dumps(b["record_obj"], indent=2, sort_keys=True),
                         default_expiry=expiry)

    async def decisions(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        rows = self.desk.decisions(state if state in ("proposed", "approved", "rejected") else None)
        for d in rows:
            d["breaks"] = json.loads(d["break_ids"])
        return self.page(request, "decisions.html", rows=rows)

    # ---- actions -------------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        rec, bid, action = (request.path_params[k] for k in ("rec", "bid", "action"))
        form = await self.form(request)
        user = request.state.session["u"]
        if not _NAME.fullmatch(rec) or not _BREAK.fullmatch(bid):
            return self.error(request, 404, f"No break {bid} in {rec}.")
        try:
            if action == "assign":
                self.desk.assign(user, rec, bid, form.get("assignee", "").strip() or None)
                done = "assigned"
            elif action == "comment":
                self.desk.comment(user, rec, bid, form.get("comment", ""))
                done = "commented"
            elif action == "propose-accept":
                try:
                    expires = date.fromisoformat(form.get("expires", ""))
                except ValueError:
                    raise DeskError(f"expiry {form.get('expires')!r} is not a date (YYYY-MM-DD)") from None
                self.desk.propose_acceptance(user, rec, bid, form.get("reason", ""), expires)
                done = "proposed"
            elif action == "propose-match":
                others = re.findall(r"b-[0-9a-f]{20}", form.get("with", ""))
                self.desk.propose_match(user, rec, [bid, *others], form.get("reason", ""))
                done = "proposed"
            elif action == "reopen":
                self.desk.reopen(user, rec, bid, form.get("reason", ""))
                done = "reopened"
            else:
                return self.error(request, 404, f"No action {action}.")
        except DeskError as exc:
            return self.error(request, exc.status, str(exc))
        return RedirectResponse(f"/breaks/{rec}/{bid}?" + urlencode({"done": done}), 303)

    async def decide(self, request: Request) -> Response:
        did, action = request.path_params["did"], request.path_params["action"]
        form = await self.form(request)
        user = request.state.session["u"]
        try:
            if action == "approve":
                self.desk.approve(user, did)
            elif action == "reject":
                self.desk.reject(user, did, form.get("reason", ""))
            else:
                return self.error(request, 404, f"No action {action}.")
        except DeskError as exc:
            return self.error(request, exc.status, str(exc))
        return RedirectResponse("/decisions?" + urlencode({"done": f"{action}d"}), 303)

    # ---- reports -------------------------------------------------------------------------------------

    async def days(self, request: Request) -> Response:
        days = sorted({p.name for p in self.reports.iterdir() if p.is_dir() and _DAY.fullmatch(p.name)}
                      if self.reports.is_dir() else set(), reverse=True)
        rows = [{"day": d, "report": (self.reports / d / "index.html").is_file(),
                 "docs": self._docs(d)} for d in days]
        return self.page(request, "days.html", days=rows)

    async def day(self, request: Request) -> Response:
        day = request.path_params["day"]
        if not _DAY.fullmatch(day):
            return self.error(request, 404, f"No day {day}.")
        path = self.reports / day / "audit.json"
        audit = json.loads(path.read_text()) if path.is_file() else None
        recs = sorted((audit or {}).get("reconciliations", {}).items())
        return self.page(request, "day.html", day=day, audit=audit, recs=recs,
                         docs=self._docs(day))

    def _docs(self, day: str) -> list[str]:
        """The ledgers with Data Docs in the day's report."""
        folder = self.reports / day / "data_docs"
        return sorted(p.name for p in folder.iterdir() if (p / "index.html").is_file()) if folder.is_dir() else []

    async def report_file(self, request: Request) -> Response:
        day, rel = request.path_params["day"], request.path_params["path"] or "index.html"
        if not _DAY.fullmatch(day) or any(part in ("", ".", "..") for part in rel.split("/")):
            return self.error(request, 404, "No such report file.")
        root = (self.reports / day).resolve()
        path = (root / rel).resolve()
        if path.is_dir():
            path = path / "index.html"
        if not path.is_relative_to(root) or not path.is_file() or path.is_symlink():
            return self.error(request, 404, f"No file {rel} in the report of {day}.")
        # report pages run no script on the desk's origin (they are static; Data Docs' inline scripts only toggle
        # views): a sandbox with no scripts and no network, that keeps the origin so its links keep the session
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy":
                                           "sandbox allow-same-origin allow-downloads; default-src 'none'; "
                                           "style-src 'unsafe-inline'; img-src data:"})

    async def export(self, request: Request) -> Response:
        name = request.path_params["name"]
        since, until = request.query_params.get("from"), request.query_params.get("to")
        for v in (since, until):
            if v and not _DAY.fullmatch(v):
                return self.error(request, 400, f"{v!r} is not a day (YYYY-MM-DD)")
        until = (date.fromisoformat(until) + timedelta(days=1)).isoformat() if until else None
        if name == "decisions":
            cols = ["decision_id", "kind", "reconciliation", "break_ids", "left_entry_ids", "right_entry_ids", "reason",
                    "expires", "effective_from", "state", "proposed_by", "proposed_at", "decided_by", "decided_at",
                    "score"]
            rows = self.desk.decisions(since=since, until=until)
        elif name == "events":
            cols = ["seq", "at", "actor", "action", "reconciliation", "break_id", "decision_id", "detail", "before",
                    "after"]
            rows = self.desk.events(since=since, until=until)
        elif name == "aging":
            cols = ["reconciliation", "priority", "age", "breaks", "overdue"]
            rows = self.desk.aging()
        else:
            return self.error(request, 404, f"No export {name}.")
        return _csv_response(f"{name}.csv", cols, ([r[c] for c in cols] for r in rows))


_TYPES = ("missing_left", "missing_right", "amount_mismatch", "asset_mismatch", "duplicate_left", "duplicate_right",
          "timing", "orphaned")
_STATES = ("unresolved", "new", "open", "assigned", "accepted", "matched", "resolved")


class _Guard:
    """Every request: its session read from the cookie (a fresh anonymous one when missing or invalid), the
    user's role read from the warehouse (a removed user is logged out), login required but for the login page,
    CSRF checked on every POST, auditors refused on every POST but logout."""

    def __init__(self, app, owner: DeskApp) -> None:
        self.app, self.owner = app, owner

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        session = self.owner.sessions.read(request.cookies.get(Sessions.cookie))
        fresh = None
        if session is None:
            fresh, _ = self.owner.sessions.issue(None)
            session = self.owner.sessions.read(fresh)
        request.state.session = session
        found = self.owner.desk.session_of(session.get("u"))
        request.state.role = found[0] if found and found[1] == session.get("e") else None
        if session.get("u") and request.state.role is None:
            session["u"] = None  # removed since, or logged out: the session's epoch is not the user's any more
        path = scope["path"]
        response: Response | None = None
        if path != "/login" and not request.state.role:
            if request.method == "GET":
                response = RedirectResponse("/login?" + urlencode({"next": _local(path + "?" + scope["query_string"].decode())}), 303)
            else:
                response = self.owner.error(request, 401, "Log in first (the session is missing or has expired).")
        elif request.method == "POST" and path not in ("/login",):
            request.state.body = None
            try:
                form = await self.owner.form(request)
            except DeskError:
                form = {}
            if not csrf_ok(session, form.get("csrf")):
                response = self.owner.error(request, 403, "The form has expired or was not sent by this site: reload "
                                            "the page.")
            elif request.state.role == "auditor" and path != "/logout":
                response = self.owner.error(request, 403, "An auditor reads only.")

            body, upstream, given = request.state.body or b"", receive, []

            async def replay():  # the body once more for the route, then the connection's own messages
                if not given:
                    given.append(True)
                    return {"type": "http.request", "body": body, "more_body": False}
                return await upstream()
            receive = replay
        if response is None:
            async def send_with_cookie(message):
                if message["type"] == "http.response.start" and fresh:
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", _cookie_header(fresh, self.owner.sessions.seconds)))
                    message = {**message, "headers": headers}
                await send(message)
            try:
                return await self.app(scope, receive, send_with_cookie)
            except DeskError as exc:
                response = self.owner.error(request, exc.status, str(exc))
        if fresh:
            self.owner.set_cookie(response, fresh)
        await response(scope, receive, send)


def _cookie_header(value: str, seconds: int) -> bytes:
    return f"{Sessions.cookie}={value}; HttpOnly; Max-Age={seconds}; Path=/; SameSite=strict".encode()


def _local(target: str) -> str:
    """A redirect target on this site only (no scheme, no host, no ``//``)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target or "\r" in target:
        return "/breaks?state=unresolved"
    return target


def _cell(v) -> str:
    """A CSV cell that a spreadsheet shows as text: never a formula (``=``, ``+``, ``-``, ``@``, tab, CR first)."""
    if v is None:
        return ""
    v = str(v)
    return "'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v


DONE = {"assigned": "Assigned.", "commented": "Comment recorded.", "reopened": "Reopened.",
        "proposed": "Proposed: it takes effect once a second person, an approver, approves it.",
        "approved": "Approved.", "rejected": "Rejected."}


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


def _csv_response(filename: str, cols: list[str], rows) -> StreamingResponse:
    def lines():
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        for n, row in enumerate(rows):
            w.writerow([_cell(v) for v in row])
            if n % 1000 == 999:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def server_config(app, host: str = "127.0.0.1", port: int = 8600, log_level: str = "warning",
                  proxies: list[str] | None = None):
    """uvicorn's configuration of the desk. Forwarded headers are read only from ``proxies``
    (:func:`~ledger_pipelines.desk.policy.trusted_proxies`): uvicorn by itself believes them from any
    loopback peer, and every client of a desk bound to 127.0.0.1 is one."""
    import uvicorn

    return uvicorn.Config(app if proxies else _ForwardedIgnored(app), host=host, port=port, log_level=log_level,
                          access_log=False, server_header=False, proxy_headers=bool(proxies),
                          forwarded_allow_ips=list(proxies or []))


_FORWARDED = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"))


class _ForwardedIgnored:
    """With no trusted proxy, the first request that carries forwarded headers is logged: a desk behind a
    proxy the configuration does not name counts every client as the proxy (one login limit for all of
    them) and never marks its session cookie Secure."""

    def __init__(self, app) -> None:
        self.app, self.warned = app, False

    async def __call__(self, scope, receive, send) -> None:
        if not self.warned and scope["type"] == "http" and any(k in _FORWARDED for k, _ in scope["headers"]):
            self.warned = True
            log.warning("a request from %s carries forwarded headers (X-Forwarded-For, X-Forwarded-Proto or "
                        "Forwarded); the desk ignores them. If it is behind a proxy, set "
                        "LEDGER_DESK_TRUSTED_PROXIES to the proxy's address.", (scope.get("client") or ("?",))[0])
        await self.app(scope, receive, send)


def serve(desk: Desk, reports: Path, key: bytes, host: str = "127.0.0.1", port: int = 8600,
          log_level: str = "warning", proxies: list[str] | None = None) -> None:
    import uvicorn

    app = DeskApp(desk, reports, Sessions(key, desk.settings.session_hours)).build()
    server = uvicorn.Server(server_config(app, host, port, log_level, proxies))
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C is how the desk is stopped (as uvicorn.run has it)
        pass
    if not server.started:
        raise SystemExit(3)  # the port taken, or the app did not start: uvicorn logged why
