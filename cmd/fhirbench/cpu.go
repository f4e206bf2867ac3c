package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuFlag collects --cpu-pid name=PID: processes (the gateway, Redis)
// whose CPU time fhirbench reads from /proc over the measured window, so
// that a run reports CPU per request beside throughput.
type cpuFlag []cpuTarget

type cpuTarget struct {
	Name string
	PID  int
}

func (f *cpuFlag) String() string {
	var parts []string
	for _, t := range *f {
		parts = append(parts, t.Name+"="+strconv.Itoa(t.PID))
	}
	return strings.Join(parts, ",")
}

func (f *cpuFlag) Set(v string) error {
	name, pid, ok := strings.Cut(v, "=")
	n, err := strconv.Atoi(pid)
	if !ok || name == "" || err != nil || n <= 0 {
		return fmt.Errorf("want name=PID, got %q", v)
	}
	*f = append(*f, cpuTarget{Name: name, PID: n})
	return nil
}

// CPUUse is the CPU time one process spent during the measured window.
type CPUUse struct {
	Seconds      float64 `json:"cpu_s"`
	Cores        float64 `json:"cores"`          // Seconds per second of the window
	PerRequestMs float64 `json:"per_request_ms"` // Seconds per measured request
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuTime reads a process's user+system CPU time from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is parenthesised and may hold spaces:
	// fields are counted after its closing parenthesis.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// f[0] is field 3 (state): utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// cpuSample reads every target's CPU time; a process that cannot be read
// is reported as an error.
func cpuSample(targets []cpuTarget) (map[string]time.Duration, error) {
	out := make(map[string]time.Duration, len(targets))
	for _, t := range targets {
		d, err := cpuTime(t.PID)
		if err != nil {
			return nil, fmt.Errorf("--cpu-pid %s: %w", t.Name, err)
		}
		out[t.Name] = d
	}
	return out, nil
}

// cpuUse turns two samples into each target's use over the window.
func cpuUse(before, after map[string]time.Duration, window time.Duration, requests int64) map[string]CPUUse {
	out := make(map[string]CPUUse, len(after))
	for name, a := range after {
		s := (a - before[name]).Seconds()
		u := CPUUse{Seconds: s}
		if window > 0 {
			u.Cores = s / window.Seconds()
		}
		if requests > 0 {
			u.PerRequestMs = 1000 * s / float64(requests)
		}
		out[name] = u
	}
	return out
}
