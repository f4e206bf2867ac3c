// Package redistest starts a real redis-server on a free loopback port for
// tests. Without the binary the test is skipped, except under CI=true where
// it fails: `make test` installs redis-server.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Server is a running redis-server.
type Server struct {
	Addr string
	// Dir is the server's data directory (append-only file, RDB dumps).
	Dir string
	cmd *exec.Cmd
}

// URL returns the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Start starts redis-server for the test and stops it at cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := StartServer(tb.TempDir())
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redis-server is required under CI=true: %v", err)
		}
		tb.Skipf("redis-server unavailable: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// StartServer starts redis-server with its data in dir, with append-only
// persistence on.
func StartServer(dir string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), Dir: dir}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// start starts redis-server on s.Addr with its data in s.Dir and waits
// until it answers PING.
func (s *Server) start() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1",
		"--dir", s.Dir, "--save", "", "--appendonly", "yes", "--appendfsync", "no",
		"--logfile", filepath.Join(s.Dir, "redis.log"), "--daemonize", "no")
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("redis-server on %s did not answer", s.Addr)
}

// Restart starts the server again after Stop, on the same address and
// data directory: it reloads its append-only file.
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

// Pause stops the server process (SIGSTOP) without closing its
// connections: it hangs, as on a partition, until Resume.
func (s *Server) Pause() error { return s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

// Stop kills the server (SIGKILL: what it acknowledged is in its
// append-only file, written before each reply).
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil && s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func ping(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}
