"""``bench.instructions`` reads callgrind's output right: each object's own instructions.

A real run under valgrind takes a minute, too long for the suite; the reading is what a
wrong figure would come from, so it is checked here on a file written the way callgrind
writes one (names given once and then by number, a call's inclusive cost after
``calls=``, names first given in a call's ``cob=``).
"""

from __future__ import annotations

from bench.instructions import GROUPS, OTHER, by_object, grouped, totals

CALLGRIND_OUT = """\
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m broker.cli serve
desc: Trigger: Client Request: acquire
positions: line
events: Ir
summary: 1110
totals: 1110

ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 500
cob=(2) /venv/site-packages/cryptography/hazmat/bindings/_rust.abi3.so
cfi=(2) curve25519.c
cfn=(2) ossl_ed25519_sign
calls=1 0
12 9999
+2 100

ob=(2)
fl=(2)
fn=(2)
5 400

ob=(1)
fl=(1)
fn=(1)
* 10

ob=(3) /lib/x86_64-linux-gnu/libc.so.6
fl=(3) malloc.c
fn=(3) malloc
1 100
"""

PYTHON, RUST, LIBC = (
    "/usr/lib/libpython3.11.so.1.0",
    "/venv/site-packages/cryptography/hazmat/bindings/_rust.abi3.so",
    "/lib/x86_64-linux-gnu/libc.so.6",
)


def test_each_object_gets_its_own_instructions_and_not_its_callees() -> None:
    lines = CALLGRIND_OUT.splitlines()
    found = by_object(lines)
    # The 9,999 after calls= is the signature's inclusive cost, already counted as its own.
    assert found == {PYTHON: 610, RUST: 400, LIBC: 100}
    assert sum(found.values()) == totals(lines) == 1110


def test_objects_are_grouped_by_what_they_do() -> None:
    groups = grouped(by_object(CALLGRIND_OUT.splitlines()))
    names = [name for name, _ in GROUPS]
    assert groups[names[0]] == 610  # the interpreter
    assert groups[names[1]] == 400  # cryptography
    assert groups[names[2]] == 0  # SQLite: not in this file
    assert groups[names[3]] == 100  # libc
    assert groups[OTHER] == 0
    assert grouped(by_object(["ob=(1) /x/_json.cpython-311-x86_64-linux-gnu.so", "1 7"])) == {
        **{name: 0 for name in names},
        OTHER: 7,
    }
