// Package monoclock reads CLOCK_MONOTONIC in nanoseconds, the clock the BPF
// programs use (bpf_ktime_get_ns), with the standard library only.
package monoclock

import (
	"syscall"
	"time"
	"unsafe"
)

const clockMonotonic = 1 // CLOCK_MONOTONIC in <linux/time.h>

// Clock maps Go's monotonic time readings onto CLOCK_MONOTONIC. Go's own
// monotonic reading is CLOCK_MONOTONIC (via the vDSO) minus a process start
// offset; anchoring it once with one raw clock_gettime keeps later reads
// syscall-free. The anchor is off by at most half a clock_gettime syscall.
type Clock struct {
	anchorNs int64
	anchorAt time.Time
}

// New anchors a clock.
func New() (*Clock, error) {
	var ts syscall.Timespec
	before := time.Now()
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic,
		uintptr(unsafe.Pointer(&ts)), 0)
	after := time.Now()
	if errno != 0 {
		return nil, errno
	}
	mid := before.Add(after.Sub(before) / 2)
	return &Clock{anchorNs: ts.Nano(), anchorAt: mid}, nil
}

// Now returns CLOCK_MONOTONIC nanoseconds.
func (c *Clock) Now() int64 {
	return c.anchorNs + int64(time.Since(c.anchorAt))
}
