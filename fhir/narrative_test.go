package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// narrSharedExamples is the project's shared copy of all R4 examples; the
// test uses it when present in addition to testdata/narrative/valid.
const narrSharedExamples = "/work/shared/testdata/r4-examples"

const narrXmlns = `<div xmlns="http://www.w3.org/1999/xhtml">`

type narrDiv struct {
	path string // JSON path of the div, e.g. Bundle.entry[0].resource.text.div
	div  string
}

// narrCollectDivs walks decoded JSON and returns every string "div" member
// of an object that is the value of a "text" member, at any depth
// (contained resources, Bundle entries, Parameters, ...).
func narrCollectDivs(path string, v any, out *[]narrDiv) {
	switch t := v.(type) {
	case []any:
		for i, e := range t {
			narrCollectDivs(fmt.Sprintf("%s[%d]", path, i), e, out)
		}
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			e := t[k]
			if k == "text" {
				if m, ok := e.(map[string]any); ok {
					if div, ok := m["div"].(string); ok {
						*out = append(*out, narrDiv{path: path + ".text.div", div: div})
					}
				}
			}
			narrCollectDivs(path+"."+k, e, out)
		}
	}
}

func narrDivsFromFile(t *testing.T, file string) []narrDiv {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) // xml-bad-entities.json has a BOM
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	root := "$"
	if m, ok := doc.(map[string]any); ok {
		if rt, ok := m["resourceType"].(string); ok {
			root = rt
		}
	}
	var out []narrDiv
	narrCollectDivs(root, doc, &out)
	return out
}

func narrJSONFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestCheckNarrativeCollectDivsWalksContainedAndBundles(t *testing.T) {
	doc := `{"resourceType":"Bundle","entry":[
	  {"resource":{"resourceType":"Patient","text":{"status":"generated","div":"A"},
	    "contained":[{"resourceType":"Binary","text":{"div":"B"}}]}},
	  {"resource":{"resourceType":"Observation","text":{"status":"empty"}}},
	  {"resource":{"resourceType":"Parameters","parameter":[{"resource":{"text":{"div":"C"}}}]}}]}`
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatal(err)
	}
	var got []narrDiv
	narrCollectDivs("Bundle", v, &got)
	var divs []string
	for _, d := range got {
		divs = append(divs, d.div)
	}
	sort.Strings(divs)
	if strings.Join(divs, ",") != "A,B,C" {
		t.Fatalf("collected %q", got)
	}
}

// TestCheckNarrativeR4Examples: every narrative of the official R4
// examples must pass.
func TestCheckNarrativeR4Examples(t *testing.T) {
	dirs := []string{filepath.Join("testdata", "narrative", "valid")}
	if st, err := os.Stat(narrSharedExamples); err == nil && st.IsDir() {
		dirs = append(dirs, narrSharedExamples)
	} else {
		t.Logf("%s not present; checking only the copied fixtures", narrSharedExamples)
	}
	total := 0
	for _, dir := range dirs {
		files := narrJSONFiles(t, dir)
		if len(files) == 0 {
			t.Fatalf("no JSON files in %s", dir)
		}
		for _, file := range files {
			for _, d := range narrDivsFromFile(t, file) {
				total++
				t.Run(filepath.Base(dir)+"/"+filepath.Base(file)+"/"+d.path, func(t *testing.T) {
					if issues := CheckNarrative(d.div); len(issues) != 0 {
						t.Errorf("unexpected issues: %+v", issues)
					}
				})
			}
		}
	}
	if total < 20 {
		t.Fatalf("only %d narratives found; fixture walk broken?", total)
	}
	t.Logf("checked %d narratives", total)
}

type narrWant struct {
	rule   string
	detail string // substring of Detail
}

func narrHas(issues []NarrativeIssue, w narrWant) bool {
	for _, is := range issues {
		if is.Rule == w.rule && strings.Contains(is.Detail, w.detail) {
			return true
		}
	}
	return false
}

func TestCheckNarrativeInvalidFixtures(t *testing.T) {
	tests := []struct {
		file string
		want narrWant
	}{
		{"pat-security-bad-xhtml.json", narrWant{NarrativeRuleTxt1, "'script'"}},
		{"xml-bad-entities.json", narrWant{NarrativeRuleXHTML, "entity 'reg'"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			divs := narrDivsFromFile(t, filepath.Join("testdata", "narrative", "invalid", tc.file))
			if len(divs) != 1 {
				t.Fatalf("want 1 div, got %d", len(divs))
			}
			issues := CheckNarrative(divs[0].div)
			if !narrHas(issues, tc.want) {
				t.Fatalf("want %+v in %+v", tc.want, issues)
			}
			narrAssertSafeDetails(t, issues)
		})
	}
}

func TestCheckNarrativeCases(t *testing.T) {
	x := narrXmlns
	tests := []struct {
		name string
		div  string
		want []narrWant // nil: no issues at all
	}{
		// Accepted.
		{"plain text", x + `text</div>`, nil},
		{"formatting", x + `<p>An <i>example</i> with <b>xhtml</b><br/>and <span style="color: red; font-weight: bold">style</span></p><hr/></div>`, nil},
		{"table", x + `<table border="1" cellpadding="2"><thead><tr><th scope="col">h</th></tr></thead><tbody><tr><td colspan="2" rowspan="1" align="left">d</td></tr></tbody></table></div>`, nil},
		{"lists and headings", x + `<h1>a</h1><h6>b</h6><ul><li>x</li></ul><ol start="2"><li>y</li></ol><dl><dt>t</dt><dd>d</dd></dl></div>`, nil},
		{"links", x + `<a href="https://example.org/x?a=1&amp;b=2">s</a><a href="http://example.org">h</a><a href="mailto:a@b.org">m</a><a href="#frag">f</a><a href="Patient/1">r</a><a href="//example.org/x">n</a><a name="anchor"> </a></div>`, nil},
		{"images", x + `<img src="#pic1" alt="a"/><img src="Binary/1"/><img src="data:image/png;base64,iVBORw0KGgo="/></div>`, nil},
		{"image only counts as content", x + `<img src="#pic1"/></div>`, nil},
		{"entities and char refs", x + `&amp;&lt;&gt;&quot;&apos;&#160;&#xA0;&#x1F600;</div>`, nil},
		{"nbsp char ref is content", x + `&#160;</div>`, nil},
		{"comment and cdata", x + `<!-- note --><![CDATA[a < b & c]]></div>`, nil},
		{"lang and ids", `<div xmlns="http://www.w3.org/1999/xhtml" lang="en" xml:lang="en" id="n1" class="c" title="t" dir="ltr">x</div>`, nil},
		{"whitespace around root", " \n" + x + `x</div>` + "\n", nil},
		{"single quoted attributes", `<div xmlns='http://www.w3.org/1999/xhtml'><p class='a'>x</p></div>`, nil},
		{"nested xhtml xmlns", x + `<p xmlns="http://www.w3.org/1999/xhtml">x</p></div>`, nil},
		{"rare allowed elements", x + `<address>a</address><bdo dir="rtl">b</bdo><kbd>k</kbd><sub>1</sub><sup>2</sup><q cite="http://example.org">q</q></div>`, nil},
		{"style with data image", x + `<span style="background-image: url('data:image/png;base64,AAAA')">x</span></div>`, nil},

		// txt-1: elements.
		{"script", x + `<script>alert(1)</script>x</div>`, []narrWant{{NarrativeRuleTxt1, "element 'script'"}}},
		{"self-closed script", x + `<script src="#a"/><p>x</p></div>`, []narrWant{{NarrativeRuleTxt1, "element 'script'"}}},
		{"iframe", x + `<iframe src="#a"></iframe>x</div>`, []narrWant{{NarrativeRuleTxt1, "element 'iframe'"}}},
		{"style element", x + `<style>p{}</style>x</div>`, []narrWant{{NarrativeRuleTxt1, "element 'style'"}}},
		{"form controls", x + `<form><input type="text"/><button>b</button></form></div>`, []narrWant{
			{NarrativeRuleTxt1, "element 'form'"}, {NarrativeRuleTxt1, "element 'input'"}, {NarrativeRuleTxt1, "element 'button'"}}},
		{"object embed applet", x + `<object/><embed/><applet/>x</div>`, []narrWant{
			{NarrativeRuleTxt1, "element 'object'"}, {NarrativeRuleTxt1, "element 'embed'"}, {NarrativeRuleTxt1, "element 'applet'"}}},
		{"head elements", x + `<base/><link/><meta/>x</div>`, []narrWant{
			{NarrativeRuleTxt1, "element 'base'"}, {NarrativeRuleTxt1, "element 'link'"}, {NarrativeRuleTxt1, "element 'meta'"}}},
		{"frames", x + `<frameset><frame/></frameset>x</div>`, []narrWant{{NarrativeRuleTxt1, "element 'frameset'"}, {NarrativeRuleTxt1, "element 'frame'"}}},
		{"svg and math", x + `<svg/><math/>x</div>`, []narrWant{{NarrativeRuleTxt1, "element 'svg'"}, {NarrativeRuleTxt1, "element 'math'"}}},
		{"ins and del excluded by R4", x + `<ins>a</ins><del>b</del></div>`, []narrWant{{NarrativeRuleTxt1, "element 'ins'"}, {NarrativeRuleTxt1, "element 'del'"}}},
		{"textarea content is markup", x + `<textarea><p>x</p></textarea></div>`, []narrWant{{NarrativeRuleTxt1, "element 'textarea'"}}},
		{"text-like element name hidden", x + `a<Smith>b</Smith></div>`, []narrWant{{NarrativeRuleTxt1, "element '?' is not allowed"}}},
		{"text-like entity name hidden", x + `Tom&Jerry;</div>`, []narrWant{{NarrativeRuleXHTML, "entity '?' is not"}}},
		{"uppercase element", x + `<P>x</P></div>`, []narrWant{{NarrativeRuleTxt1, "element 'P'"}}},
		{"prefixed element", x + `<h:p xmlns:h="http://www.w3.org/1999/xhtml">x</h:p></div>`, []narrWant{{NarrativeRuleTxt1, "element 'h:p'"}}},

		// txt-1: attributes.
		{"onclick", x + `<p onclick="alert(1)">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "event handler attribute 'onclick' on element 'p'"}}},
		{"onClick mixed case", x + `<a onClick="alert(1)" href="#a">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "event handler attribute 'onclick'"}}},
		{"onerror on img", x + `<img src="#a" onerror="alert(1)"/></div>`, []narrWant{{NarrativeRuleTxt1, "'onerror'"}}},
		{"data attribute", x + `<p data-x="1">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'data-?' is not allowed on element 'p'"}}},
		{"xlink href", x + `<a xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="#a">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'xlink:href'"}}},
		{"uppercase attribute", x + `<a HREF="#a">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'HREF'"}}},

		// txt-1: URLs.
		{"javascript href", x + `<a href="javascript:alert(1)">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'javascript' is not allowed in attribute 'href' on element 'a'"}}},
		{"obfuscated javascript href", x + "<a href=\" \tJaVa&#x09;ScRiPt&#58;alert(1)\">x</a></div>", []narrWant{{NarrativeRuleTxt1, "URL scheme 'javascript'"}}},
		{"entity encoded javascript href", x + `<a href="&#106;avascript:alert(1)">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'javascript'"}}},
		{"vbscript href", x + `<a href="vbscript:msgbox">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'vbscript'"}}},
		{"data href", x + `<a href="data:text/html;base64,PHNjcmlwdD4=">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'data'"}}},
		{"ftp href not allowed", x + `<a href="ftp://example.org/">x</a></div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'ftp'"}}},
		{"javascript cite", x + `<blockquote cite="javascript:x()">x</blockquote></div>`, []narrWant{{NarrativeRuleTxt1, "in attribute 'cite'"}}},
		{"external image", x + `<img src="http://evil"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'src' on element 'img' must be"}}},
		{"external https image", x + `<img src="https://evil.example/p.gif"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'src' on element 'img' must be"}}},
		{"protocol relative image", x + `<img src="//evil.example/p.gif"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'src' on element 'img' must be"}}},
		{"backslash protocol relative image", x + `<img src="\\evil.example/p.gif"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "attribute 'src' on element 'img' must be"}}},
		{"javascript image", x + `<img src="javascript:alert(1)"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "URL scheme 'javascript'"}}},
		{"svg data image", x + `<img src="data:image/svg+xml;base64,PHN2Zz4="/>x</div>`, []narrWant{{NarrativeRuleTxt1, "data URL in attribute 'src'"}}},
		{"html data image", x + `<img src="data:text/html,x"/>x</div>`, []narrWant{{NarrativeRuleTxt1, "data URL in attribute 'src'"}}},

		// txt-1: style.
		{"style expression", x + `<p style="width: expression(alert(1))">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style attribute on element 'p'"}}},
		{"style escaped expression", x + `<p style="width: exp\72 ession(alert(1))">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style"}}},
		{"style comment split", x + `<p style="width: ex/**/pression(alert(1))">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style"}}},
		{"style javascript url", x + `<p style="background: url(javascript:alert(1))">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style"}}},
		{"style external url", x + `<p style="background-image: url(&quot;http://evil/t.gif&quot;)">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style"}}},
		{"style moz binding", x + `<p style="-moz-binding: x">x</p></div>`, []narrWant{{NarrativeRuleTxt1, "unsafe construct in style"}}},

		// txt-2.
		{"empty div", x + `</div>`, []narrWant{{NarrativeRuleTxt2, "no non-whitespace content"}}},
		{"whitespace only", x + " \n\t <p> </p></div>", []narrWant{{NarrativeRuleTxt2, "no non-whitespace content"}}},
		{"self-closed root", `<div xmlns="http://www.w3.org/1999/xhtml"/>`, []narrWant{{NarrativeRuleTxt2, ""}}},
		{"only a comment", x + `<!-- c --></div>`, []narrWant{{NarrativeRuleTxt2, ""}}},
		{"empty string", ``, []narrWant{{NarrativeRuleXHTML, "no root div"}, {NarrativeRuleTxt2, ""}}},

		// xhtml: structure and well-formedness.
		{"unclosed tag", x + `<p>x</div>`, []narrWant{{NarrativeRuleXHTML, "element 'p' is not closed"}}},
		{"unclosed root", x + `<p>x</p>`, []narrWant{{NarrativeRuleXHTML, "element 'div' is not closed"}}},
		{"mismatched", x + `<b><i>x</b></i></div>`, []narrWant{{NarrativeRuleXHTML, "end tag 'b' does not match open element 'i'"}}},
		{"unexpected end tag", x + `x</span></div>`, []narrWant{{NarrativeRuleXHTML, "unexpected end tag 'span'"}}},
		{"case mismatch end tag", x + `<p>x</P></div>`, []narrWant{{NarrativeRuleXHTML, "element 'p' is not closed"}}},
		{"html void br", x + `a<br>b</div>`, []narrWant{{NarrativeRuleXHTML, "element 'br' is not closed"}}},
		{"missing xmlns", `<div>x</div>`, []narrWant{{NarrativeRuleXHTML, "root div does not declare xmlns"}}},
		{"wrong xmlns", `<div xmlns="http://www.w3.org/2000/svg">x</div>`, []narrWant{{NarrativeRuleXHTML, "root div declares a namespace other than"}}},
		{"nested foreign xmlns", x + `<p xmlns="urn:x">x</p></div>`, []narrWant{{NarrativeRuleXHTML, "element 'p' declares a namespace"}}},
		{"root not div", `<p xmlns="http://www.w3.org/1999/xhtml">x</p>`, []narrWant{{NarrativeRuleXHTML, "root element must be div, found 'p'"}}},
		{"text before root", `hello ` + x + `x</div>`, []narrWant{{NarrativeRuleXHTML, "content before the root div"}}},
		{"text after root", x + `x</div>tail`, []narrWant{{NarrativeRuleXHTML, "content after the root div"}}},
		{"two roots", x + `x</div>` + x + `y</div>`, []narrWant{{NarrativeRuleXHTML, "content after the root div"}}},
		{"xml declaration", `<?xml version="1.0"?>` + x + `x</div>`, []narrWant{{NarrativeRuleXHTML, "content before the root div"}}},
		{"doctype", `<!DOCTYPE html>` + x + `x</div>`, []narrWant{{NarrativeRuleXHTML, "DOCTYPE"}}},
		{"unquoted attribute", x + `<p class=a>x</p></div>`, []narrWant{{NarrativeRuleXHTML, "malformed start tag or attribute syntax on element 'p'"}}},
		{"minimized attribute", x + `<td nowrap>x</td></div>`, []narrWant{{NarrativeRuleXHTML, "malformed start tag"}}},
		{"attributes not separated", x + `<p class="a"id="b">x</p></div>`, []narrWant{{NarrativeRuleXHTML, "malformed start tag"}}},
		{"duplicate attribute", x + `<p class="a" class="b">x</p></div>`, []narrWant{{NarrativeRuleXHTML, "duplicate attribute 'class' on element 'p'"}}},
		{"lt in attribute", x + `<p title="a<b">x</p></div>`, []narrWant{{NarrativeRuleXHTML, "less-than sign in attribute 'title'"}}},
		{"end tag with attribute", x + `<p>x</p class="a"></div>`, []narrWant{{NarrativeRuleXHTML, "malformed end tag 'p'"}}},
		{"truncated tag", x + `x</div`, []narrWant{{NarrativeRuleXHTML, "unterminated markup"}}},
		{"truncated start tag", x + `x<span class="a"`, []narrWant{{NarrativeRuleXHTML, "unterminated markup"}}},
		{"bad comment", x + `x<!-- a -- b --></div>`, []narrWant{{NarrativeRuleXHTML, "malformed comment"}}},
		{"processing instruction", x + `x<?php echo 1 ?></div>`, []narrWant{{NarrativeRuleXHTML, "processing instruction"}}},
		{"unterminated cdata", x + `x<![CDATA[abc`, []narrWant{{NarrativeRuleXHTML, "unterminated CDATA"}}},
		{"cdata end in text", x + `a]]>b</div>`, []narrWant{{NarrativeRuleXHTML, "CDATA end marker"}}},
		{"lt in text", x + `a < b</div>`, []narrWant{{NarrativeRuleXHTML, "unescaped less-than sign in text"}}},

		// xhtml: entities and characters.
		{"nbsp entity", x + `a&nbsp;b</div>`, []narrWant{{NarrativeRuleXHTML, "entity 'nbsp' is not an XML predefined entity"}}},
		{"reg entity", x + `CPT&reg;</div>`, []narrWant{{NarrativeRuleXHTML, "entity 'reg'"}}},
		{"entity in attribute", x + `<p title="&copy;">x</p></div>`, []narrWant{{NarrativeRuleXHTML, "entity 'copy'"}}},
		{"bare ampersand", x + `fish & chips</div>`, []narrWant{{NarrativeRuleXHTML, "unescaped ampersand"}}},
		{"entity without semicolon", x + `a&amp b</div>`, []narrWant{{NarrativeRuleXHTML, "unescaped ampersand"}}},
		{"uppercase hex char ref marker", x + `&#X41;</div>`, []narrWant{{NarrativeRuleXHTML, "unescaped ampersand"}}},
		{"char ref to NUL", x + `a&#0;b</div>`, []narrWant{{NarrativeRuleXHTML, "character reference to a character not allowed"}}},
		{"huge char ref", x + `a&#99999999999999999999;b</div>`, []narrWant{{NarrativeRuleXHTML, "character reference to a character not allowed"}}},
		{"control character", x + "a\x01b</div>", []narrWant{{NarrativeRuleXHTML, "character not allowed in XML"}}},
		{"invalid utf8", x + "a\xffb</div>", []narrWant{{NarrativeRuleXHTML, "invalid UTF-8"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issues := CheckNarrative(tc.div)
			narrAssertSafeDetails(t, issues)
			if tc.want == nil {
				if len(issues) != 0 {
					t.Fatalf("want no issues, got %+v", issues)
				}
				return
			}
			for _, w := range tc.want {
				if !narrHas(issues, w) {
					t.Errorf("want %+v in %+v", w, issues)
				}
			}
		})
	}
}

func TestCheckNarrativeNoSpuriousIssues(t *testing.T) {
	// A single violation should not cascade into structural noise.
	issues := CheckNarrative(narrXmlns + `<p onclick="x()">ok</p></div>`)
	if len(issues) != 1 {
		t.Fatalf("want exactly one issue, got %+v", issues)
	}
	issues = CheckNarrative(narrXmlns + `<script/><p>ok</p></div>`)
	if len(issues) != 1 {
		t.Fatalf("self-closed script must not swallow the rest: %+v", issues)
	}
}

// TestCheckNarrativeDetailNeverLeaksText: no text content, attribute value or
// comment may reach a Detail.
func TestCheckNarrativeDetailNeverLeaksText(t *testing.T) {
	const secret = "SECRETPHI-JaneDoe-19700101-123-45-6789"
	x := narrXmlns
	inputs := []string{
		x + `<script>` + secret + `</script></div>`,
		x + secret + `&nbsp;` + secret + `</div>`,
		x + `<p onclick="` + secret + `">` + secret + `</p></div>`,
		x + `<a href="javascript:` + secret + `">` + secret + `</a></div>`,
		x + `<img src="http://evil/` + secret + `"/></div>`,
		x + `<img src="data:text/` + secret + `"/></div>`,
		x + `<p style="background:url(http://` + secret + `)">` + secret + `</p></div>`,
		x + `<p title="` + secret + `<">x</p></div>`,
		x + `<p class=` + secret + `>x</p></div>`,
		x + `<!-- ` + secret + ` -- -->x</div>`,
		x + `<?` + secret + `?>x</div>`,
		x + `x</div>` + secret,
		secret + x + `x</div>`,
		`<div>` + secret + `</div>`,
		x + `<p>` + secret,
		x + `x</p ` + secret + `>`,
		x + `x&` + secret + `;</div>`,
		x + `x<` + secret + `>y</` + secret + `></div>`,
		x + `<![CDATA[` + secret,
		x + "\x00" + secret + "\xff</div>",
	}
	for i, in := range inputs {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			issues := CheckNarrative(in)
			if len(issues) == 0 {
				t.Fatalf("expected issues")
			}
			narrAssertSafeDetails(t, issues)
			for _, is := range issues {
				for _, part := range []string{secret, "SECRETPHI-JaneDoe-19700101-123", "JaneDoe-1970", "123-45-6789"} {
					if strings.Contains(is.Detail, part) {
						t.Errorf("Detail %q leaks %q", is.Detail, part)
					}
				}
			}
		})
	}
}

func TestCheckNarrativeIssueCap(t *testing.T) {
	var elems []string
	for e := range narrElements {
		elems = append(elems, e)
	}
	sort.Strings(elems)
	var b strings.Builder
	b.WriteString(narrXmlns)
	for _, e := range elems { // 3 distinct event-handler issues per element
		fmt.Fprintf(&b, `<%s onclick="x" onload="x" onerror="x"/>`, e)
	}
	b.WriteString("x</div>")
	issues := CheckNarrative(b.String())
	if len(issues) != narrMaxIssues+1 || issues[len(issues)-1].Detail != narrDetailTooMany {
		t.Fatalf("want %d issues ending with the cap marker, got %d", narrMaxIssues+1, len(issues))
	}
	// Deduplication: the same violation is reported once.
	issues = CheckNarrative(narrXmlns + strings.Repeat("<script/>", 50) + "x</div>")
	if len(issues) != 1 {
		t.Fatalf("want 1 deduplicated issue, got %+v", issues)
	}
}

var narrSlotRE = regexp.MustCompile(`'[^']*'`)

var narrSafeSlotRE = regexp.MustCompile(`^[A-Za-z0-9:._?-]*$`)

// narrCheckDetail verifies that a Detail is one of the fixed templates with
// its slots filled by sanitised names of at most narrMaxName bytes (plus an
// ellipsis), i.e. it carries no input text longer than a name.
func narrCheckDetail(is NarrativeIssue) error {
	switch is.Rule {
	case NarrativeRuleTxt1, NarrativeRuleTxt2, NarrativeRuleXHTML:
	default:
		return fmt.Errorf("unknown rule %q", is.Rule)
	}
	var slots []string
	skeleton := narrSlotRE.ReplaceAllStringFunc(is.Detail, func(s string) string {
		slots = append(slots, s[1:len(s)-1])
		return "'%s'"
	})
	known := false
	for _, f := range narrDetailFormats {
		if f == skeleton {
			known = true
			break
		}
	}
	if !known {
		return fmt.Errorf("detail %q does not match a known template", is.Detail)
	}
	for _, s := range slots {
		name := strings.TrimSuffix(s, "...")
		if len(name) > narrMaxName || !narrSafeSlotRE.MatchString(name) {
			return fmt.Errorf("detail %q has an unsafe name slot %q", is.Detail, s)
		}
	}
	return nil
}

func narrAssertSafeDetails(t *testing.T, issues []NarrativeIssue) {
	t.Helper()
	for _, is := range issues {
		if err := narrCheckDetail(is); err != nil {
			t.Error(err)
		}
	}
}

func TestCheckNarrativeDetailTemplates(t *testing.T) {
	for _, f := range narrDetailFormats {
		if n := strings.Count(f, "'"); n != 2*strings.Count(f, "%s") || strings.Count(f, "'%s'") != strings.Count(f, "%s") {
			t.Errorf("template %q: quotes must only surround %%s slots", f)
		}
		if strings.Count(f, "%") != strings.Count(f, "%s") {
			t.Errorf("template %q has a non-%%s verb", f)
		}
	}
	long := strings.Repeat("a", 200)
	issues := CheckNarrative(narrXmlns + "<" + long + ">x</" + long + "></div>")
	if len(issues) == 0 {
		t.Fatal("expected an issue for an unknown element")
	}
	for _, is := range issues {
		if strings.Contains(is.Detail, strings.Repeat("a", narrMaxName+1)) {
			t.Errorf("name not truncated: %q", is.Detail)
		}
	}
	narrAssertSafeDetails(t, issues)
}

func FuzzCheckNarrative(f *testing.F) {
	x := narrXmlns
	for _, s := range []string{
		"",
		x + `text</div>`,
		x + `<p class="a">x<br/><a href="javascript:x">y</a></p></div>`,
		x + `<img src="http://evil" onerror="x"/></div>`,
		x + `a&nbsp;&#0;&amp;<![CDATA[z]]><!-- c --></div>`,
		x + `<p style="x:expression(1)">x</b></div>tail`,
		`<?xml version="1.0"?><!DOCTYPE x><div>x`,
		x + `<script>x</script><textarea><p></textarea>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, div string) {
		if len(div) > 4096 {
			return // keep it cheap
		}
		issues := CheckNarrative(div)
		if len(issues) > narrMaxIssues+1 {
			t.Fatalf("%d issues exceeds the cap", len(issues))
		}
		for _, is := range issues {
			if err := narrCheckDetail(is); err != nil {
				t.Fatal(err)
			}
		}
	})
}
