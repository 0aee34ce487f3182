"""What an attach failure says: the reason, and the collector log's last line that is not
bcc's compiler chatter (root-free)."""

from __future__ import annotations

from harness.runner.collectors import last_words

CLANG = """In file included from /virtual/main.c:2:
./arch/x86/include/asm/percpu.h:32:9: warning: '__seg_gs' macro redefined [-Wmacro-redefined]
#define __seg_gs __attribute__((address_space(256)))
                                ^
6 warnings generated.
warning: /virtual/main.c:1485:5: loop not unrolled: the optimizer was unable to perform
"""


def test_a_compile_in_progress_says_nothing() -> None:
    # the 6.12 guest's timeout was reported as "loop not unrolled"
    assert last_words(CLANG) == ""
    assert last_words("") == ""


def test_the_error_after_the_warnings_is_the_reason() -> None:
    error = "Exception: Failed to attach BPF program tracepoint__syscalls__sys_exit_read"
    log = CLANG + 'Traceback (most recent call last):\n  File "x.py", line 1\n' + error + "\n"
    assert last_words(log) == error


def test_a_plain_last_line_is_kept() -> None:
    said = "probebench: no BTF for this kernel"
    assert last_words(said + "\n\n") == said
