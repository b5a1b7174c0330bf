"""The results document (``switchema results``): a hand-written markdown template whose
directives are replaced by numbers, tables and figures generated from saved run folders.

A directive is an HTML comment ``<!-- NAME: ARGUMENTS -->`` (or ``<!-- NAME -->``), with run
folders relative to the runs root, models written ``method/model`` (``OTHER_RUN:method/model``
for a model of another run), and options ``key=value``:

``<!-- table: RUN [metrics=a,b] -->``
    the run's main table (:func:`.tables.run_table`).
``<!-- value: RUN A [- B] METRIC [at=final|best] [show=mean|full] [digits=N] [unit=U] -->``
    one number: A's mean ± std, or A − B paired by seed with its 95% interval.
``<!-- sweep: SWEEP A - B METRIC [at=final|best] -->``
    that difference in every cell of a sweep, Holm-corrected over the cells.
``<!-- figure: RUN FILE ["alt text"] [as=NAME] -->``
    the run's figure, copied to ``results/NAME`` next to the output and linked.
``<!-- json: RUN FILE KEY.PATH [digits=N] [scale=S] -->``
    a number from a JSON file the lab wrote (``nqm.json``, ``analysis.json``).
``<!-- include: RUN FILE ["## heading"] -->``
    a generated markdown file, or its section under that heading.
``<!-- setting: RUN KEY -->``
    a setting from the run's ``config.json`` (``lr``, ``epochs``; ``task.description``).
``<!-- closed: keep DECAY STEPS -->`` (also ``moves DECAY STEPS``, ``window DECAY``)
    closed forms, no run needed: the fraction of a period's progress a Switch EMA switch keeps,
    how far an EMA moves towards the model in STEPS steps (1 - DECAY^STEPS), its window
    1 / (1 - DECAY); ``digits=N``, ``scale=S``.
``<!-- claims -->``, ``<!-- provenance -->``
    the claims table (needs ``--spec``); machine, software, threads and dates of the runs used.

``<!-- template: ... -->`` is a note for the template's editors, left out of the document; any
other comment (``<!-- TODO(reading): ... -->``) is kept as it is. A run folder that does
not exist yet gives "*not run yet*" in place of its directive (and is listed as missing), so a
template can be filled before every recipe has run. The output depends only on the template,
the spec and the run folders: filling it twice gives the same bytes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import MissingFileError, UsageError
from .claims import Spec, claims_table, evaluate_claims, load_spec
from .notes import sema_keep_fraction
from .points import POINTS, MissingOutput, NotMeasurable, RunStore
from .provenance import provenance_lines
from .tables import run_table, sweep_table, value_text

__all__ = ["DIRECTIVES", "fill_template", "write_results"]

_COMMENT = re.compile(r"<!--\s*([a-z_]+)\s*(?::\s*(.*?))?\s*-->", re.S)
_OPTION = re.compile(r"^[a-z_]+=")


@dataclass
class _Context:
    store: RunStore
    out: Path
    spec: Spec | None
    missing: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # results/NAME -> source

    def run(self, name: str) -> bool:
        """Whether ``name`` exists; if not, it is recorded as missing."""
        if self.store.get(name) is None:
            if name not in self.missing:
                self.missing.append(name)
            return False
        return True


def _not_run(*names: str) -> str:
    return "*not run yet: " + ", ".join(f"`{n}`" for n in names) + "*"


def _split(args: str) -> tuple[list[str], dict[str, str]]:
    """Positional words and ``key=value`` options (quotes group words)."""
    try:
        words = shlex.split(args or "")
    except ValueError as e:
        raise UsageError(f"cannot read the arguments {args!r}: {e}") from None
    is_opt = [bool(_OPTION.match(w)) for w in words]
    pos = [w for w, o in zip(words, is_opt) if not o]
    opts = dict(w.split("=", 1) for w, o in zip(words, is_opt) if o)
    return pos, opts


def _runs_of(run: str, *models: str) -> list[str]:
    return list(dict.fromkeys([run] + [m.split(":", 1)[0] for m in models if ":" in m]))


def _value(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if len(pos) == 5 and pos[2] == "-":
        run, a, _, b, metric = pos
    elif len(pos) == 3:
        (run, a, metric), b = pos, None
    else:
        raise UsageError("value takes RUN A METRIC or RUN A - B METRIC, then options")
    at = opts.get("at", "final")
    if at not in POINTS:
        raise UsageError(f"at must be one of {', '.join(POINTS)}, got {at!r}")
    if opts.get("show", "") not in ("", "mean", "full"):
        raise UsageError(f"show must be mean or full, got {opts['show']!r}")
    missing = [r for r in _runs_of(run, a, *([b] if b else [])) if not ctx.run(r)]
    if missing:
        return _not_run(*missing)
    digits = int(opts["digits"]) if "digits" in opts else None
    unit = None if "unit" not in opts else ("" if opts["unit"] == "none" else opts["unit"])
    return value_text(
        ctx.store, run, a, b, metric, at=at, show=opts.get("show", ""), digits=digits, unit=unit
    )


def _table(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if len(pos) != 1:
        raise UsageError("table takes one run folder (and metrics=a,b models=m/a,m/b primary=no)")
    if not ctx.run(pos[0]):
        return _not_run(pos[0])
    extras = opts["metrics"].split(",") if "metrics" in opts else None
    models = opts["models"].split(",") if "models" in opts else None
    if opts.get("primary", "yes") not in ("yes", "no"):
        raise UsageError(f"primary must be yes or no, got {opts['primary']!r}")
    run = ctx.store.get(pos[0])
    return "\n".join(
        run_table(ctx.store, run, extras, models=models, primary=opts.get("primary") != "no")
    )


def _sweep(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if len(pos) != 5 or pos[2] != "-":
        raise UsageError("sweep takes SWEEP A - B METRIC (and at=final|best)")
    sweep, a, _, b, metric = pos
    if not (ctx.store.root / sweep / "sweep.json").is_file():
        if sweep not in ctx.missing:
            ctx.missing.append(sweep)
        return _not_run(sweep)
    lines = sweep_table(ctx.store, sweep, a, b, metric, opts.get("at", "final"))
    ctx.missing += [m for m in ctx.store.missing if m.startswith(sweep) and m not in ctx.missing]
    return "\n".join(lines)


def _file(ctx: _Context, run: str, name: str) -> Path | None:
    path = ctx.store.root / run / name
    if path.is_file():
        return path
    key = f"{run}/{name}"
    if key not in ctx.missing:
        ctx.missing.append(key)
    return None


def _figure(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if len(pos) not in (2, 3):
        raise UsageError('figure takes RUN FILE ["alt text"] (and as=NAME)')
    run, name = pos[:2]
    alt = pos[2] if len(pos) == 3 else f"{run}: {name}"
    src = _file(ctx, run, name)
    if src is None:
        return _not_run(f"{run}/{name}")
    target = opts.get("as", f"{Path(run).name}_{name}")
    if ctx.figures.get(target, str(src)) != str(src):
        raise UsageError(f"two figures would be copied to results/{target}: give one as=NAME")
    ctx.figures[target] = str(src)
    dest = ctx.out.parent / "results" / target
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dest)
    return f"![{alt}](results/{target})"


def _json(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if len(pos) != 3:
        raise UsageError("json takes RUN FILE KEY.PATH (and digits=N, scale=S)")
    src = _file(ctx, *pos[:2])
    if src is None:
        return _not_run(f"{pos[0]}/{pos[1]}")
    value: Any = json.loads(src.read_text())
    for part in pos[2].split("."):
        if isinstance(value, list) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise UsageError(f"{src} has no {pos[2]!r} (stopped at {part!r})")
    if not isinstance(value, int | float):
        raise UsageError(f"{src}: {pos[2]} is not a number but {type(value).__name__}")
    value = float(value) * float(opts.get("scale", 1.0))
    return f"{value:.{int(opts['digits'])}f}" if "digits" in opts else f"{value:.6g}"


def _include(args: str, ctx: _Context) -> str:
    pos, _ = _split(args)
    if len(pos) not in (2, 3):
        raise UsageError('include takes RUN FILE ["## heading"]')
    src = _file(ctx, *pos[:2])
    if src is None:
        return _not_run(f"{pos[0]}/{pos[1]}")
    lines = src.read_text().splitlines()
    if len(pos) == 3:
        heading = pos[2].strip()
        if heading not in [ln.strip() for ln in lines]:
            raise UsageError(f"{src} has no heading {heading!r}")
        start = [ln.strip() for ln in lines].index(heading)
        level = len(heading) - len(heading.lstrip("#"))
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
            ),
            len(lines),
        )
        lines = lines[start + 1 : end]
    return "\n".join(lines).strip("\n")


#: closed forms a template may quote: name -> (arguments, fn)
CLOSED_FORMS: dict[str, tuple[str, Callable[[float, float], float]]] = {
    "keep": ("DECAY STEPS", lambda d, k: sema_keep_fraction(d, int(k))),
    "moves": ("DECAY STEPS", lambda d, k: 1.0 - d**k),
    "window": ("DECAY", lambda d, _: 1.0 / (1.0 - d)),
}


def _closed(args: str, ctx: _Context) -> str:
    pos, opts = _split(args)
    if not pos or pos[0] not in CLOSED_FORMS or len(pos) not in (2, 3):
        forms = "; ".join(f"{k} {a}" for k, (a, _) in CLOSED_FORMS.items())
        raise UsageError(f"closed takes one of: {forms}")
    name, *numbers = pos
    numbers = [float(x) for x in numbers] + [0.0]
    value = CLOSED_FORMS[name][1](numbers[0], numbers[1]) * float(opts.get("scale", 1.0))
    return f"{value:.{int(opts.get('digits', 2))}f}"


def _setting(args: str, ctx: _Context) -> str:
    pos, _ = _split(args)
    if len(pos) != 2:
        raise UsageError("setting takes RUN KEY (a setting of config.json, e.g. lr or task.name)")
    if not ctx.run(pos[0]):
        return _not_run(pos[0])
    config = ctx.store.get(pos[0]).config
    value: Any = config["config"] if "." not in pos[1] else config
    for part in pos[1].split("."):
        if not isinstance(value, dict) or part not in value:
            raise UsageError(f"{pos[0]}/config.json has no setting {pos[1]!r}")
        value = value[part]
    if isinstance(value, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _claims(args: str, ctx: _Context) -> str:
    if ctx.spec is None:
        raise UsageError("the <!-- claims --> directive needs --spec (the claims spec)")
    rows = evaluate_claims(ctx.spec, ctx.store)
    for r in rows:
        ctx.missing += [m for m in r.missing if m not in ctx.missing]
    return "\n".join(claims_table(rows, ctx.store))


#: directive name -> fn(arguments, context) -> markdown. ``provenance`` is filled last.
DIRECTIVES: dict[str, Callable[[str, _Context], str]] = {
    "table": _table,
    "value": _value,
    "sweep": _sweep,
    "figure": _figure,
    "json": _json,
    "include": _include,
    "closed": _closed,
    "setting": _setting,
    "template": lambda args, ctx: "",  # a note for the template's editors, left out
    "claims": _claims,
    "provenance": lambda args, ctx: "",  # placeholder, see fill_template
}


def _expand(text: str, ctx: _Context, where: str) -> str:
    def one(m: re.Match) -> str:
        name, args = m.group(1), m.group(2) or ""
        line = text.count("\n", 0, m.start()) + 1
        if name not in DIRECTIVES:
            raise UsageError(
                f"{where}, line {line}: unknown directive <!-- {name}: -->; known: "
                f"{', '.join(DIRECTIVES)}"
            )
        if name == "provenance":
            return m.group(0)
        try:
            return DIRECTIVES[name](args, ctx)
        except NotMeasurable as e:
            return f"*n/a: {e}*"
        except MissingOutput as e:
            if e.name not in ctx.missing:
                ctx.missing.append(e.name)
            return _not_run(e.name)
        except UsageError as e:
            raise UsageError(f"{where}, line {line}, <!-- {name} -->: {e}") from None

    return _COMMENT.sub(one, text)


def fill_template(
    template: str,
    store: RunStore,
    out: Path,
    command: str,
    spec: Spec | None = None,
    where: str = "template",
) -> tuple[str, list[str]]:
    """The filled document and the run folders (or files) it found missing."""
    ctx = _Context(store, Path(out), spec)
    text = _expand(template, ctx, where)
    recipes = spec.recipes() if spec is not None else {}
    prov = "\n".join(
        [*provenance_lines(store.used(), recipes), "", f"Regenerate with `{command}`."]
    )
    text = re.sub(r"<!--\s*provenance\s*-->", lambda m: prov, text)
    head = f"<!-- Generated by `{command}`. Do not edit: edit the template and regenerate. -->\n"
    return head + text, ctx.missing


def write_results(
    template: str | Path,
    runs_root: str | Path,
    out: str | Path,
    command: str,
    *,
    spec: str | Path | None = None,
) -> list[str]:
    """Fill ``template`` from the runs under ``runs_root`` and write ``out``; returns the run
    folders (or files) the template named that do not exist yet."""
    template = Path(template)
    if not template.is_file():
        raise MissingFileError(f"template {template} not found")
    if not Path(runs_root).is_dir():
        raise MissingFileError(f"runs root {runs_root} is not a folder")
    parsed = load_spec(spec) if spec is not None else None
    text, missing = fill_template(
        template.read_text(), RunStore(runs_root), Path(out), command, parsed, str(template)
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return missing
