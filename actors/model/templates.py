"""Rendering message templates safely.

Templates are Jinja2 in its sandboxed environment with strict undefined
variables: a template that names a variable the context lacks fails its step
with the variable's name, never sends a blank. The field-service templates
use camelCase (``{{client.firstName}}``) over snake_case columns
(``first_name``); :class:`Record` resolves one to the other.

The sandbox is Jinja2's immutable one (a template cannot change the context
the step's other fields render from) and every render is bounded by the
``TEMPLATE_*`` limits of :mod:`actors.model.limits`: time (a deadline enforced inside
the render), output, the size of every value a template builds, ``range()``
and integers. A template over a limit fails its step with the reason.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import itertools
import math
import os
import re
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, TypeVar

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, markup_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    SecurityError,
)
from jinja2.utils import Namespace, missing
from markupsafe import Markup, soft_str

# Re-exported: records and workflow checks map camelCase keys with the same function.
from actors.model.limits import (
    STEP_TEMPLATES_TIME_LIMIT_S,
    TEMPLATE_MAX_INT_BITS,
    TEMPLATE_MAX_MEMORY,
    TEMPLATE_MAX_OUTPUT,
    TEMPLATE_MAX_RANGE,
    TEMPLATE_MAX_VALUE,
    TEMPLATE_TIME_LIMIT_S,
)
from actors.model.naming import AmbiguousName, column_for
from actors.model.naming import camel_to_snake as camel_to_snake
from config.errors import TemplateRenderError


class Record(dict[str, Any]):
    """A row as a template sees it: ``firstName`` finds a ``first_name`` column,
    and ``first_name`` a ``firstName`` one.

    ``path`` is where it sits in the context (``client``), so an error can name
    the whole variable (``client.lastName``).
    """

    path = ""

    def __missing__(self, key: str) -> Any:
        name = self._column(key)
        if name is None:
            raise KeyError(key)
        return dict.__getitem__(self, name)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._column(key) is not None

    def _column(self, key: object) -> str | None:
        """The key ``key`` names in another spelling (None when none, or several, fit)."""
        if not isinstance(key, str):
            return None
        try:
            return column_for(key, self.keys())
        except AmbiguousName:
            return None


def as_records(value: Any, path: str = "") -> Any:
    """Wrap every mapping in ``value`` (recursively) as a :class:`Record`."""
    if isinstance(value, dict):
        record = Record(
            {key: as_records(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        )
        record.path = path
        return record
    if isinstance(value, list):
        return [as_records(item, path) for item in value]
    return value


class _Undefined(StrictUndefined):
    """Names the whole missing variable, e.g. ``client.lastName``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        owner = self._undefined_obj
        name = self._undefined_name
        if owner is missing:
            return f"{name} is undefined"
        if isinstance(owner, Record) and owner.path:
            return f"{owner.path}.{name} is undefined"
        return f"{type(owner).__name__} value has no attribute {name!r}"


def _parse_datetime(value: Any) -> dt.datetime | dt.date:
    if isinstance(value, (dt.datetime, dt.date)):
        return value
    text = str(value)
    try:
        return dt.datetime.fromisoformat(text) if "T" in text or " " in text else dt.date.fromisoformat(text)
    except ValueError:
        raise TemplateRenderError(f"date filter: {text!r} is not an ISO date or timestamp") from None


def date_filter(value: Any, fmt: str = "%b %-d, %Y") -> str:
    """``{{ job.scheduled_at | date("%A %-d %B at %H:%M") }}`` (strftime format)."""
    if value is None or value == "":
        return ""
    return _parse_datetime(value).strftime(fmt)


_CURRENCY_SYMBOLS = {"USD": "$", "CAD": "$", "AUD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def money_filter(value: Any, currency: str = "USD", cents: bool = False) -> str:
    """``{{ invoice.amount_cents | money("USD", cents=True) }}`` -> ``$1,450.00``."""
    if value is None or value == "":
        return ""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise TemplateRenderError(f"money filter: {value!r} is not a number") from None
    if cents:
        amount = amount / 100
    symbol = _CURRENCY_SYMBOLS.get(currency.upper())
    text = f"{abs(amount):,.2f}"
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


# --- Limits -----------------------------------------------------------------
# A template is a tenant's code running on a worker that every tenant shares.
# The sandbox keeps it away from Python's internals; what follows keeps it
# from taking the worker's time and memory: operations that could build a huge
# value are checked before they run, every value a template builds is measured,
# and the render runs under a deadline (see _limited).


class _Refused(Exception):
    """A template went over a limit; the message completes "template for <field> ..."."""


class _Stop(BaseException):
    """Raised into a template's own frames when its time or memory is up.

    A BaseException, so that no ``except Exception`` on the way (Jinja's own
    error handling included) can swallow it and let the template run on.
    """


def _seconds(value: float) -> str:
    return f"{value:g} s"


_TOO_LONG = f"builds a string longer than {TEMPLATE_MAX_VALUE:,} characters"
_TOO_BIG = f"builds a list or mapping larger than {TEMPLATE_MAX_VALUE:,} items and characters"
_TOO_MUCH_OUTPUT = f"renders more than {TEMPLATE_MAX_OUTPUT:,} characters"
_NUMBER_TOO_BIG = f"computes a number larger than {TEMPLATE_MAX_INT_BITS:,} bits"


def _size(value: Any, budget: int = TEMPLATE_MAX_VALUE) -> int:
    """About how many characters ``value`` prints as, counting a list as often as it
    appears inside others; stops counting once past ``budget``.

    Bounded work however the value was built: ``[l, l, l]`` nested ten deep is
    small to build and huge to print, compare or serialise.
    """
    total = 0
    stack = [value]
    visited = 0
    while stack:
        item = stack.pop()
        visited += 1
        if not visited & 4095:
            _tick()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += 2 * len(item) + 1
            if total <= budget:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item) + 1
            if total <= budget:
                stack.extend(item)
        elif isinstance(item, Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += 1
        if total > budget:
            break
    return total


def _check_value(value: Any) -> Any:
    """Refuse a value a template built that is over TEMPLATE_MAX_VALUE."""
    if isinstance(value, str):
        if len(value) > TEMPLATE_MAX_VALUE:
            raise _Refused(_TOO_LONG)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        if _size(value) > TEMPLATE_MAX_VALUE:
            raise _Refused(_TOO_BIG)
    elif isinstance(value, int) and value.bit_length() > TEMPLATE_MAX_INT_BITS:
        raise _Refused(_NUMBER_TOO_BIG)
    return value


def _check_length(length: int) -> None:
    if length > TEMPLATE_MAX_VALUE:
        raise _Refused(_TOO_LONG)


def _check_width(width: Any) -> None:
    """A padding width or field width that would build a string over the limit."""
    if isinstance(width, int) and width > TEMPLATE_MAX_VALUE:
        raise _Refused(_TOO_LONG)


def _check_multiply(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, (str, bytes, list, tuple)):
            if times > 0 and _size(seq) * times > TEMPLATE_MAX_VALUE:
                raise _Refused(_TOO_LONG if isinstance(seq, (str, bytes)) else _TOO_BIG)
            return
    if (isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > TEMPLATE_MAX_INT_BITS + 1):
        raise _Refused(_NUMBER_TOO_BIG)


def _check_power(base: Any, exponent: Any) -> None:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and math.log2(abs(base)) * exponent > TEMPLATE_MAX_INT_BITS):
        raise _Refused(_NUMBER_TOO_BIG)


def _check_add(left: Any, right: Any) -> None:
    if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
        _check_length(len(left) + len(right))
    elif (isinstance(left, (list, tuple)) and isinstance(right, (list, tuple))
          and _size(left) + _size(right) > TEMPLATE_MAX_VALUE):
        raise _Refused(_TOO_BIG)


_PRINTF_FIELD = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.DOTALL)


def _check_printf(text: str, values: Any) -> None:
    """``"%10s" % value``: refuse widths, repeats and ``*`` that would build too long a string."""
    positional = list(values) if isinstance(values, tuple) else [values]
    index = 0
    total = len(text)
    for match in _PRINTF_FIELD.finditer(text):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        if "*" in (width, precision):
            raise _Refused("uses a '*' width in % formatting")
        for number in (width, precision):
            if number is not None and (len(number) > 7 or int(number) > TEMPLATE_MAX_VALUE):
                raise _Refused(_TOO_LONG)
        if key is not None and isinstance(values, Mapping):
            value = values.get(key)
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
        total += int(width or 0) + int(precision or 0) + _size(value) + 32
        _check_length(total)


_SPEC_NUMBER = re.compile(r"\d+")


class _FormatLimits(SandboxedFormatter):
    """``"{:>10}".format(value)``: widths and the whole result are bounded."""

    _written = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._written = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _SPEC_NUMBER.findall(format_spec):
            if len(number) > 7 or int(number) > TEMPLATE_MAX_VALUE:
                raise _Refused(_TOO_LONG)
        _check_value(value)
        text = super().format_field(value, format_spec)
        self._written += len(text)
        _check_length(self._written)
        return text


class _EscapeFormatLimits(_FormatLimits, SandboxedEscapeFormatter):
    pass


_STR_TYPES = (str, bytes, bytearray)


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Before a template calls a method of a string or number that can build a huge
    value from small arguments; returns the arguments to call it with."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, (*_STR_TYPES, int)):
        return args
    name = getattr(obj, "__name__", "")
    if isinstance(owner, _STR_TYPES):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_width(args[0] if args else kwargs.get("width"))
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, int):
                tab = "\t" if isinstance(owner, str) else b"\t"
                _check_length(len(owner) + owner.count(tab) * tabsize)  # type: ignore[arg-type]
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if isinstance(old, type(owner)) and isinstance(new, type(owner)):
                _check_length(_replaced_length(owner, old, new, args[2] if len(args) > 2 else -1))
        elif name == "join" and args:
            items = list(args[0])
            _check_length(sum(_size(item) for item in items) + len(owner) * len(items))
            return (items, *args[1:])
        elif name in ("translate", "maketrans"):
            raise _Refused(f"calls {name}(), which templates may not use")
    elif name == "to_bytes":
        _check_width(args[0] if args else kwargs.get("length", 1))
    return args


def _replaced_length(text: Any, old: Any, new: Any, count: Any) -> int:
    found = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _range(*args: int) -> range:
    """``range()`` for templates: at most TEMPLATE_MAX_RANGE numbers."""
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = TEMPLATE_MAX_RANGE + 1
    if count > TEMPLATE_MAX_RANGE:
        raise _Refused(f"asks range() for more than {TEMPLATE_MAX_RANGE:,} numbers")
    return numbers


# Filters that build their result from their arguments: what to check first.
def _filter_center(a: dict[str, Any]) -> None:
    _check_width(a["width"])


def _filter_indent(a: dict[str, Any]) -> None:
    text, width = str(a["s"]), a["width"]
    per_line = width if isinstance(width, int) else len(str(width))
    _check_length(len(text) + (text.count("\n") + 1) * max(per_line, 0))


def _filter_wordwrap(a: dict[str, Any]) -> None:
    text, width = str(a["s"]), a["width"]
    wrap = a["wrapstring"]
    lines = len(text) // max(width, 1) + 1 if isinstance(width, int) else len(text) + 1
    _check_length(len(text) + lines * (len(wrap) if isinstance(wrap, str) else 2))


def _filter_replace(a: dict[str, Any]) -> None:
    _check_length(_replaced_length(str(a["s"]), str(a["old"]), str(a["new"]), a["count"]))


def _filter_format(a: dict[str, Any]) -> None:
    _check_printf(str(a["value"]), a["kwargs"] or a["args"])


def _filter_join(a: dict[str, Any]) -> None:
    items = list(a["value"])  # a generator is read once, here, and passed on as a list
    a["value"] = items
    _check_length(sum(_size(item) for item in items) + len(str(a["d"])) * len(items))


def _filter_batch(a: dict[str, Any]) -> None:
    if isinstance(a["linecount"], int) and a["linecount"] > TEMPLATE_MAX_RANGE:
        raise _Refused(f"asks batch() for lists of more than {TEMPLATE_MAX_RANGE:,} items")


def _filter_slice(a: dict[str, Any]) -> None:
    if isinstance(a["slices"], int) and a["slices"] > TEMPLATE_MAX_RANGE:
        raise _Refused(f"asks slice() for more than {TEMPLATE_MAX_RANGE:,} lists")


def _filter_sum(a: dict[str, Any]) -> None:
    if isinstance(a["start"], bool) or not isinstance(a["start"], (int, float, Decimal)):
        raise _Refused("sums with a start that is not a number")


def _filter_tojson(a: dict[str, Any]) -> None:
    indent = a["indent"]
    if (isinstance(indent, int) and indent > 16) or (isinstance(indent, str) and len(indent) > 16):
        raise _Refused("asks tojson for an indent of more than 16")


_FILTER_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "center": _filter_center, "indent": _filter_indent, "wordwrap": _filter_wordwrap,
    "replace": _filter_replace, "format": _filter_format, "join": _filter_join,
    "batch": _filter_batch, "slice": _filter_slice, "sum": _filter_sum, "tojson": _filter_tojson,
}


def _limit_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with its arguments checked first (where they can build a huge
    value) and its result measured. Keeps Jinja's ``pass_*`` marker (``wraps``
    copies it), so the filter still gets its context."""
    check = _FILTER_CHECKS.get(name)
    signature = inspect.signature(function) if check is not None else None

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if check is not None and signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(bound.arguments)
            args, kwargs = bound.args, bound.kwargs
        return _check_value(function(*args, **kwargs))

    return limited


# How often, at most, a render looks at the process's memory.
_MEMORY_CHECK_EVERY_S = 0.01
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int | None:
    """This process's resident memory, where Linux reports it (opened each time:
    a descriptor kept open would still describe the parent after a fork)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


T = TypeVar("T")


class _Budget:
    """The time (and memory) one render may still use."""

    __slots__ = ("baseline", "checkpoint", "deadline", "late")

    def __init__(self, seconds: float, late: str) -> None:
        now = time.perf_counter()
        self.deadline = now + seconds
        self.checkpoint = min(now + _MEMORY_CHECK_EVERY_S, self.deadline)
        self.baseline: int | None = None
        self.late = late

    def check(self) -> None:
        now = time.perf_counter()
        if now >= self.deadline:
            raise _Stop(self.late)
        self.checkpoint = min(now + _MEMORY_CHECK_EVERY_S, self.deadline)
        resident = _resident_bytes()
        if resident is None:
            return
        if self.baseline is None:
            self.baseline = resident
        elif resident - self.baseline > TEMPLATE_MAX_MEMORY:
            raise _Stop(f"uses more than {TEMPLATE_MAX_MEMORY // 2**20:,} MB of memory")


class _Renders(threading.local):
    budget: _Budget | None = None


_renders = _Renders()
_clock = time.perf_counter


def _tick() -> None:
    """Called by a render as each block body starts (every loop iteration, macro
    call, if branch) and at each call, filter and operator: past the deadline,
    stop the render."""
    budget = _renders.budget
    if budget is not None and _clock() >= budget.checkpoint:
        budget.check()


def _limited(work: Callable[[], T], seconds: float, late: str) -> T:
    """Run ``work`` (a render) in this thread, stopping it once ``seconds`` have passed.

    Python cannot stop a thread from outside, so the render stops itself: the
    compiled template calls :func:`_tick` at the start of every block body
    (each iteration of a loop, each macro call, each branch taken) and the
    sandbox does at every call, filter and intercepted operator; past the
    deadline it raises :class:`_Stop` into the template. Work between two
    ticks is one operation on values the size limits keep small, so a render
    ends within milliseconds of its deadline. Every 10 ms the tick also
    compares the process's resident memory with what it was at the first look
    (TEMPLATE_MAX_MEMORY). A normal template (no loops) ticks a few times.
    """
    previous = _renders.budget
    _renders.budget = _Budget(seconds, late)
    try:
        return work()
    finally:
        _renders.budget = previous


class _Buffer(list[str]):
    """Where a macro, ``{% set %}`` block or ``{% filter %}`` block collects its output."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def append(self, chunk: str) -> None:
        self.written += len(chunk)
        if self.written > TEMPLATE_MAX_OUTPUT:
            raise _Refused(_TOO_MUCH_OUTPUT)
        list.append(self, chunk)

    def extend(self, chunks: Iterable[str]) -> None:
        for chunk in chunks:
            self.append(chunk)


def _join(parts: Iterable[str]) -> str:
    parts = list(parts)
    if sum(map(len, parts)) > TEMPLATE_MAX_OUTPUT:
        raise _Refused(_TOO_MUCH_OUTPUT)
    return "".join(parts)


class _CodeGenerator(CodeGenerator):
    """Jinja's compiler, with a deadline check at the start of every block body
    and the places a template builds values routed through the environment:
    output buffers, ``~`` and list, tuple and dict literals (``[l, l, l]``
    nested a few deep is tiny to write and huge to print)."""

    def blockvisit(self, body: Iterable[nodes.Node], frame: Frame) -> None:
        # Each loop iteration, macro call, block and branch taken: is the time up?
        self.writeline("environment.tick()")
        super().blockvisit(body, frame)

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_parts(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _measured(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        if getattr(node, "ctx", "load") != "load":  # an assignment target, not a value
            visit(node, frame)
            return
        self.write("environment.checked_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._measured(super().visit_List, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        self._measured(super().visit_Tuple, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._measured(super().visit_Dict, node, frame)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (a template cannot change the context later
    fields render from: ``client.update(...)`` is refused), with every way a
    template builds a value bounded by the ``TEMPLATE_*`` limits."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    concat = staticmethod(_join)  # type: ignore[assignment]

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _range
        del self.globals["lipsum"]  # lorem ipsum: no use in a message, and slow when asked for much

    tick = staticmethod(_tick)

    @staticmethod
    def new_buffer() -> _Buffer:
        return _Buffer()

    @staticmethod
    def checked_value(value: Any) -> Any:
        _tick()
        return _check_value(value)

    def join_parts(self, context: Context, parts: tuple[Any, ...]) -> str:
        """``a ~ b``, measured before it is joined."""
        _tick()
        texts = [soft_str(part) for part in parts]
        if sum(map(len, texts)) > TEMPLATE_MAX_VALUE:
            raise _Refused(_TOO_LONG)
        return markup_join(texts) if context.eval_ctx.autoescape else "".join(texts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            _check_multiply(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            _check_add(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return _check_value(self.binop_table[operator](left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(obj, args, kwargs)
        return _check_value(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` / ``format_map`` through a formatter that bounds widths and the result."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
            "format", "format_map"
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        text_type = type(owner)
        is_format_map = value.__name__ == "format_map"
        formatter: _FormatLimits = (
            _EscapeFormatLimits(self, escape=owner.escape) if isinstance(owner, Markup) else _FormatLimits(self)
        )

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return text_type(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)


def _environment(*, html: bool) -> _Sandbox:
    environment = _Sandbox(
        undefined=_Undefined,
        # A NULL column renders empty, never as the word "None".
        finalize=lambda value: "" if value is None else value,
        autoescape=html,
        keep_trailing_newline=True,
    )
    environment.filters["date"] = date_filter
    environment.filters["money"] = money_filter
    environment.filters = {name: _limit_filter(name, f) for name, f in environment.filters.items()}
    return environment


_TEXT = _environment(html=False)
_HTML = _environment(html=True)  # HTML email: every value is escaped


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


def check_syntax(source: str, html: bool = False) -> None:
    """Compile ``source`` as it will render (cached for the render); raise Jinja's
    TemplateSyntaxError, with its line, when it is not a template."""
    _compile(source, html)


_SINGLE_BRACE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}(?!\})")


def from_single_braces(text: str) -> str:
    """The CRM rules' ``{appointment.patientId}`` as a template: ``{{appointment.patientId}}``.

    Text that already uses double braces is left as it is.
    """
    if "{{" in text or "{%" in text:
        return text
    return _SINGLE_BRACE.sub(r"{{\1}}", text)


def render(
    source: str, context: dict[str, Any], *, field: str, html: bool = False, time_left: float | None = None
) -> str:
    """Render one template string; ``field`` names it in any error.

    The render stops with a :class:`TemplateRenderError` when it takes longer
    than TEMPLATE_TIME_LIMIT_S (or ``time_left``, what remains of its step's
    STEP_TEMPLATES_TIME_LIMIT_S, if that is less), renders more than
    TEMPLATE_MAX_OUTPUT characters or builds a value over a TEMPLATE_* limit.
    """
    seconds, late = TEMPLATE_TIME_LIMIT_S, f"took longer than {_seconds(TEMPLATE_TIME_LIMIT_S)}"
    if time_left is not None and time_left < seconds:
        seconds = time_left
        late = f"ran past the {_seconds(STEP_TEMPLATES_TIME_LIMIT_S)} all the templates of one step may take"
        if seconds <= 0:
            raise TemplateRenderError(
                f"template for {field} not rendered: the templates before it took the"
                f" {_seconds(STEP_TEMPLATES_TIME_LIMIT_S)} all the templates of one step may take")

    def work() -> str:
        template = _compile(source, html)
        stream = template.root_render_func(template.new_context(context))
        chunks: list[str] = []
        written = 0
        try:
            while batch := list(itertools.islice(stream, 64)):  # read in C, measured every 64 pieces
                written += sum(map(len, batch))
                if written > TEMPLATE_MAX_OUTPUT:
                    raise _Refused(_TOO_MUCH_OUTPUT)
                chunks += batch
        finally:
            stream.close()
        return "".join(chunks)

    try:
        return _limited(work, seconds, late)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(f"{field}: template syntax error on line {exc.lineno}: {exc.message}") from None
    except (_Stop, _Refused) as exc:
        raise TemplateRenderError(f"template for {field} {exc}") from None
    except SecurityError as exc:
        raise TemplateRenderError(f"{field}: template refused for security: {exc}") from None
    except UndefinedError as exc:
        raise TemplateRenderError(f"{field}: undefined template variable: {exc.message}") from None
    except TemplateRenderError as exc:
        raise TemplateRenderError(f"{field}: {exc}") from None
    except Exception as exc:  # any other error inside the template's own expressions
        raise TemplateRenderError(f"{field}: template failed: {exc}") from None


def referenced_fields(source: str) -> set[tuple[str, str]]:
    """The ``name.attribute`` pairs a template reads, e.g. {("client", "firstName")}."""
    try:
        tree = _TEXT.parse(source)
    except TemplateSyntaxError:
        return set()
    return {
        (node.node.name, node.attr)
        for node in tree.find_all(nodes.Getattr)
        if isinstance(node.node, nodes.Name)
    }
