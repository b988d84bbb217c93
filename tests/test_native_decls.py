"""native.py's ctypes declarations against the C: every function of `native.SIGNATURES` has the prototype
native/vr_native.h gives it (the number of parameters, each one's type, the result's), every prototype there
has an entry, and the structs native.py mirrors (`native.STRUCTS`) have the header's fields in its order.

ctypes trusts its declarations: a parameter declared c_int32 where C takes int64_t, or one too few, is
garbage read or written at run time, with no error anywhere. The header is parsed here independently of
native.py (a few regular expressions over the library's one header: the compiler holds each .c file's
definitions to it), and the checker is shown to report each kind of mismatch on mutated copies of the table.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vreason_local import native

NATIVE = Path(__file__).resolve().parent.parent / "native"
HEADER = NATIVE / "vr_native.h"

#: C scalar types and the one ctypes type each must be declared as.
SCALARS: dict[str, Any] = {
    "int64_t": ctypes.c_int64,
    "int32_t": ctypes.c_int32,
    "int": ctypes.c_int,
    "uint8_t": ctypes.c_uint8,
    "uint16_t": ctypes.c_uint16,
    "size_t": ctypes.c_size_t,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "bool": ctypes.c_bool,
}


@dataclass(frozen=True)
class CType:
    """A C type as far as ctypes cares: the named type without qualifiers, and how many `*` follow it."""

    base: str
    depth: int

    def __str__(self) -> str:
        return self.base + (" " + "*" * self.depth if self.depth else "")


@dataclass(frozen=True)
class Header:
    """What the checks need from a header: prototypes (name -> parameters, result), structs (name -> fields),
    the typedefs of function pointers and the opaque structs (both passed as addresses)."""

    functions: dict[str, tuple[list[tuple[str, CType]], CType]]
    structs: dict[str, list[tuple[str, CType]]]
    function_pointers: set[str]
    opaque: set[str]
    n_exports: int  # VR_API declarations in the text, parsed or not


def _declaration(text: str, named: bool = True) -> tuple[str, CType]:
    """('name', type) of `const struct vr_tensor *t`; ('', type) of a result type when not `named`."""
    tokens = re.findall(r"\w+|\*", text)
    name = tokens.pop() if named else ""
    words = [t for t in tokens if t not in ("const", "struct", "volatile", "*")]
    if not words or (named and not re.fullmatch(r"[A-Za-z_]\w*", name)):
        raise ValueError(f"cannot read the declaration {text.strip()!r}")
    return name, CType(" ".join(words), tokens.count("*"))


def parse_header(source: str) -> Header:
    """The exported prototypes (`VR_API ...;`), the typedef'd structs and the pointer and opaque types of a
    header's text, comments and preprocessor lines removed."""
    text = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"\\\n", " ", text)  # a macro continued on the next line
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    functions = {}
    for m in re.finditer(r"\bVR_API\b([^;{}()]*?)\b(\w+)\s*\(([^)]*)\)\s*;", text):
        params = [p for p in m.group(3).split(",") if p.strip()]
        if [p.strip() for p in params] == ["void"]:
            params = []
        functions[m.group(2)] = ([_declaration(p) for p in params], _declaration(m.group(1), named=False)[1])
    structs = {}
    for m in re.finditer(r"typedef\s+struct\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
        fields = []
        for decl in filter(str.strip, m.group(1).split(";")):
            first, *more = decl.split(",")  # `const float *a, *b;`: each declarator has the first one's base type
            fields.append(_declaration(first))
            fields += [_declaration(f"{fields[-1][1].base} {d}") for d in more]
        structs[m.group(2)] = fields
    pointers = set(re.findall(r"typedef\s[^;{}]*?\(\s*\*\s*(\w+)\s*\)\s*\([^;]*\)\s*;", text))
    opaque = set(re.findall(r"typedef\s+struct\s+\w+\s+(\w+)\s*;", text))
    opaque |= set(re.findall(r"^\s*struct\s+(\w+)\s*;", text, flags=re.M))
    return Header(functions, structs, pointers, opaque, len(re.findall(r"\bVR_API\b", text)))


def mismatch(declared: Any, c: CType, header: Header, structs: dict[str, type[ctypes.Structure]]) -> str | None:
    """Why ctypes type `declared` does not pass or return C type `c`, or None if it does: scalars exactly
    (int64_t is c_int64 ...), a mirrored struct's pointer as POINTER of its mirror, other pointers as c_void_p
    or a POINTER of the same scalar (char * also c_char_p), function pointers and opaque structs as c_void_p."""
    if c.depth == 0 and c.base == "void":
        return None if declared is None else "void, not None"
    if c.depth == 0 and c.base in header.function_pointers:
        return None if declared is ctypes.c_void_p else "a function pointer, not c_void_p"
    if c.depth == 0:
        if c.base not in SCALARS:
            return f"no ctypes type is known for {c}"
        return None if declared is SCALARS[c.base] else f"not {SCALARS[c.base].__name__}"
    if c.depth == 1 and c.base in structs:
        return None if declared is ctypes.POINTER(structs[c.base]) else f"not POINTER({structs[c.base].__name__})"
    if c.depth == 1 and c.base in header.structs:
        return f"{c.base} has no mirror in native.STRUCTS"
    allowed = [ctypes.c_void_p]
    if c.depth == 1 and c.base == "char":
        allowed.append(ctypes.c_char_p)
    elif c.depth == 1 and c.base in SCALARS:
        allowed.append(ctypes.POINTER(SCALARS[c.base]))
    elif c.depth == 1 and c.base not in ("void", *header.opaque):
        return f"no ctypes type is known for {c}"
    return None if declared in allowed else f"not one of {', '.join(getattr(a, '__name__', str(a)) for a in allowed)}"


def problems(
    table: dict[str, tuple[tuple[Any, ...], Any]], structs: dict[str, type[ctypes.Structure]], header: Header
) -> list[str]:
    """Every way `table` and `structs` disagree with `header`, one line each (none: they agree)."""
    found = []
    for name in sorted(header.functions.keys() - table.keys()):
        found.append(f"{name}: declared in vr_native.h, missing from native.SIGNATURES")
    for name in sorted(table.keys() - header.functions.keys()):
        found.append(f"{name}: in native.SIGNATURES, not declared in vr_native.h")
    for name in sorted(table.keys() & header.functions.keys()):
        (args, res), (params, result) = table[name], header.functions[name]
        if len(args) != len(params):
            found.append(f"{name}: {len(args)} argument types for the {len(params)} parameters of the prototype")
            continue
        for i, (declared, (pname, c)) in enumerate(zip(args, params, strict=True)):
            why = mismatch(declared, c, header, structs)
            if why:
                found.append(f"{name}: parameter {i} ({c} {pname}) declared as {declared}: {why}")
        why = mismatch(res, result, header, structs)
        if why:
            found.append(f"{name}: result {result} declared as {res}: {why}")
    for name in sorted(structs.keys() - header.structs.keys()):
        found.append(f"struct {name}: mirrored in native.STRUCTS, not in vr_native.h")
    for name in sorted(structs.keys() & header.structs.keys()):
        ours, theirs = structs[name]._fields_, header.structs[name]
        if [f[0] for f in ours] != [f[0] for f in theirs]:
            found.append(f"struct {name}: fields {[f[0] for f in ours]}, the header's {[f[0] for f in theirs]}")
            continue
        for (fname, declared), (_, c) in zip(ours, theirs, strict=True):
            why = mismatch(declared, c, header, structs)
            if why:
                found.append(f"struct {name}: field {fname} ({c}) declared as {declared}: {why}")
    return found


@pytest.fixture(scope="module")
def header() -> Header:
    return parse_header(HEADER.read_text(encoding="utf-8"))


def test_the_header_parses_in_full(header: Header) -> None:
    """The parse finds every export the header declares (a prototype it could not read would otherwise go
    unchecked) and the structs: the checks below cannot pass on an empty parse."""
    assert len(header.functions) >= 50 and len(header.functions) == header.n_exports
    assert {"vr_tail_grad_dv", "vr_rows_dot", "vr_draw", "vr_hook_capture", "vr_read_rows"} <= header.functions.keys()
    assert header.functions["vr_tail_grad_dv"] == ([("args", CType("vr_grad_dv_args", 1))], CType("int32_t", 0))
    assert header.functions["vr_sampling_lanes"] == ([], CType("int32_t", 0))
    assert len(header.functions["vr_tail_head_anchor"][0]) == 15
    assert [len(header.structs[s]) for s in ("vr_matrix", "vr_grad_dv_args")] == [5, 23]
    assert header.function_pointers == {"vr_eval_fn"} and header.opaque == {"vr_hook", "vr_tensor"}


def test_the_table_matches_the_prototypes(header: Header) -> None:
    assert problems(native.SIGNATURES, native.STRUCTS, header) == []


def test_every_export_of_the_sources_is_in_the_header(header: Header) -> None:
    """A function exported from a .c file but declared nowhere in the header would have no checked entry."""
    exported = set()
    for path in NATIVE.glob("*.c"):
        exported |= set(re.findall(r"^VR_API\b[^(;]*?\b(vr_\w+)\s*\(", path.read_text(encoding="utf-8"), re.M))
    assert len(exported) >= 50
    assert exported == header.functions.keys()


def test_the_library_is_declared_from_the_table() -> None:
    """native.library() applies the table to the loaded library, every entry (the POSIX-only one aside)."""
    lib = native.library()
    for name, (args, res) in native.SIGNATURES.items():
        if name in native.OPTIONAL and not hasattr(lib, name):
            continue
        fn = getattr(lib, name)
        assert tuple(fn.argtypes) == args and fn.restype is res, name


def _swapped_fields() -> type[ctypes.Structure]:
    fields = list(native.GradDVArgs._fields_)
    i = [f[0] for f in fields].index("n_head")
    fields[i], fields[i + 1] = fields[i + 1], fields[i]
    return type("Swapped", (ctypes.Structure,), {"_fields_": fields})


def _retyped_field() -> type[ctypes.Structure]:
    fields = [(n, ctypes.c_double if n == "eps" else t) for n, t in native.GradDVArgs._fields_]
    return type("Retyped", (ctypes.Structure,), {"_fields_": fields})


def _with(name: str, i: int | None, new: Any) -> dict[str, tuple[tuple[Any, ...], Any]]:
    """A copy of the table with argument `i` of `name` replaced by `new` (i None: its result)."""
    table = dict(native.SIGNATURES)
    args, res = table[name]
    table[name] = (args, new) if i is None else ((*args[:i], new, *args[i + 1 :]), res)
    return table


def _mirror(struct: type[ctypes.Structure]) -> tuple[dict[str, Any], dict[str, type[ctypes.Structure]]]:
    """The table and structs with `struct` as vr_grad_dv_args's mirror, vr_tail_grad_dv taking its pointer."""
    return _with("vr_tail_grad_dv", 0, ctypes.POINTER(struct)), {**native.STRUCTS, "vr_grad_dv_args": struct}


MUTATIONS = {
    "float as double": (lambda: (_with("vr_softmax", 2, ctypes.c_double), native.STRUCTS), "vr_softmax: parameter 2"),
    "int64 as int32": (lambda: (_with("vr_rows_dot", 2, ctypes.c_int32), native.STRUCTS), "vr_rows_dot: parameter 2"),
    "double * as float *": (
        lambda: (_with("vr_argmax_entropy", 2, ctypes.POINTER(ctypes.c_float)), native.STRUCTS),
        "vr_argmax_entropy: parameter 2",
    ),
    "another struct's pointer": (
        lambda: (_with("vr_tail_selfcheck", 0, ctypes.POINTER(native.GradDVArgs)), native.STRUCTS),
        "vr_tail_selfcheck: parameter 0",
    ),
    "a struct by address": (
        lambda: (_with("vr_tail_grad_dv", 0, ctypes.c_void_p), native.STRUCTS),
        "vr_tail_grad_dv: parameter 0",
    ),
    "wrong result": (lambda: (_with("vr_tail_adam", None, ctypes.c_float), native.STRUCTS), "vr_tail_adam: result"),
    "void result as int": (lambda: (_with("vr_hook_free", None, ctypes.c_int), native.STRUCTS), "vr_hook_free: result"),
    "one argument short": (
        lambda: (
            {**native.SIGNATURES, "vr_draw": (native.SIGNATURES["vr_draw"][0][:-1], ctypes.c_int64)},
            native.STRUCTS,
        ),
        "vr_draw: 3 argument types for the 4 parameters",
    ),
    "entry missing": (
        lambda: ({k: v for k, v in native.SIGNATURES.items() if k != "vr_head_terms"}, native.STRUCTS),
        "vr_head_terms: declared in vr_native.h, missing",
    ),
    "entry not in the header": (
        lambda: ({**native.SIGNATURES, "vr_gone": ((), ctypes.c_int32)}, native.STRUCTS),
        "vr_gone: in native.SIGNATURES, not declared",
    ),
    "struct fields swapped": (
        lambda: _mirror(_swapped_fields()),
        "struct vr_grad_dv_args: fields",
    ),
    "struct field retyped": (
        lambda: _mirror(_retyped_field()),
        "struct vr_grad_dv_args: field eps",
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_checker_reports_each_kind_of_mismatch(header: Header, mutation: str) -> None:
    """A copy of the table or a struct changed in one place: the checker names that place, and only it."""
    make, expected = MUTATIONS[mutation]
    table, structs = make()
    found = problems(table, structs, header)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_checker_reports_a_prototype_added_to_the_header() -> None:
    """A new export in the header without an entry, and a changed prototype, are reported too."""
    source = HEADER.read_text(encoding="utf-8")
    added = parse_header(source.replace("#endif\n\n#endif", "#endif\nVR_API int32_t vr_new(int64_t n);\n\n#endif"))
    assert problems(native.SIGNATURES, native.STRUCTS, added) == [
        "vr_new: declared in vr_native.h, missing from native.SIGNATURES"
    ]
    changed = parse_header(
        source.replace("int64_t vr_draw(const float *e, int64_t n,", "int64_t vr_draw(const float *e, int32_t n,")
    )
    assert [p.split(" declared")[0] for p in problems(native.SIGNATURES, native.STRUCTS, changed)] == [
        "vr_draw: parameter 1 (int32_t n)"
    ]
