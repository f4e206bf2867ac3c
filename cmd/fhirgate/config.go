package main

import (
	"bytes"
	"cmp"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// A serve setting comes from, in rising precedence: its default, the
// --config file, its FHIRGATE_* environment variable, the command line.
const (
	fromDefault = "default"
	fromFile    = "config"
	fromEnv     = "env"
	fromFlag    = "flag"
)

// envName is the environment variable that stands in for a flag.
func envName(flagName string) string {
	return "FHIRGATE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyConfigFile sets the flags the YAML file at path names, except those
// given on the command line (explicit) or by their environment variable:
// those win. Keys are flag names (addr, redis-url, anchor-interval, …;
// underscores may stand for hyphens); values are scalars written as on
// the command line. An unknown key or a bad value is an error naming it,
// so a typo cannot silently leave a default in force.
func applyConfigFile(fs *flag.FlagSet, path string, explicit map[string]bool, sources map[string]string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil // an empty file sets nothing
		}
		return fmt.Errorf("--config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("--config %s: line %d: want a mapping of flag names to values", path, m.Line)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		name := strings.ReplaceAll(k.Value, "_", "-")
		f := fs.Lookup(name)
		if f == nil || name == "config" {
			return fmt.Errorf("--config %s: line %d: unknown setting %q (keys are `fhirgate serve` flag names)", path, k.Line, k.Value)
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("--config %s: line %d: %q is set again (first on line %d)", path, k.Line, k.Value, prev)
		}
		seen[name] = k.Line
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("--config %s: line %d: %q must be a single value", path, v.Line, k.Value)
		}
		if explicit[name] {
			continue
		}
		if _, ok := os.LookupEnv(envName(name)); ok {
			continue
		}
		if err := f.Value.Set(v.Value); err != nil {
			return fmt.Errorf("--config %s: line %d: %s: %w", path, v.Line, k.Value, err)
		}
		sources[name] = fromFile
	}
	return nil
}

// parseLayered parses args into fs with the FHIRGATE_* environment and
// the YAML file named by --config (or FHIRGATE_CONFIG) beneath them, and
// reports where each flag's value came from.
func parseLayered(fs *flag.FlagSet, args []string, configPath *string) (map[string]string, error) {
	sources := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { sources[f.Name] = fromDefault })
	if err := envFlags(fs); err != nil {
		return nil, err
	}
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := os.LookupEnv(envName(f.Name)); ok {
			sources[f.Name] = fromEnv
		}
	})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true; sources[f.Name] = fromFlag })
	if *configPath != "" {
		if err := applyConfigFile(fs, *configPath, explicit, sources); err != nil {
			return nil, err
		}
	}
	return sources, nil
}

// secretFlag matches the names of settings whose values are secrets.
var secretFlag = regexp.MustCompile(`(password|secret|token|private)($|-)`)

// redact returns a flag's value as it may be printed: secret settings are
// replaced whole, and a URL's password (redis://user:pass@host) is masked.
// Files holding secrets are printed by path only, never read here.
func redact(name, value string) string {
	if value == "" || strings.HasSuffix(name, "-file") {
		return value
	}
	if u, err := url.Parse(value); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		} else {
			u.User = url.User("REDACTED")
		}
		return u.String()
	}
	if secretFlag.MatchString(name) {
		return "REDACTED"
	}
	return value
}

// effectiveConfig lists every flag of fs with its redacted value and
// where it came from, sorted by name.
func effectiveConfig(fs *flag.FlagSet, sources map[string]string) []slog.Attr {
	var attrs []slog.Attr
	fs.VisitAll(func(f *flag.Flag) {
		attrs = append(attrs, slog.Group(f.Name,
			slog.String("value", redact(f.Name, f.Value.String())),
			slog.String("from", cmp.Or(sources[f.Name], fromDefault))))
	})
	slices.SortFunc(attrs, func(a, b slog.Attr) int { return strings.Compare(a.Key, b.Key) })
	return attrs
}

// writeConfigYAML writes the effective config as a --config file would
// hold it (secrets redacted), each value's source as a comment.
func writeConfigYAML(w io.Writer, fs *flag.FlagSet, sources map[string]string) error {
	var b strings.Builder
	b.WriteString("# fhirgate serve: effective configuration (secrets redacted)\n")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || f.Name == "print-config" {
			return
		}
		fmt.Fprintf(&b, "%s: %s # %s\n", f.Name, yamlScalar(redact(f.Name, f.Value.String())), cmp.Or(sources[f.Name], fromDefault))
	})
	_, err := io.WriteString(w, b.String())
	return err
}

// yamlScalar quotes s when YAML would read it as something else than the
// string the flag takes (empty, or with YAML syntax in it).
func yamlScalar(s string) string {
	if s == "" || strings.ContainsAny(s, ":#{}[],&*!|>'\"%@`") || strings.TrimSpace(s) != s {
		return strconv.Quote(s)
	}
	return s
}

func anyAttrs(attrs []slog.Attr) []any {
	out := make([]any, len(attrs))
	for i, a := range attrs {
		out[i] = a
	}
	return out
}
