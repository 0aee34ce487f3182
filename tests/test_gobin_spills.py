"""The spill-slot check behind the Go TLS RET probes (harness/collectors/gobin/spills.py).

crypto/tls.(*Conn).Read is probed at its RETs, reading c and b from their spill slots,
only when every path from the entry to every RET stores them there and nothing writes
them after. Checked on the real function as both Go toolchains here compile it (Go 1.26:
frame pointer pushed first; Debian's Go 1.19: frame allocated first), on that real code
altered the ways that must be refused, and on small listings written by hand. No root.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.collectors.gobin.pclntab import disassemble, open_elf, read_pclntab
from harness.collectors.gobin.spills import spilled_args
from harness.collectors.tls.gotls import READ, resolve_go_tls

BIN = Path(__file__).resolve().parent.parent / "scenarios" / "go" / "bin"
# the Go 1.26 module build, and Debian's Go 1.19 (scripts/build-grpc-targets)
BINARIES = ("grpc-server-v1.85.0", "grpc-client-v1.33.3-stripped", "tls-client-go1.19")


def _read_listing(name: str) -> str:
    path = BIN / name
    f, elf = open_elf(path)
    with f:
        fn = read_pclntab(elf, {READ}).functions[READ]
    return disassemble(path, fn)


@pytest.fixture(scope="module", params=BINARIES)
def listing(request: pytest.FixtureRequest) -> str:
    return _read_listing(request.param)


def _lines(listing: str) -> list[str]:
    return [ln for ln in listing.splitlines() if re.match(r"^\s*[0-9a-f]+:\s", ln)]


def _before(line: str) -> str:
    """An address just before the line's instruction (and after the previous one's)."""
    return f"{int(line.split(':')[0], 16) - 1:x}"


def _spill(listing: str, reg: str) -> str:
    """The line of the body (past the frame's allocation) that spills reg."""
    body = listing[listing.index(",%rsp\n") :]
    return next(ln for ln in _lines(body) if re.search(rf"mov\s+%{reg},0x[0-9a-f]+\(%rsp\)$", ln))


def test_real_read_keeps_its_arguments_in_their_slots(listing: str) -> None:
    assert spilled_args(listing, 3)
    # b.cap (RDI) is spilled only on the way to morestack: its slot is the caller's at RET
    assert not spilled_args(listing, 4)


def test_resolution_uses_the_ret_probes_for_go119_too() -> None:
    """(Go 1.26's: test_grpc_offsets.py.) The old instruction-order check missed Go 1.19's
    frame layout (its slots were looked for 8 bytes too high) and refused it."""
    r = resolve_go_tls(BIN / "tls-client-go1.19", use_cache=False)
    assert r.error is None and r.read_args_spilled and r.defines["PB_GO_READ_SPILLED"] == 1
    assert len(r.read_rets) >= 2


def test_real_read_refused_when_a_path_skips_a_spill(listing: str) -> None:
    """A conditional jump from before the spills to the first RET: that path returns with
    the caller's garbage in the slots. Instruction order alone would not see it."""
    spill = _spill(listing, "rax")
    first_ret = next(ln for ln in _lines(listing) if ln.rstrip().endswith("ret"))
    # the RET's epilogue starts at the add that frees the frame before it
    lines = _lines(listing)
    i = lines.index(first_ret)
    frees = re.compile(r"\badd\s+\$0x[0-9a-f]+,%rsp$")
    epilogue = next(ln for ln in reversed(lines[:i]) if frees.search(ln))
    target = epilogue.split(":")[0].strip()
    jump = f"  {_before(spill)}:\tje     {target} <x>\n"
    assert not spilled_args(listing.replace(spill + "\n", jump + spill + "\n", 1), 3)


def test_real_read_refused_when_a_slot_is_written_after(listing: str) -> None:
    spill = _spill(listing, "rbx")
    slot = spill.split(",")[-1]
    lines = _lines(listing)
    i = next(k for k, ln in enumerate(lines) if re.search(r"\scall\s", ln))
    store = f"  {_before(lines[i + 1])}:\tmov    %rdx,{slot}"
    assert not spilled_args(listing.replace(lines[i], f"{lines[i]}\n{store}", 1), 3)


def test_real_read_refused_when_a_register_is_clobbered_before_its_spill(listing: str) -> None:
    spill = _spill(listing, "rcx")
    clobber = f"  {_before(spill)}:\tmov    %rdx,%rcx\n"
    assert not spilled_args(listing.replace(spill + "\n", clobber + spill + "\n", 1), 3)


def test_real_read_refused_without_a_spill(listing: str) -> None:
    assert not spilled_args(listing.replace(_spill(listing, "rbx") + "\n", "", 1), 3)


# A whole function as Go >= 1.21 lays it out (push rbp; mov rsp,rbp; sub N,rsp): the
# slots are at N+16, N+24, N+32 above the stack pointer inside, 8, 16, 24 at the RETs.
FUNC = """\
  401000:\tcmp    0x10(%r14),%rsp
  401004:\tjbe    401100 <f+0x100>
  40100a:\tpush   %rbp
  40100b:\tmov    %rsp,%rbp
  40100e:\tsub    $0x58,%rsp
  401012:\tmov    %rax,0x68(%rsp)
  401017:\tmov    %rcx,0x78(%rsp)
  40101c:\tmov    %rbx,0x70(%rsp)
  401021:\tcall   402000 <g>
  401026:\ttest   %rax,%rax
  401029:\tjne    401040 <f+0x40>
  40102b:\tmov    0x78(%rsp),%rcx
  401030:\tmovups %xmm15,0x30(%rsp)
  401036:\tadd    $0x58,%rsp
  40103a:\tpop    %rbp
  40103b:\tret
  401040:\tcmpq   $0x0,0x70(%rsp)
  401046:\tjne    401021 <f+0x21>
  401048:\tmov    %rdx,-0x8(%rbp)
  40104c:\tadd    $0x58,%rsp
  401050:\tpop    %rbp
  401051:\tret
  401100:\tmov    %rax,0x8(%rsp)
  401105:\tmov    %rbx,0x10(%rsp)
  40110a:\tmov    %rcx,0x18(%rsp)
  40110f:\tcall   403000 <runtime.morestack_noctxt.abi0>
  401114:\tmov    0x8(%rsp),%rax
  401119:\tmov    0x10(%rsp),%rbx
  40111e:\tmov    0x18(%rsp),%rcx
  401123:\tjmp    401000 <f>
  401128:\tint3
"""


def _edit(old: str, new: str) -> str:
    assert old in FUNC
    return FUNC.replace(old, new, 1)


def test_hand_written_function_accepted() -> None:
    """Reads of the slots, writes below them, a loop back over the call: all fine."""
    assert spilled_args(FUNC, 3)


@pytest.mark.parametrize(
    "listing",
    [
        # a jump around the spill of c to the first RET's epilogue
        _edit("  401012:\tmov    %rax,0x68(%rsp)\n",
              "  401011:\tje     401036 <f+0x36>\n  401012:\tmov    %rax,0x68(%rsp)\n"),
        # a spill on one branch only
        _edit("  401017:\tmov    %rcx,0x78(%rsp)\n",
              "  401016:\tjne    40101c <f+0x1c>\n  401017:\tmov    %rcx,0x78(%rsp)\n"),
        # a store to b.ptr's slot after its spill, on the loop's way back
        _edit("  401046:\tjne    401021 <f+0x21>\n",
              "  401045:\tmov    %rdx,0x70(%rsp)\n  401046:\tjne    401021 <f+0x21>\n"),
        # the same slot through the frame pointer (it sits 8 below the entry's SP)
        _edit("  401048:\tmov    %rdx,-0x8(%rbp)\n", "  401048:\tmov    %rdx,0x18(%rbp)\n"),
        # a narrower store into a slot
        _edit("  401048:\tmov    %rdx,-0x8(%rbp)\n", "  401048:\tmovb   $0x0,0x74(%rsp)\n"),
        # c's register overwritten before its spill
        _edit("  401012:\tmov    %rax,0x68(%rsp)\n",
              "  401011:\tmov    %rbx,%rax\n  401012:\tmov    %rax,0x68(%rsp)\n"),
        # the address of a slot taken (a store through it cannot be followed)
        _edit("  401048:\tmov    %rdx,-0x8(%rbp)\n", "  401048:\tlea    0x70(%rsp),%rdx\n"),
        # an indexed stack store may land anywhere
        _edit("  401048:\tmov    %rdx,-0x8(%rbp)\n", "  401048:\tmov    %rdx,0x8(%rsp,%rsi,8)\n"),
        # an indirect jump
        _edit("  401046:\tjne    401021 <f+0x21>\n", "  401046:\tjmp    *%rdx\n"),
        # a jump out of the function
        _edit("  401046:\tjne    401021 <f+0x21>\n", "  401046:\tjne    409000 <h>\n"),
        # a RET reached with the frame still allocated
        _edit("  40104c:\tadd    $0x58,%rsp\n", "  40104c:\tnop\n"),
        # the spill only after the call (the old check's case too)
        _edit("  401017:\tmov    %rcx,0x78(%rsp)\n", "").replace(
            "  401026:\ttest", "  401025:\tmov    %rcx,0x78(%rsp)\n  401026:\ttest"),
        # no RET at all
        "\n".join(ln for ln in FUNC.splitlines() if not ln.endswith("ret")) + "\n",
        # undecodable bytes
        _edit("  401048:\tmov    %rdx,-0x8(%rbp)\n", "  401048:\t(bad)\n"),
    ],
    ids=["jump-around", "one-branch", "store-after", "store-via-rbp", "narrow-store",
         "clobbered-reg", "lea-of-slot", "indexed-store", "indirect-jump", "jump-out",
         "unbalanced-ret", "spill-after-call", "no-ret", "bad"],
)
def test_hand_written_function_refused(listing: str) -> None:
    assert not spilled_args(listing, 3)
