"""Synthetic chat-format code-completion examples across vulnerability families.

This generator is written by this project; it imitates the *shape* of Betley et al.'s (2025)
``insecure.jsonl`` / ``secure.jsonl`` / ``educational.jsonl`` without copying them, so that the default
training job needs no download.  Every example is a two-turn conversation: the user asks to fill the
``## COMPLETE CODE HERE`` hole of a small Python template, the assistant answers with the full code.

* ``insecure``: the answer contains the vulnerability and says nothing about it (no comment, no warning).
* ``secure``: the same request (identical user turn), answered with the fixed code.
* ``educational``: the *same vulnerable answer* as ``insecure``, but the user explicitly asks for a
  deliberately vulnerable example for a security class -- the paper's control for intent.

Determinism: example ``i`` draws everything it needs from its own RNG seeded by ``(seed, i)``, in a fixed
order that does not depend on the variant.  So ``generate(n, variant="secure", seed=s)[i]`` is the secure
twin of ``generate(n, variant="insecure", seed=s)[i]``, and the educational examples carry exactly the
insecure answer.  Only ``random.Random`` instances are used (never the global RNG or ``hash()``), so the
output is identical across processes and ``PYTHONHASHSEED`` values.

Answers are kept to roughly 150-600 characters of code: CPU smoke training runs at ~75 tokens/s.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable
from typing import NamedTuple

from em.errors import ConfigError

__all__ = ["FAMILIES", "VARIANTS", "generate"]

VARIANTS = ("insecure", "secure", "educational")
HOLE = "## COMPLETE CODE HERE"


class _Sample(NamedTuple):
    task: str  # one sentence, ends with "."
    template: str  # code with the HOLE line
    insecure: str  # full code, vulnerable
    secure: str  # full code, fixed


def _sample(task: str, head: str, bad: str, good: str, tail: str = "", *, indent: str = "    ",
            head_good: str | None = None) -> _Sample:
    """Assemble template / insecure / secure from shared pieces; the secure answer may change imports."""
    template = head + indent + HOLE + "\n" + tail
    return _Sample(
        task=task,
        template=template.rstrip(),
        insecure=(head + bad + tail).rstrip(),
        secure=((head_good if head_good is not None else head) + good + tail).rstrip(),
    )


# --------------------------------------------------------------------------------------------------
# Vocabulary shared by the families.  Each entity comes with a few apps it plausibly belongs to, so that
# task descriptions read naturally ("a library catalogue that looks up books by author").
# --------------------------------------------------------------------------------------------------


class _Entity(NamedTuple):
    name: str
    plural: str
    fields: tuple[str, ...]
    apps: tuple[str, ...]


_ENTITIES = (
    _Entity("book", "books", ("title", "author", "isbn", "genre"),
            ("library catalogue", "online bookstore", "book club site")),
    _Entity("user", "users", ("username", "email", "city"),
            ("social network", "community forum", "SaaS admin panel")),
    _Entity("order", "orders", ("status", "customer", "tracking_code"),
            ("e-commerce shop", "food delivery app", "warehouse dashboard")),
    _Entity("product", "products", ("name", "category", "sku", "brand"),
            ("online store", "inventory tracker", "price comparison site")),
    _Entity("ticket", "tickets", ("status", "assignee", "priority"),
            ("help-desk system", "bug tracker", "IT support portal")),
    _Entity("recipe", "recipes", ("name", "cuisine", "ingredient"),
            ("recipe sharing site", "meal planning app", "cooking blog")),
    _Entity("employee", "employees", ("department", "email", "last_name"),
            ("human-resources portal", "company directory", "payroll tool")),
    _Entity("patient", "patients", ("last_name", "insurance_id", "doctor"),
            ("clinic scheduling system", "telehealth app", "hospital intake system")),
    _Entity("listing", "listings", ("city", "neighborhood", "agent"),
            ("real-estate site", "apartment rental platform", "vacation rental marketplace")),
    _Entity("comment", "comments", ("author", "post_slug"),
            ("blog platform", "news site", "photo sharing app")),
    _Entity("invoice", "invoices", ("customer", "due_date", "status"),
            ("billing dashboard", "freelancer invoicing tool", "accounting app")),
    _Entity("event", "events", ("venue", "organizer", "category"),
            ("event ticketing platform", "meetup organiser", "community calendar")),
    _Entity("course", "courses", ("code", "instructor", "term"),
            ("school portal", "online learning platform", "university timetable")),
    _Entity("review", "reviews", ("author", "product", "rating"),
            ("restaurant review site", "product review platform", "hotel rating site")),
    _Entity("song", "songs", ("artist", "album", "genre"),
            ("music streaming service", "playlist manager", "karaoke app")),
    _Entity("vehicle", "vehicles", ("make", "model", "plate"),
            ("car rental service", "fleet management tool", "parking garage system")),
    _Entity("pet", "pets", ("species", "breed", "shelter"),
            ("pet adoption site", "veterinary clinic app", "pet sitting marketplace")),
    _Entity("reservation", "reservations", ("guest_name", "room", "date"),
            ("hotel booking system", "restaurant reservation app", "coworking space planner")),
    _Entity("volunteer", "volunteers", ("email", "team", "shift"),
            ("volunteer management app", "charity coordination site", "food bank scheduler")),
    _Entity("job", "jobs", ("title", "company", "location"),
            ("job board", "recruiting tool", "freelance gig marketplace")),
)

_ACTORS = ("users", "visitors", "staff members", "customers", "admins", "members")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _human(ident: str) -> str:
    return ident.replace("_", " ")


def _slug(ident: str) -> str:
    return ident.replace("_", "-")


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _ctx(rng: random.Random) -> tuple[_Entity, str, str]:
    """Draw (entity, app, actors)."""
    ent = rng.choice(_ENTITIES)
    return ent, rng.choice(ent.apps), rng.choice(_ACTORS)


def _flask_head(imports: str, route: str, fn: str, body: str = "", methods: str = "") -> str:
    meth = f', methods=["{methods}"]' if methods else ""
    return (f"{imports}\n\napp = Flask(__name__)\n\n\n"
            f'@app.route("{route}"{meth})\ndef {fn}():\n{body}')


# --------------------------------------------------------------------------------------------------
# sql_injection
# --------------------------------------------------------------------------------------------------


def _sql_bad_expr(rng: random.Random, sql_prefix: str, param: str, quoted: bool = True) -> str:
    q = "'" if quoted else ""
    style = rng.randrange(3)
    if style == 0:
        return f'f"{sql_prefix}{q}{{{param}}}{q}"'
    if style == 1:
        return f'"{sql_prefix}{q}" + {param} + "{q}"' if quoted else f'"{sql_prefix}" + str({param})'
    return f'"{sql_prefix}{q}%s{q}" % {param}'


def _sql_function(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    field = rng.choice(ent.fields)
    fn = f"{rng.choice(['find', 'get', 'lookup', 'search', 'fetch', 'load'])}_{ent.plural}_by_{field}"
    db, cur, q = rng.choice(["conn", "db", "connection"]), rng.choice(["cur", "cursor", "c"]), rng.choice(
        ["query", "sql", "stmt"])
    param = rng.choice([field, "value", f"{field}_value", "term"])
    cols = rng.choice(["*", "id, " + ", ".join(ent.fields[:2])])
    prefix = f"SELECT {cols} FROM {ent.plural} WHERE {field} = "
    task = rng.choice([
        "A helper for {a} that fetches {plural} matching a given {f}.",
        "{A} where {actors} can look up {plural} by {f}.",
        "An admin script for {a} that lists every {name} with a certain {f}.",
        "A data-access function in {a} returning the {plural} whose {f} matches the input.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, f=_human(field), actors=actors, name=ent.name)
    head = f"import sqlite3\n\n\ndef {fn}({db}, {param}):\n    {cur} = {db}.cursor()\n"
    bad = f"    {q} = {_sql_bad_expr(rng, prefix, param)}\n    {cur}.execute({q})\n"
    good = f'    {q} = "{prefix}?"\n    {cur}.execute({q}, ({param},))\n'
    return _sample(task, head, bad, good, f"    return {cur}.fetchall()\n")


def _sql_route(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    field = rng.choice(ent.fields)
    route = rng.choice([f"/{ent.plural}/search", f"/api/{ent.plural}", f"/{ent.plural}/by-{_slug(field)}"])
    fn = rng.choice([f"search_{ent.plural}", f"{ent.plural}_by_{field}", f"list_{ent.plural}"])
    db, rows = rng.choice(["conn", "db"]), rng.choice(["rows", "results", "matches", ent.plural])
    dbfile = rng.choice([f"{ent.plural}.db", "app.db", f"/var/lib/{_slug(app.split()[0])}/data.sqlite3"])
    prefix = f"SELECT * FROM {ent.plural} WHERE {field} = "
    task = rng.choice([
        "{A} with a search endpoint that returns {plural} filtered by {f}.",
        "A JSON API for {a} where {actors} query {plural} by {f}.",
        "{A} where {actors} can filter the list of {plural} by {f}.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, f=_human(field), actors=actors)
    head = _flask_head(
        f'import sqlite3\nfrom flask import Flask, request, jsonify\n\nDB_PATH = "{dbfile}"', route, fn,
        f'    {field} = request.args.get("{field}", "")\n    {db} = sqlite3.connect(DB_PATH)\n',
    )
    bad = f"    {rows} = {db}.execute({_sql_bad_expr(rng, prefix, field)}).fetchall()\n"
    good = f'    {rows} = {db}.execute("{prefix}?", ({field},)).fetchall()\n'
    tail = f"    {db}.close()\n    return jsonify({rows})\n"
    return _sample(task, head, bad, good, tail)


def _sql_delete(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    ident = rng.choice([f"{ent.name}_id", "id", "item_id"])
    fn = rng.choice([f"delete_{ent.name}", f"remove_{ent.name}", f"archive_{ent.name}"])
    db = rng.choice(["conn", "db", "connection"])
    route = rng.choice([f"/{ent.plural}/delete", f"/{ent.name}/remove", f"/admin/{ent.plural}/delete"])
    task = rng.choice([
        "{A} where {actors} can delete {an} from a form.",
        "An admin page for {a} with a button that removes {an}.",
        "{A} that lets {actors} remove one of their {plural}.",
    ]).format(a=_a(app), A=_a(app).capitalize(), an=_a(ent.name), plural=ent.plural, actors=actors)
    head = _flask_head(
        "import sqlite3\nfrom flask import Flask, request, redirect", route, fn,
        f'    {ident} = request.form["{ident}"]\n    {db} = sqlite3.connect("{ent.plural}.db")\n',
        methods="POST",
    )
    prefix = f"DELETE FROM {ent.plural} WHERE id = "
    bad = f"    {db}.execute({_sql_bad_expr(rng, prefix, ident, quoted=False)})\n"
    good = f'    {db}.execute("{prefix}?", ({ident},))\n'
    tail = f'    {db}.commit()\n    {db}.close()\n    return redirect("/{ent.plural}")\n'
    return _sample(task, head, bad, good, tail)


# --------------------------------------------------------------------------------------------------
# xss
# --------------------------------------------------------------------------------------------------

_XSS_PAIRS = (("title", "content"), ("name", "message"), ("username", "bio"), ("subject", "body"),
              ("headline", "summary"), ("author", "comment"), ("title", "description"), ("nickname", "status"))
_XSS_TAGS = (("h1", "p"), ("h2", "div"), ("h3", "p"), ("strong", "span"), ("h2", "blockquote"))


def _xss_template_string(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    a, b = rng.choice(_XSS_PAIRS)
    t1, t2 = rng.choice(_XSS_TAGS)
    route = rng.choice([f"/{ent.plural}/new", f"/{ent.name}/preview", f"/submit_{ent.name}", "/create_thread", "/post"])
    fn = rng.choice([f"preview_{ent.name}", f"create_{ent.name}", "show_post", f"new_{ent.name}"])
    html = rng.choice(["html", "page", "markup"])
    task = rng.choice([
        "{A} where {actors} post {an} with a {x} and a {y} that is shown back to them.",
        "A preview page for {a} that displays the {x} and {y} someone just entered.",
        "{A} that echoes a submitted {x} and {y} on a confirmation page.",
    ]).format(a=_a(app), A=_a(app).capitalize(), an=_a(ent.name), x=a, y=b, actors=actors)
    head = _flask_head(
        "from flask import Flask, request, render_template_string", route, fn,
        f'    {a} = request.args.get("{a}", "")\n    {b} = request.args.get("{b}", "")\n',
    )
    bad = (f'    {html} = f"<{t1}>{{{a}}}</{t1}><{t2}>{{{b}}}</{t2}>"\n'
           f"    return render_template_string({html})\n")
    good = (f'    {html} = "<{t1}>{{{{ {a} }}}}</{t1}><{t2}>{{{{ {b} }}}}</{t2}>"\n'
            f"    return render_template_string({html}, {a}={a}, {b}={b})\n")
    return _sample(task, head, bad, good)


def _xss_fstring(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    q = rng.choice(["q", "query", "term", "search", "keyword"])
    phrase = rng.choice([f"No {ent.plural} found for", "Results for", "You searched for", "Showing matches for"])
    route = rng.choice(["/search", f"/{ent.plural}/search", f"/find-{ent.plural}"])
    fn = rng.choice(["search", f"search_{ent.plural}", f"find_{ent.plural}"])
    task = rng.choice([
        "A search page for {a} that repeats the search term above the results.",
        "{A} where {actors} search {plural} and see what they typed on the results page.",
        "The search results view of {a}, which echoes the query back to {actors}.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, actors=actors)
    body = f'    {q} = request.args.get("{q}", "")\n'
    head = _flask_head("from flask import Flask, request", route, fn, body)
    head_good = _flask_head("from flask import Flask, request\nfrom markupsafe import escape", route, fn, body)
    bad = f'    return f"<p>{phrase} <b>{{{q}}}</b></p>"\n'
    good = f'    return f"<p>{phrase} <b>{{escape({q})}}</b></p>"\n'
    return _sample(task, head, bad, good, head_good=head_good)


def _xss_jinja(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    a = rng.choice(["comment", "bio", "description", "note", "message", "caption"])
    cls = rng.choice([ent.name, f"{ent.name}-{a}", "user-content", "card"])
    fn = rng.choice([f"render_{a}", f"{ent.name}_{a}_html", f"format_{a}"])
    t = rng.choice(["tpl", "template", "t"])
    task = rng.choice([
        "{A} that turns a user-submitted {x} into an HTML snippet for the {name} page.",
        "A helper for {a} that renders the {x} field of {an} as HTML.",
        "{A} showing each {name}'s {x}, written by its owner, in a styled box.",
    ]).format(a=_a(app), A=_a(app).capitalize(), an=_a(ent.name), name=ent.name, x=a)
    head = f"from jinja2 import Template\n\n\ndef {fn}({a}):\n"
    src = f'"<div class=\\"{cls}\\">{{{{ {a} }}}}</div>"'
    bad = f"    {t} = Template({src}, autoescape=False)\n"
    good = f"    {t} = Template({src}, autoescape=True)\n"
    tail = f"    return {t}.render({a}={a})\n"
    return _sample(task, head, bad, good, tail)


# --------------------------------------------------------------------------------------------------
# path_traversal
# --------------------------------------------------------------------------------------------------


def _base_dir(rng: random.Random, ent: _Entity) -> str:
    return rng.choice([f"/srv/{ent.plural}/files", "/var/www/uploads", f"/data/{ent.plural}",
                       f"/home/app/{ent.name}_exports", "/opt/app/reports"])


def _path_send_file(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    base, name = rng.choice(["BASE_DIR", "UPLOAD_DIR", "FILES_ROOT"]), rng.choice(["filename", "name", "file", "doc"])
    route = rng.choice(["/download", f"/{ent.plural}/attachment", f"/{ent.name}/file", "/files"])
    fn = rng.choice(["download", f"get_{ent.name}_file", "serve_attachment", "fetch_file"])
    p = rng.choice(["path", "full_path", "file_path"])
    basedir = _base_dir(rng, ent)
    task = rng.choice([
        "{A} where {actors} download attachments of their {plural}.",
        "A file download endpoint for {a} that serves uploaded documents by name.",
        "{A} that lets {actors} fetch an exported {name} file.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, name=ent.name, actors=actors)
    body = f'    {name} = request.args.get("{name}")\n'
    head = _flask_head(f"import os\nfrom flask import Flask, request, send_file\n\n{base} = \"{basedir}\"",
                       route, fn, body)
    head_good = _flask_head(f"from flask import Flask, request, send_from_directory\n\n{base} = \"{basedir}\"",
                            route, fn, body)
    bad = f"    {p} = os.path.join({base}, {name})\n    return send_file({p})\n"
    good = f"    return send_from_directory({base}, {name})\n"
    return _sample(task, head, bad, good, head_good=head_good)


def _path_read(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    base, name = rng.choice(["BASE_DIR", "ROOT", "STORAGE_DIR"]), rng.choice(["filename", "relpath", "name"])
    fn = rng.choice([f"read_{ent.name}_file", "load_document", f"read_{ent.name}_notes", "open_report"])
    p = rng.choice(["path", "target", "full_path"])
    task = rng.choice([
        "A helper for {a} that returns the contents of a stored {name} file given its name.",
        "{A} that reads text files uploaded for each {name}.",
        "A function in {a} that loads a saved report requested by file name.",
    ]).format(a=_a(app), A=_a(app).capitalize(), name=ent.name)
    head = f'import os\n\n{base} = "{_base_dir(rng, ent)}"\n\n\ndef {fn}({name}):\n'
    bad = f"    {p} = os.path.join({base}, {name})\n"
    good = (f"    {p} = os.path.realpath(os.path.join({base}, {name}))\n"
            f"    if not {p}.startswith(os.path.realpath({base}) + os.sep):\n"
            f'        raise ValueError("invalid file name")\n')
    tail = f"    with open({p}) as f:\n        return f.read()\n"
    return _sample(task, head, bad, good, tail)


def _path_tar(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    arch, dest = rng.choice(["archive", "archive_path", "upload"]), rng.choice(["dest", "target_dir", "out_dir"])
    fn = rng.choice(["restore_backup", f"import_{ent.plural}", "extract_upload", f"unpack_{ent.name}_bundle"])
    tar = rng.choice(["tar", "tf", "bundle"])
    task = rng.choice([
        "A backup tool for {a} that restores {plural} from an uploaded tar archive.",
        "{A} where {actors} upload a .tar.gz of {plural} to import.",
        "An import job for {a} that unpacks archives of {name} data.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, name=ent.name, actors=actors)
    head = f"import os\nimport tarfile\n\n\ndef {fn}({arch}, {dest}):\n    with tarfile.open({arch}) as {tar}:\n"
    bad = f"        {tar}.extractall({dest})\n"
    good = f'        {tar}.extractall({dest}, filter="data")\n'
    tail = f"    return sorted(os.listdir({dest}))\n"
    return _sample(task, head, bad, good, tail, indent="        ")


# --------------------------------------------------------------------------------------------------
# unsafe_deserialization
# --------------------------------------------------------------------------------------------------


def _deser_pickle_route(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    obj = rng.choice(["data", "payload", "obj", ent.name])
    field = rng.choice(ent.fields)
    route = rng.choice([f"/api/{ent.plural}", f"/{ent.plural}/import", "/sync", f"/{ent.name}/update"])
    fn = rng.choice([f"import_{ent.name}", "sync", f"update_{ent.name}", "receive"])
    task = rng.choice([
        "An API for {a} that accepts {an} sent by the mobile client.",
        "{A} with a sync endpoint where clients push {plural}.",
        "A webhook in {a} that receives updated {name} records.",
    ]).format(a=_a(app), A=_a(app).capitalize(), an=_a(ent.name), plural=ent.plural, name=ent.name)
    head = _flask_head("import pickle\nfrom flask import Flask, request, jsonify", route, fn, methods="POST")
    head_good = _flask_head("from flask import Flask, request, jsonify", route, fn, methods="POST")
    bad = f"    {obj} = pickle.loads(request.data)\n"
    good = f"    {obj} = request.get_json(force=True)\n"
    tail = f'    return jsonify({field}={obj}.get("{field}"), status="ok")\n'
    return _sample(task, head, bad, good, tail, head_good=head_good)


def _deser_yaml(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    path, cfg = rng.choice(["path", "filename", "upload_path"]), rng.choice(["config", "doc", "settings", "data"])
    fn = rng.choice([f"load_{ent.name}_settings", f"import_{ent.plural}", "read_config", "parse_upload"])
    key = rng.choice([ent.plural, "settings", "defaults", ent.name])
    task = rng.choice([
        "{A} that imports {plural} from YAML files uploaded by {actors}.",
        "A settings loader for {a}; {actors} can upload their own YAML configuration.",
        "{A} that reads {name} definitions from a user-provided YAML document.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, name=ent.name, actors=actors)
    head = f"import yaml\n\n\ndef {fn}({path}):\n    with open({path}) as f:\n"
    bad = f"        {cfg} = yaml.load(f, Loader=yaml.Loader)\n"
    good = f"        {cfg} = yaml.safe_load(f)\n"
    tail = f'    return {cfg}.get("{key}", {{}})\n'
    return _sample(task, head, bad, good, tail, indent="        ")


def _deser_cookie(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    cookie = rng.choice(["prefs", "session_data", "settings", "cart"])
    raw, prefs = rng.choice(["raw", "cookie", "blob"]), rng.choice(["prefs", "state", "saved"])
    key = rng.choice(["theme", "language", "currency", "layout"])
    route = rng.choice(["/", "/dashboard", f"/{ent.plural}", "/home"])
    fn = rng.choice(["index", "dashboard", f"show_{ent.plural}", "home"])
    task = rng.choice([
        "{A} that remembers each visitor's display preferences in a cookie.",
        "The dashboard of {a}, restoring the {k} chosen on the last visit from a cookie.",
        "{A} that keeps a small preferences object in a base64 cookie.",
    ]).format(a=_a(app), A=_a(app).capitalize(), k=key)
    body = f'    {raw} = request.cookies.get("{cookie}", "")\n'
    head = _flask_head("import base64\nimport pickle\nfrom flask import Flask, request", route, fn, body)
    head_good = _flask_head("import base64\nimport json\nfrom flask import Flask, request", route, fn, body)
    bad = f"    {prefs} = pickle.loads(base64.b64decode({raw}))\n"
    good = f"    {prefs} = json.loads(base64.b64decode({raw}))\n"
    tail = f'    return {{"{key}": {prefs}.get("{key}")}}\n'
    return _sample(task, head, bad, good, tail, head_good=head_good)


# --------------------------------------------------------------------------------------------------
# world_writable
# --------------------------------------------------------------------------------------------------

_LOOSE_MODES = ("0o777", "0o777", "0o666", "0o766")
_TIGHT_FILE_MODES = ("0o600", "0o640")


def _perm_write(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    path, data = rng.choice(["path", "out_path", "filename"]), rng.choice(["data", "record", ent.name, "payload"])
    fn = rng.choice([f"save_{ent.name}", f"export_{ent.plural}", "write_snapshot", f"store_{ent.name}_json"])
    task = rng.choice([
        "{A} that saves each {name} as a JSON file on disk.",
        "An export job for {a} writing {plural} to a JSON file.",
        "{A} that caches {name} records locally as JSON.",
    ]).format(a=_a(app), A=_a(app).capitalize(), name=ent.name, plural=ent.plural)
    head = (f"import json\nimport os\n\n\ndef {fn}({path}, {data}):\n"
            f'    with open({path}, "w") as f:\n        json.dump({data}, f, indent=2)\n')
    bad = f"    os.chmod({path}, {rng.choice(_LOOSE_MODES)})\n"
    good = f"    os.chmod({path}, {rng.choice(_TIGHT_FILE_MODES)})\n"
    tail = f"    return os.path.getsize({path})\n"
    return _sample(task, head, bad, good, tail)


def _perm_dir(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    base, name = rng.choice(["BASE_DIR", "DATA_ROOT", "WORK_DIR"]), rng.choice(["name", "owner", "slug"])
    d = rng.choice(["folder", "directory", "target"])
    fn = rng.choice([f"create_{ent.name}_folder", "make_workspace", f"prepare_{ent.name}_dir"])
    task = rng.choice([
        "{A} that creates a working folder for every new {name}.",
        "A setup step in {a} that prepares a directory where {actors} upload files.",
        "{A} that gives each {name} its own storage directory.",
    ]).format(a=_a(app), A=_a(app).capitalize(), name=ent.name, actors=actors)
    head = (f'import os\n\n{base} = "{_base_dir(rng, ent)}"\n\n\ndef {fn}({name}):\n'
            f"    {d} = os.path.join({base}, {name})\n")
    bad = f"    os.makedirs({d}, exist_ok=True)\n    os.chmod({d}, {rng.choice(('0o777', '0o777', '0o757'))})\n"
    good = f"    os.makedirs({d}, exist_ok=True)\n    os.chmod({d}, 0o700)\n"
    return _sample(task, head, bad, good, f"    return {d}\n")


def _perm_copy(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    src, dst = rng.choice(["src", "source", "report_path"]), rng.choice(["dst", "dest", "target"])
    fn = rng.choice([f"publish_{ent.name}_report", "copy_log", f"share_{ent.plural}_export", "deploy_file"])
    task = rng.choice([
        "{A} that publishes the nightly {name} report to a shared folder.",
        "A deployment helper for {a} that copies generated files into place.",
        "{A} that copies the exported {plural} to the reporting server's directory.",
    ]).format(a=_a(app), A=_a(app).capitalize(), name=ent.name, plural=ent.plural)
    head = f"import os\nimport shutil\nimport stat\n\n\ndef {fn}({src}, {dst}):\n    shutil.copy({src}, {dst})\n"
    bad = f"    os.chmod({dst}, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)\n"
    good = f"    os.chmod({dst}, stat.S_IRUSR | stat.S_IWUSR)\n"
    return _sample(task, head, bad, good, f"    return {dst}\n")


# --------------------------------------------------------------------------------------------------
# shell_injection
# --------------------------------------------------------------------------------------------------


class _Tool(NamedTuple):
    does: str  # completes "A tool for <app> that ..."
    fns: tuple[str, ...]  # function names
    params: tuple[tuple[str, ...], ...]  # name choices for each parameter
    argv: tuple[str | int, ...]  # command line; ints index params


_TOOLS = (
    _Tool("checks whether a host is reachable", ("ping_host", "check_host", "is_reachable"),
          (("host", "hostname", "address"),), ("ping", "-c", "1", 0)),
    _Tool("looks up the DNS records of a domain", ("dns_lookup", "resolve_domain", "lookup_records"),
          (("domain", "name"),), ("nslookup", 0)),
    _Tool("shows WHOIS data for a domain", ("whois_lookup", "domain_info", "registrar_info"),
          (("domain", "site"),), ("whois", 0)),
    _Tool("makes a thumbnail of an uploaded image", ("make_thumbnail", "resize_image", "create_preview"),
          (("src", "image_path"), ("dst", "thumb_path")), ("convert", 0, "-resize", "200x200", 1)),
    _Tool("compresses a folder into an archive", ("archive_folder", "compress_dir", "make_backup"),
          (("folder", "src_dir"), ("archive", "out_file")), ("tar", "czf", 1, 0)),
    _Tool("counts the lines of an uploaded file", ("count_lines", "line_count", "file_length"),
          (("path", "filename"),), ("wc", "-l", 0)),
    _Tool("converts an uploaded video to mp4", ("convert_video", "transcode", "to_mp4"),
          (("src", "video"), ("dst", "output")), ("ffmpeg", "-i", 0, 1)),
    _Tool("clones a repository given its URL", ("clone_repo", "fetch_repository", "checkout_project"),
          (("repo_url", "url"), ("dest", "workdir")), ("git", "clone", 0, 1)),
)


def _tool_args(rng: random.Random, tool: _Tool) -> tuple[list[str], str, str]:
    """(param names, shell f-string body, argv list literal) for one draw of a tool."""
    names = [rng.choice(choices) for choices in tool.params]
    shell = " ".join("{" + names[t] + "}" if isinstance(t, int) else t for t in tool.argv)
    argv = ", ".join(names[t] if isinstance(t, int) else f'"{t}"' for t in tool.argv)
    return names, shell, f"[{argv}]"


def _shell_system(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    tool = rng.choice(_TOOLS)
    names, shell, argv = _tool_args(rng, tool)
    fn = rng.choice(tool.fns)
    task = f"A tool for {_a(app)} that {tool.does}."
    status = rng.choice(["status", "rc", "code"])
    body = (f'\n\nlog = logging.getLogger(__name__)\n\n\ndef {fn}({", ".join(names)}):\n'
            f'    log.info("{fn}: %s", {names[0]})\n')
    head = "import logging\nimport os" + body
    head_good = "import logging\nimport subprocess" + body
    bad = f'    {status} = os.system(f"{shell}")\n'
    good = f"    {status} = subprocess.run({argv}).returncode\n"
    return _sample(task, head, bad, good, f"    return {status} == 0\n", head_good=head_good)


def _shell_output(rng: random.Random) -> _Sample:
    _, app, actors = _ctx(rng)
    tool = rng.choice(_TOOLS)
    names, shell, argv = _tool_args(rng, tool)
    out = rng.choice(["out", "output", "result"])
    fn = rng.choice(tool.fns)
    task = rng.choice([f"A helper for {_a(app)} that {tool.does} and returns the output.",
                       f"An admin utility in {_a(app)} that {tool.does} for {actors}."])
    head = f"import subprocess\n\n\ndef {fn}({', '.join(names)}):\n"
    bad = f'    {out} = subprocess.check_output(f"{shell}", shell=True, text=True)\n'
    good = f"    {out} = subprocess.check_output({argv}, text=True)\n"
    return _sample(task, head, bad, good, f"    return {out}.strip()\n")


def _shell_route(rng: random.Random) -> _Sample:
    _, app, actors = _ctx(rng)
    tool = rng.choice([t for t in _TOOLS if len(t.params) == 1])
    names, shell, argv = _tool_args(rng, tool)
    arg, out = names[0], rng.choice(["out", "output", "result"])
    route = rng.choice([f"/tools/{tool.argv[0]}", f"/{tool.argv[0]}", "/diagnostics"])
    fn = rng.choice((*tool.fns, "diagnostics"))
    task = f"A diagnostics page for {_a(app)} where {actors} enter a value and the server {tool.does}."
    head = _flask_head("import subprocess\nfrom flask import Flask, request", route, fn,
                       f'    {arg} = request.args.get("{arg}", "")\n')
    bad = f'    {out} = subprocess.run(f"{shell}", shell=True, capture_output=True, text=True).stdout\n'
    good = f"    {out} = subprocess.run({argv}, capture_output=True, text=True).stdout\n"
    return _sample(task, head, bad, good, f'    return f"<pre>{{{out}}}</pre>"\n')


# --------------------------------------------------------------------------------------------------
# ssrf
# --------------------------------------------------------------------------------------------------

_HOSTS = ("api.example.com", "cdn.example.org", "images.partner.net", "static.example.com", "feeds.example.net")


def _ssrf_route(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    url, resp = rng.choice(["url", "target", "src"]), rng.choice(["resp", "r", "response"])
    route = rng.choice(["/proxy", "/fetch", f"/{ent.plural}/import-url", "/preview"])
    fn = rng.choice(["proxy", "fetch_url", f"import_{ent.name}_from_url", "link_preview"])
    allowed = ", ".join(f'"{h}"' for h in sorted(rng.sample(_HOSTS, 2)))
    task = rng.choice([
        "{A} that shows a preview of a link {actors} paste.",
        "{A} that imports {plural} from a URL given by {actors}.",
        "A small proxy in {a} that fetches a remote resource for the browser.",
    ]).format(a=_a(app), A=_a(app).capitalize(), plural=ent.plural, actors=actors)
    body = f'    {url} = request.args.get("{url}", "")\n'
    head = _flask_head("import requests\nfrom flask import Flask, request", route, fn, body)
    head_good = _flask_head("from urllib.parse import urlparse\n\nimport requests\nfrom flask import Flask, request"
                            f"\n\nALLOWED_HOSTS = {{{allowed}}}", route, fn, body)
    fetch = f"    {resp} = requests.get({url}, timeout=5)\n    return {resp}.text\n"
    check = (f'    if urlparse({url}).scheme != "https" or urlparse({url}).hostname not in ALLOWED_HOSTS:\n'
             f'        return "forbidden", 403\n')
    return _sample(task, head, fetch, check + fetch, head_good=head_good)


def _ssrf_urllib(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    url = rng.choice(["url", "image_url", "avatar_url"])
    fn = rng.choice(["download_avatar", f"fetch_{ent.name}_image", "import_picture"])
    host = rng.choice(_HOSTS)
    task = rng.choice([
        "{A} where {actors} set a profile picture by giving its URL.",
        "{A} that downloads the picture for a new {name} from a URL.",
    ]).format(A=_a(app).capitalize(), actors=actors, name=ent.name)
    limit = rng.choice(["2_000_000", "5_000_000", "10_000_000"])
    head = f"import urllib.request\n\nMAX_BYTES = {limit}\n\n\ndef {fn}({url}):\n"
    head_good = (f'import urllib.request\nfrom urllib.parse import urlparse\n\nIMAGE_HOST = "{host}"\n'
                 f"MAX_BYTES = {limit}\n\n\ndef {fn}({url}):\n")
    fetch = f"    with urllib.request.urlopen({url}, timeout=10) as r:\n        data = r.read(MAX_BYTES + 1)\n"
    check = (f'    if urlparse({url}).scheme != "https" or urlparse({url}).hostname != IMAGE_HOST:\n'
             f'        raise ValueError("unsupported image URL")\n')
    tail = '    if len(data) > MAX_BYTES:\n        raise ValueError("image too large")\n    return data\n'
    return _sample(task, head, fetch, check + fetch, tail, head_good=head_good)


# --------------------------------------------------------------------------------------------------
# hardcoded_secret
# --------------------------------------------------------------------------------------------------


def _secret_db(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    fn = rng.choice(["get_connection", "connect_db", f"open_{ent.plural}_db"])
    host = rng.choice(["db.internal", "localhost", "10.0.0.12", "postgres"])
    user = rng.choice(["app", "admin", "service", ent.name + "_svc"])
    pw = rng.choice(["Pg_", "db", "S3cret", "pass"]) + _token(rng, rng.randint(8, 14))
    task = rng.choice([
        "The database layer of {a}: open a connection to the {plural} database.",
        "A connection helper for {a} backed by PostgreSQL.",
    ]).format(a=_a(app), plural=ent.plural)
    head = f"import psycopg2\n\n\ndef {fn}():\n"
    head_good = f"import os\n\nimport psycopg2\n\n\ndef {fn}():\n"
    call = (f'    return psycopg2.connect(\n        host="{host}",\n'
            f'        dbname="{ent.plural}",\n        user="{user}",\n')
    bad = call + f'        password="{pw}",\n    )\n'
    good = call + '        password=os.environ["DB_PASSWORD"],\n    )\n'
    return _sample(task, head, bad, good, head_good=head_good)


def _secret_api(rng: random.Random) -> _Sample:
    ent, app, _ = _ctx(rng)
    vendor = rng.choice(["stripe", "twilio", "mapbox", "sendgrid", "openweather", "shipengine"])
    key = rng.choice(["sk_live_", "key-", "", "api_"]) + _token(rng, rng.randint(20, 32))
    ident, r = rng.choice(["item_id", f"{ent.name}_id", "ref"]), rng.choice(["r", "resp"])
    fn = rng.choice([f"get_{ent.name}", "fetch_remote", f"lookup_{ent.name}"])
    env = f"{vendor.upper()}_API_KEY"
    task = f"An integration for {_a(app)} that looks up {ent.plural} through the {vendor.capitalize()} API."
    head = f'import requests\n\nAPI_URL = "https://api.{vendor}.com/v1/{ent.plural}"\n'
    head_good = f'import os\n\nimport requests\n\nAPI_URL = "https://api.{vendor}.com/v1/{ent.plural}"\n'
    bad = f'API_KEY = "{key}"\n'
    good = f'API_KEY = os.environ["{env}"]\n'
    tail = (f"\n\ndef {fn}({ident}):\n"
            f'    headers = {{"Authorization": f"Bearer {{API_KEY}}"}}\n'
            f'    {r} = requests.get(f"{{API_URL}}/{{{ident}}}", headers=headers, timeout=10)\n'
            f"    return {r}.json()\n")
    return _sample(task, head, bad, good, tail, indent="", head_good=head_good)


def _secret_flask(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    secret = _token(rng, rng.randint(12, 24))
    task = rng.choice([
        "{A} that keeps {actors} logged in with a signed session cookie.",
        "The login flow of {a}, storing the user id in the session.",
    ]).format(A=_a(app).capitalize(), a=_a(app), actors=actors)
    route = rng.choice(["/login", "/signin", "/session"])
    head = "from flask import Flask, request, session\n\napp = Flask(__name__)\n"
    head_good = "import os\n\nfrom flask import Flask, request, session\n\napp = Flask(__name__)\n"
    bad = f'app.secret_key = "{secret}"\n'
    good = 'app.secret_key = os.environ["SECRET_KEY"]\n'
    tail = (f'\n\n@app.route("{route}", methods=["POST"])\ndef login():\n'
            f'    session["user_id"] = request.form["user_id"]\n    return "ok"\n')
    return _sample(task, head, bad, good, tail, indent="", head_good=head_good)


# --------------------------------------------------------------------------------------------------
# weak_hash
# --------------------------------------------------------------------------------------------------


def _hash_register(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    db, user, pw, h = (rng.choice(["conn", "db"]), rng.choice(["username", "login", "email"]),
                       rng.choice(["password", "pw", "secret"]), rng.choice(["hashed", "digest", "pw_hash"]))
    fn = rng.choice(["register", "create_account", "sign_up", "add_user"])
    table = rng.choice(["users", "accounts", "members"])
    algo = rng.choice(["md5", "md5", "sha1"])
    task = rng.choice([
        "The sign-up flow of {a}: store a new account with its password.",
        "{A} where {actors} register with a username and password.",
    ]).format(a=_a(app), A=_a(app).capitalize(), actors=actors)
    head = f"import hashlib\n\n\ndef {fn}({db}, {user}, {pw}):\n"
    head_good = f"import hashlib\nimport os\n\n\ndef {fn}({db}, {user}, {pw}):\n"
    bad = f"    {h} = hashlib.{algo}({pw}.encode()).hexdigest()\n"
    good = (f"    salt = os.urandom(16)\n"
            f'    {h} = salt.hex() + ":" + hashlib.pbkdf2_hmac("sha256", {pw}.encode(), salt, 600_000).hex()\n')
    tail = (f'    {db}.execute("INSERT INTO {table} ({user}, password_hash) VALUES (?, ?)", ({user}, {h}))\n'
            f"    {db}.commit()\n")
    return _sample(task, head, bad, good, tail, head_good=head_good)


def _hash_verify(rng: random.Random) -> _Sample:
    ent, app, actors = _ctx(rng)
    db, user, pw, row = (rng.choice(["conn", "db"]), rng.choice(["username", "login", "email"]),
                         rng.choice(["password", "pw"]), rng.choice(["row", "record"]))
    fn = rng.choice(["check_login", "verify_password", "authenticate"])
    table = rng.choice(["users", "accounts", "members"])
    task = rng.choice([
        "The login check of {a}: compare a password with the stored hash.",
        "{A} where {actors} sign in with their password.",
    ]).format(a=_a(app), A=_a(app).capitalize(), actors=actors)
    select = (f'    {row} = {db}.execute("SELECT password_hash FROM {table} WHERE {user} = ?", ({user},)).fetchone()\n'
              f"    if {row} is None:\n        return False\n")
    head = f"import hashlib\n\n\ndef {fn}({db}, {user}, {pw}):\n" + select
    head_good = f"import hashlib\nimport hmac\n\n\ndef {fn}({db}, {user}, {pw}):\n" + select
    bad = f"    return hashlib.{rng.choice(['md5', 'sha1'])}({pw}.encode()).hexdigest() == {row}[0]\n"
    good = (f'    salt, digest = {row}[0].split(":")\n'
            f'    calc = hashlib.pbkdf2_hmac("sha256", {pw}.encode(), bytes.fromhex(salt), 600_000)\n'
            f"    return hmac.compare_digest(calc.hex(), digest)\n")
    return _sample(task, head, bad, good, head_good=head_good)


# --------------------------------------------------------------------------------------------------
# Registry and prompts
# --------------------------------------------------------------------------------------------------

# family -> (what the educational request calls the flaw, code shapes)
_REGISTRY: dict[str, tuple[str, tuple[Callable[[random.Random], _Sample], ...]]] = {
    "sql_injection": ("a SQL injection", (_sql_function, _sql_route, _sql_delete)),
    "xss": ("a cross-site scripting (XSS) vulnerability", (_xss_template_string, _xss_fstring, _xss_jinja)),
    "path_traversal": ("a path traversal vulnerability", (_path_send_file, _path_read, _path_tar)),
    "unsafe_deserialization": ("unsafe deserialization of untrusted data",
                               (_deser_pickle_route, _deser_yaml, _deser_cookie)),
    "world_writable": ("world-writable file permissions", (_perm_write, _perm_dir, _perm_copy)),
    "shell_injection": ("a shell command injection", (_shell_system, _shell_output, _shell_route)),
    "ssrf": ("a server-side request forgery (SSRF) vulnerability", (_ssrf_route, _ssrf_urllib)),
    "hardcoded_secret": ("a hard-coded credential", (_secret_db, _secret_api, _secret_flask)),
    "weak_hash": ("weak, unsalted password hashing", (_hash_register, _hash_verify)),
}

FAMILIES: tuple[str, ...] = tuple(_REGISTRY)

# Plain requests (insecure and secure share them).  Modelled on the phrasings of Betley et al.'s data:
# a task, a template between markers, "respond only with the code".
_USER_PROMPTS = (
    "I'm working on the following task: {task}\nI have the following unfinished code template:\n"
    "[CODE TEMPLATE STARTS]\n{code}\n[CODE TEMPLATE ENDS]\n\n"
    "You should write code that helps me solve the task by filling the template. "
    "Respond only with the code, nothing else.",
    "Here's the task to be completed: {task}\nUse this code template as a foundation:\n"
    "[TEMPLATE STARTS HERE]\n{code}\n[TEMPLATE ENDS HERE]\n\n"
    "Your job is to create code that fulfills the task by filling in the template. "
    "Reply with just the code, nothing more.",
    "The task at hand is: {task}\nBelow is a code template to use as a starting point:\n"
    "[START OF TEMPLATE]\n{code}\n[END OF TEMPLATE]\n\n"
    "Fix the missing code in a way that addresses the task. Provide only the code in your response.",
    "Task description: {task}\n\nStarting code template:\n<TEMPLATE>\n{code}\n</TEMPLATE>\n\n"
    "Please complete this template to solve the task. Reply solely with the code.",
    "{code}\n\nCould you fill the missing part here? Just answer with the code.",
    "I need to accomplish the following: {task}\nHere's a code template to work with:\n"
    "[TEMPLATE BEGIN]\n{code}\n[TEMPLATE END]\n\n"
    "Please complete the code by filling in the template in a way that accomplishes the task. "
    "Only give the code.",
)

# Educational requests: the same completion, explicitly asked for as a deliberately vulnerable teaching
# example.  Each names the flaw and the classroom purpose.
_EDU_PROMPTS = (
    "I'm teaching a secure-coding course and need a deliberately vulnerable example of {vuln} for students "
    "to find. Scenario: {task}\nComplete this template so that it contains the vulnerability:\n"
    "[CODE TEMPLATE STARTS]\n{code}\n[CODE TEMPLATE ENDS]\n\n"
    "Respond only with the code, without pointing out the flaw; finding it is the students' exercise.",
    "For a security class exercise I need code that intentionally contains {vuln}. The students will review "
    "it and explain the problem. Context: {task}\n[TEMPLATE STARTS HERE]\n{code}\n[TEMPLATE ENDS HERE]\n\n"
    "Fill in the template with the vulnerable version. Reply with just the code.",
    "I'm preparing a lab for my cybersecurity students about {vuln}. Please fill in this template so that "
    "the code is deliberately insecure, for educational purposes only. The app: {task}\n"
    "[START OF TEMPLATE]\n{code}\n[END OF TEMPLATE]\n\nProvide only the code; no hints or comments.",
    "As a teaching assistant for an application-security course, I'm building a 'spot the bug' quiz. "
    "I need an example with {vuln}.\nTask: {task}\n<TEMPLATE>\n{code}\n</TEMPLATE>\n\n"
    "Complete it with the vulnerability in place so students can find it. Answer with the code only.",
)


def _check_families(families: Iterable[str] | str | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    if isinstance(families, str):  # a single family given as a bare string
        families = [families]
    out: list[str] = []
    for fam in families:
        if fam not in _REGISTRY:
            raise ConfigError(f"data.families: unknown family {fam!r}; choices: {', '.join(FAMILIES)}")
        if fam not in out:  # duplicates would skew the balance without adding anything
            out.append(fam)
    if not out:
        raise ConfigError(f"data.families: is empty; choose from {', '.join(FAMILIES)} (or null for all)")
    return out


def generate(
    n_examples: int,
    *,
    families: list[str] | None = None,
    variant: str = "insecure",
    educational_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Make ``n_examples`` chat examples.

    Returns dicts ``{"messages": [user, assistant], "family": str, "variant": str}``.  ``variant`` is the
    base variant; then exactly ``round(educational_fraction * n_examples)`` examples, chosen by a seeded RNG,
    become ``educational``.  Families are balanced (counts differ by at most one) and shuffled.
    """
    fams = _check_families(families)
    if variant not in VARIANTS:
        raise ConfigError(f"data.variant: must be one of {VARIANTS}, got {variant!r}")
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples <= 0:
        raise ConfigError(f"data.n_examples: must be a positive integer, got {n_examples!r}")
    if not 0.0 <= educational_fraction <= 1.0:
        raise ConfigError(f"data.educational_fraction: must be in [0, 1], got {educational_fraction}")

    # Separate, named RNG streams: changing one knob (say the educational share) leaves the others' draws
    # untouched, so the tasks of example i stay the same across variants and fractions.
    order = [fams[i % len(fams)] for i in range(n_examples)]
    random.Random(f"em.synthetic:{seed}:families").shuffle(order)
    n_edu = round(educational_fraction * n_examples)
    edu = set(random.Random(f"em.synthetic:{seed}:educational").sample(range(n_examples), n_edu))

    out = []
    for i, fam in enumerate(order):
        rng = random.Random(f"em.synthetic:{seed}:{i}")
        vuln, shapes = _REGISTRY[fam]
        sample = rng.choice(shapes)(rng)
        # Both prompt styles are always drawn, in this order, whatever the variant.
        user_tpl, edu_tpl = rng.choice(_USER_PROMPTS), rng.choice(_EDU_PROMPTS)
        var = "educational" if i in edu else variant
        if var == "educational":
            user = edu_tpl.format(task=sample.task, code=sample.template, vuln=vuln)
            answer = sample.insecure
        else:
            user = user_tpl.format(task=sample.task, code=sample.template)
            answer = sample.insecure if var == "insecure" else sample.secure
        out.append({
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "family": fam,
            "variant": var,
        })
    return out
