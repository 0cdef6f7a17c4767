// Package procstat reads a process's CPU time, resident memory and open
// file descriptors from /proc, for the load and scale benchmarks
// (hack/bench-proxy, hack/bench-scale) and the soak (hack/soak).
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ticksPerSecond is USER_HZ, the unit of /proc/PID/stat's times on Linux.
const ticksPerSecond = 100

// CPU returns the user+system CPU time pid has used.
func CPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// After "(comm)", 0-based: state 0, ..., utime 11, stime 12.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	if err != nil {
		return 0, err
	}
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * (time.Second / ticksPerSecond), nil
}

// RSS returns pid's resident set size in bytes, from /proc/PID/status.
func RSS(pid int) (int64, error) { return statusBytes(pid, "VmRSS:") }

// AnonRSS returns the anonymous part of pid's resident set (heap, stacks:
// what a container's memory limit cannot reclaim; the rest is the binary's
// pages, which the kernel can drop and read again).
func AnonRSS(pid int) (int64, error) { return statusBytes(pid, "RssAnon:") }

func statusBytes(pid int, field string) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, field) {
			kb, err := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// FDs returns how many file descriptors pid has open (the entries of
// /proc/PID/fd).
func FDs(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries), err
}
