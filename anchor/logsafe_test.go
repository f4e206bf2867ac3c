package anchor

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestLogSafe(t *testing.T) {
	inner := &url.Error{Op: "Post", URL: "https://u:pw@node.example/v3/SECRETKEY?apikey=SECRET2", Err: errors.New("dial tcp: connection refused")}
	err := fmt.Errorf("anchor: send: %w", inner)
	got := logSafe(err)
	if strings.Contains(got, "SECRET") || strings.Contains(got, "pw") {
		t.Errorf("logSafe kept a secret: %s", got)
	}
	if !strings.Contains(got, "https://node.example/") || !strings.Contains(got, "connection refused") {
		t.Errorf("logSafe lost the useful part: %s", got)
	}
	if got := logSafe(errors.New("plain")); got != "plain" {
		t.Errorf("logSafe(plain) = %q", got)
	}
}
