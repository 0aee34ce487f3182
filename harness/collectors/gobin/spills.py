"""Whether a Go function's arguments are still in their spill slots when it returns.

Go's register ABI (amd64) passes the first arguments in RAX, RBX, RCX, ... and reserves
for each a spill slot in the caller's frame, just above the return address: at the
function's entry, and so again at its RET (the same stack pointer), the slots sit at 8,
16, 24, ... bytes above the stack pointer. The compiler stores an argument there only
when it needs the value across a call, and may store it only on some paths, so a probe
at a RET may read the slots only when the function's code says they hold the arguments.

``spilled_args`` checks that on GNU objdump's listing, by control flow: a small forward
data-flow over the instructions (jumps, conditional jumps, calls, RETs) that tracks the
stack pointer's depth, which registers still hold which argument, and which slots hold
their argument. Every path from the entry to every RET must have stored each argument's
register into its slot (with the register still holding the argument), and nothing on the
path may write the slot after; taking a slot's address refuses the function. Control flow
it cannot follow (an indirect jump, a jump outside the function) refuses it too: the
caller then probes the entry, as without the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*?)\s*$")
_SYMBOL = re.compile(r"\s*<[^>]*>$")
_PREFIXES = {
    "lock", "rep", "repz", "repe", "repnz", "repne", "cs", "ds", "ss", "es", "fs", "gs",
    "data16", "addr32", "bnd", "notrack",
}  # fmt: skip
# the registers of Go's ABI, in argument order
ARG_REGS = ("rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11")
_GPR = {
    "rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"),
    "rcx": ("ecx", "cx", "cl", "ch"), "rdx": ("edx", "dx", "dl", "dh"),
    "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"), "rbp": ("ebp", "bp", "bpl"),
    "rsp": ("esp", "sp", "spl"),
    **{f"r{i}": (f"r{i}d", f"r{i}w", f"r{i}b") for i in range(8, 16)},
}  # fmt: skip
_PARENT = {sub: full for full, subs in _GPR.items() for sub in (full, *subs)}
# instructions that write nothing (their last operand is read)
_READ_ONLY = re.compile(r"^(cmp[bwlq]?|test[bwlq]?|bt[wlq]?|u?comis[sd]|nop[wlq]?|push[q]?"
                        r"|prefetch\w*|endbr64|pause)$")  # fmt: skip
# instructions that write their last operand and nothing else
_WRITES_LAST = re.compile(
    r"^(mov[a-z]*|lea[q]?|add[bwlq]?|sub[bwlq]?|and[bwlq]?|or[bwlq]?|xor[bwlq]?|adc[bwlq]?"
    r"|sbb[bwlq]?|sh[lr][bwlq]?|sar[bwlq]?|sal[bwlq]?|ro[lr][bwlq]?|inc[bwlq]?|dec[bwlq]?"
    r"|neg[bwlq]?|not[bwlq]?|cmov\w+|set\w+|bswap[lq]?|pop[q]?|bt[src][wlq]?|popcnt[wlq]?"
    r"|[lt]zcnt[wlq]?|bs[fr][wlq]?|imul[bwlq]?|cvt\w+|(add|sub|mul|div|min|max|sqrt)[sp][sd]"
    r"|p(xor|andn?|or|add[bwdq]|sub[bwdq]|cmpeq[bwdq]|cmpgt[bwdq]|shuf[bdlhw]*|unpck\w+"
    r"|minu[bw]|maxu[bw]|movmskb|s[lr]l[wdq]|sra[wd]|mul\w+|alignr|insr[bwdq]|extr[bwdq])"
    r"|v?xorp[sd]|v?andn?p[sd]|v?orp[sd]|unpck\w+|shufp[sd])$"
)  # fmt: skip
_WIDTH = {"b": 1, "w": 2, "l": 4, "q": 8}
_MEM = re.compile(r"^(?:%[a-z]s:)?(-?0x[0-9a-f]+|-?\d+)?\((%\w+)?(?:,(%\w+)(?:,\d)?)?\)$")


class Unfollowed(Exception):
    """Control flow or a stack access the check cannot follow."""


@dataclass(frozen=True, slots=True)
class _Insn:
    addr: int
    op: str
    ops: tuple[str, ...]
    next: int  # address of the instruction after it (0 for the last)


@dataclass(frozen=True, slots=True)
class _State:
    sp: int  # stack pointer relative to the entry's
    bp: int | None  # frame pointer relative to the entry's stack pointer, if known
    regs: frozenset[tuple[str, int]]  # (register, argument index) it still holds
    slots: frozenset[int]  # argument indexes whose slot holds the argument

    def meet(self, o: _State) -> _State:
        if o.sp != self.sp:
            raise Unfollowed("two paths meet at different stack depths")
        return _State(self.sp, self.bp if self.bp == o.bp else None,
                      self.regs & o.regs, self.slots & o.slots)  # fmt: skip


def _operands(text: str) -> tuple[str, ...]:
    """AT&T operands, split at the commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return tuple(out)


def parse(listing: str) -> list[_Insn]:
    """The instructions of an objdump listing, in address order."""
    rows: list[tuple[int, str, tuple[str, ...]]] = []
    for line in listing.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        # the comment, and a jump's or call's symbol (a generic's name holds commas)
        text = _SYMBOL.sub("", m.group(2).split("#", 1)[0].strip())
        words = text.split(None, 1)
        while words and (words[0] in _PREFIXES or words[0].startswith("rex")):
            words = words[1].split(None, 1) if len(words) > 1 else []
        if not words:
            continue
        if words[0] == "(bad)":
            raise Unfollowed(f"undecodable bytes at {m.group(1)}")
        addr = int(m.group(1), 16)
        if rows and addr <= rows[-1][0]:
            raise Unfollowed(f"instructions out of address order at {addr:#x}")
        rows.append((addr, words[0],
                     _operands(words[1]) if len(words) > 1 else ()))  # fmt: skip
    return [_Insn(a, op, ops, rows[i + 1][0] if i + 1 < len(rows) else 0)
            for i, (a, op, ops) in enumerate(rows)]  # fmt: skip


def _reg(operand: str) -> str | None:
    """The 64-bit register an operand names (a part of it included), else None."""
    return _PARENT.get(operand[1:]) if operand.startswith("%") else None


def _width(insn: _Insn) -> int:
    """Bytes a memory operand of the instruction covers: by its register operand, else 16
    (never less than it is: a wider write only makes the check stricter)."""
    for o in insn.ops:
        name = o[1:] if o.startswith("%") else ""
        if name in _GPR:
            return 8
        if name[:3] in ("ymm", "zmm"):
            return 32 if name[0] == "y" else 64
    return 16


class _Checker:
    def __init__(self, insns: list[_Insn], words: int) -> None:
        self.insns = insns
        self.at = {i.addr: i for i in insns}
        self.words = words

    def address(self, operand: str, st: _State) -> int | None:
        """A memory operand's address relative to the entry's stack pointer; None when it
        is not on the stack. Raises Unfollowed for a stack address it cannot resolve."""
        m = _MEM.match(operand)
        if m is None:
            return None
        disp = int(m.group(1) or "0", 0)
        base, index = m.group(2), m.group(3)
        if base not in ("%rsp", "%rbp"):
            return None
        if index is not None:
            raise Unfollowed(f"an indexed stack access ({operand})")
        if base == "%rsp":
            return st.sp + disp
        if st.bp is None:
            raise Unfollowed(f"a frame-pointer access with the frame pointer unknown ({operand})")
        return st.bp + disp

    def slot_of(self, addr: int, width: int) -> set[int]:
        """The argument slots [8 + 8i, 16 + 8i) that [addr, addr + width) touches."""
        return {i for i in range(self.words) if addr < 16 + 8 * i and 8 + 8 * i < addr + width}

    def step(self, insn: _Insn, st: _State) -> _State:
        """The state after one (non-branching) instruction."""
        op, ops = insn.op, insn.ops
        sp, bp, regs, slots = st.sp, st.bp, dict(st.regs), set(st.slots)
        last = ops[-1] if ops else ""
        if op.startswith("call"):
            return _State(sp, bp, frozenset(), frozenset(slots))  # Go keeps no register
        if op.startswith("xchg") and len(ops) == 2 and ops[0] == ops[1]:
            return st  # a nop
        string_op = any(":(" in o and o.split(":", 1)[0] in ("%es", "%ds") for o in ops)
        if op.startswith("lea"):
            addr = self.address(ops[0], st)
            if addr is not None and self.slot_of(addr, 1):
                raise Unfollowed(f"the address of an argument slot is taken at {insn.addr:#x}")
        else:
            # memory writes: the last operand (or any, for what writes both, or unknown ops)
            writes_all = not (_READ_ONLY.match(op) or _WRITES_LAST.match(op)) or string_op
            for k, o in enumerate(ops):
                if _READ_ONLY.match(op) or not (k == len(ops) - 1 or writes_all):
                    continue
                try:
                    addr = self.address(o, st)
                except Unfollowed:
                    slots.clear()  # a stack write not resolved may hit any slot
                    continue
                if addr is None:
                    if string_op:
                        slots.clear()  # through RDI, wherever it points
                    continue
                hit = self.slot_of(addr, _width(insn))
                # the one good write: a whole register still holding argument i, into slot i
                src = _reg(ops[0]) if len(ops) == 2 else None
                whole = src is not None and ops[0] == f"%{src}" and op in ("mov", "movq")
                good = [i for i in hit if whole and addr == 8 + 8 * i and regs.get(src or "") == i]
                slots -= hit
                slots.update(good)
        # the stack and frame pointers
        dest = _reg(last) if not _READ_ONLY.match(op) else None
        if op.startswith("push"):
            sp -= 8
        elif op.startswith("pop") and dest == "rsp":
            raise Unfollowed(f"the stack pointer popped at {insn.addr:#x}")
        elif op.startswith("pop"):
            sp += 8
        elif dest == "rsp":
            imm = ops[0][1:] if ops[0].startswith("$") else None
            if op in ("sub", "subq") and imm is not None:
                sp -= int(imm, 0)
            elif op in ("add", "addq") and imm is not None:
                sp += int(imm, 0)
            elif op in ("lea", "leaq") and _MEM.match(ops[0]):
                addr = self.address(ops[0], st)
                if addr is None:
                    raise Unfollowed(f"the stack pointer set from elsewhere at {insn.addr:#x}")
                sp = addr
            elif op in ("mov", "movq") and ops[0] == "%rbp" and bp is not None:
                sp = bp
            else:
                raise Unfollowed(f"the stack pointer changed by {op} at {insn.addr:#x}")
        if dest == "rbp":
            if op in ("mov", "movq") and ops[0] == "%rsp":
                bp = sp
            elif op in ("lea", "leaq") and _MEM.match(ops[0]) and ops[0].endswith("(%rsp)"):
                bp = self.address(ops[0], st)
            else:
                bp = None
        if sp > 0:
            raise Unfollowed(f"the stack pointer rises above the entry's at {insn.addr:#x}")
        # which registers hold which argument
        if not (_READ_ONLY.match(op) or _WRITES_LAST.match(op)) or string_op:
            regs.clear()  # an instruction that may write registers it does not name
        elif dest is not None:
            held: int | None = None
            if op in ("mov", "movq") and last == f"%{dest}":
                src = _reg(ops[0])
                if src is not None and ops[0] == f"%{src}":
                    held = regs.get(src)
                elif src is None and _MEM.match(ops[0]):
                    try:
                        addr = self.address(ops[0], st)
                    except Unfollowed:
                        addr = None  # a load from somewhere unknown: holds no argument
                    i = (addr - 8) // 8 if addr is not None and addr % 8 == 0 else -1
                    held = i if 0 <= i < self.words and i in slots else None
            regs.pop(dest, None)
            if held is not None:
                regs[dest] = held
        if op.startswith("imul") and len(ops) == 1:
            regs.clear()  # RDX:RAX
        return _State(sp, bp, frozenset(regs.items()), frozenset(slots))

    def successors(self, insn: _Insn) -> list[int]:
        op, ops = insn.op, insn.ops
        if op in ("ret", "retq", "int3", "ud2", "hlt"):
            if op.startswith("ret") and ops:
                raise Unfollowed(f"a RET that pops arguments at {insn.addr:#x}")
            return []
        if op.startswith("loop"):
            raise Unfollowed(f"{op} at {insn.addr:#x}")  # it writes RCX too
        if op.startswith("j"):
            if not ops or ops[0].startswith("*"):
                raise Unfollowed(f"an indirect jump at {insn.addr:#x}")
            target = int(ops[0].split()[0], 16)
            if target not in self.at:
                raise Unfollowed(f"a jump out of the function at {insn.addr:#x}")
            if op in ("jmp", "jmpq"):
                return [target]
            return [target, self.fallthrough(insn)]
        if op in ("syscall", "sysenter", "iret", "iretq", "ljmp", "lcall", "lret"):
            raise Unfollowed(f"{op} at {insn.addr:#x}")
        return [self.fallthrough(insn)]

    def fallthrough(self, insn: _Insn) -> int:
        if not insn.next:
            raise Unfollowed("the function's last instruction falls through")
        return insn.next

    def flow(self, seeds: dict[int, _State], states: dict[int, _State]) -> None:
        """Propagate from seeds until nothing changes (the sets only shrink)."""
        work = list(seeds.items())
        while work:
            addr, incoming = work.pop()
            old = states.get(addr)
            new = incoming if old is None else old.meet(incoming)
            if new == old:
                continue
            states[addr] = new
            insn = self.at[addr]
            if insn.op.startswith(("j", "ret", "int3", "ud2", "hlt")):
                after = new
            else:
                after = self.step(insn, new)
            work.extend((s, after) for s in self.successors(insn))

    def check(self) -> bool:
        entry = self.insns[0]
        start = _State(0, None, frozenset((r, i) for i, r in enumerate(ARG_REGS[: self.words])),
                       frozenset())  # fmt: skip
        states: dict[int, _State] = {}
        self.flow({entry.addr: start}, states)
        # A recovered panic resumes the function at its deferreturn call, which no jump
        # reaches, with the frame as it was at the call that panicked: code no path reaches
        # starts from what holds after every call inside the frame.
        after_calls = [
            self.step(i, states[i.addr]) for i in self.insns
            if i.addr in states and i.op.startswith("call") and states[i.addr].sp != 0
        ]  # fmt: skip
        orphans = {i.addr for i in self.insns if i.addr not in states and i.op != "int3"}
        if orphans:
            if not after_calls:
                raise Unfollowed("code no path reaches, and no call it could resume from")
            landing = after_calls[0]
            for s in after_calls[1:]:
                landing = landing.meet(s)
            after_orphan = {i.next for i in self.insns if i.addr in orphans}
            heads = orphans - after_orphan
            self.flow(dict.fromkeys(heads, landing), states)
        rets = [i for i in self.insns if i.op.startswith("ret")]
        if not rets:
            return False
        want = set(range(self.words))
        for r in rets:
            st = states.get(r.addr)
            if st is None or st.sp != 0 or not want <= st.slots:
                return False
        return True


def spilled_args(listing: str, words: int) -> bool:
    """Whether, at every RET of the function in ``listing`` (GNU objdump, AT&T syntax, one
    whole function from its entry), its first ``words`` register arguments are in their
    spill slots (8, 16, ... bytes above the stack pointer): see the module's docstring.
    False when anything in the way cannot be followed."""
    if not 1 <= words <= len(ARG_REGS):
        raise ValueError(f"words must be 1..{len(ARG_REGS)}")
    try:
        insns = parse(listing)
        return bool(insns) and _Checker(insns, words).check()
    except Unfollowed:
        return False
