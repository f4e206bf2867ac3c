package fhir

// Narrative (Narrative.div) checks for FHIR R4.
//
// Sources of the rules (R4 = FHIR 4.0.1):
//   - http://hl7.org/fhir/R4/narrative.html#xhtml: the div content SHALL only
//     contain the basic HTML formatting elements of HTML 4.0 chapters 7-11
//     (except section 9.4, i.e. no ins/del) and 15, <a> (name or href),
//     images and internally contained style attributes; it SHALL NOT contain
//     head, body, external stylesheet references, deprecated elements,
//     scripts, forms, base/link/xlink, frames, iframes, objects or event
//     attributes. It is XML, so only the XML predefined entities exist
//     ("there is no support for HTML entities like &nbsp; or &copy;").
//     In JSON the value SHALL be exactly the <div> element (no <?xml ...?>,
//     nothing around it).
//   - txt-1 (element and attribute lists of its XPath in the R4 definitions,
//     plus what the HL7 reference validator's htmlChecks() additionally
//     accepts: address, bdo, kbd, map, area, xml:lang, xmlns*, usemap,
//     ismap, nohref).
//   - txt-2: "The narrative SHALL have some non-whitespace content"
//     (XPath: descendant::text()[normalize-space(.)!=''] or
//     descendant::h:img[@src]).
//
// Gateway security policy (documented decisions beyond the letter of R4):
//   - Every URL-valued attribute (href, src, cite, longdesc, usemap) is
//     checked after the normalisation a browser applies (entities decoded,
//     tab/CR/LF removed, leading/trailing controls and spaces trimmed).
//     Links (href, cite, longdesc, usemap) may be relative, a #fragment,
//     protocol-relative, or use the http, https or mailto scheme; any other
//     scheme (javascript:, vbscript:, data:, file:, ...) is a txt-1 issue.
//   - Image sources (src) may be a #fragment (contained Binary/Media, the
//     form R4 documents), a relative reference (resolved against the FHIR
//     server itself, e.g. "pkb.png" in the R4 example
//     Consent/consent-example-pkb), or a data:image/* URL (R4 says essential
//     images SHOULD be data: URLs). Absolute (http:, https:, ...) and
//     protocol-relative ("//host") image sources are rejected: R4 only says
//     external images SHOULD NOT be relied on, but loading them when the
//     narrative is rendered is a tracking/exfiltration channel for PHI.
//     data:image/svg+xml is rejected because SVG is active content and svg
//     is not an allowed narrative element.
//   - style attributes are allowed (R4 permits internal styles) unless they
//     contain active or resource-loading constructs: expression(,
//     javascript:, vbscript:, -moz-binding, behavior:, @import, image-set(,
//     image(, src(, or url( with anything but a non-SVG data:image URL. CSS
//     escapes and comments are resolved before matching.
//   - These URL and style violations are reported under rule "txt-1"
//     (the R4 invariant that forbids active content and whose expression,
//     htmlChecks(), the reference validator uses for them); "txt-2" is used
//     only for the empty-content rule, exactly as in R4.
//
// Well-formedness ("xhtml" issues) follows XML, not HTML: every start tag
// needs a matching end tag or the self-closing form (so <br> must be <br/>),
// names are case-sensitive, attribute values must be quoted, attributes must
// not repeat, and there are no raw-text elements (the content of e.g.
// <script> is parsed as markup, as an XML parser would).
//
// Privacy: Detail strings are built only from fixed templates
// (narrDetailFormats) plus element, attribute, entity or URL-scheme names.
// A name is shown only if it belongs to a public vocabulary (HTML element
// or attribute, HTML named entity, well-known URL scheme; see
// narrDisplayName), otherwise it is shown as "?", because a "name" in
// malformed markup can be text content ("Tom&Jerry;", "x<Smith"). Shown
// names are reduced to [A-Za-z0-9:._-] and at most narrMaxName bytes. No
// text content, attribute value or comment text is ever copied into an
// issue, so issues can be logged even though narratives carry PHI.

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// NarrativeIssue is one violation of the R4 narrative rules in a text.div.
type NarrativeIssue struct {
	Rule   string // "txt-1" or "txt-2" or "xhtml" (not well-formed)
	Detail string // safe to log: names only the offending element/attribute name, never text content
}

// Values of NarrativeIssue.Rule.
const (
	NarrativeRuleTxt1  = "txt-1" // element, attribute, URL or style not allowed
	NarrativeRuleTxt2  = "txt-2" // no non-whitespace content
	NarrativeRuleXHTML = "xhtml" // not well-formed XHTML / not a single XHTML div
)

// XHTMLNamespace is the namespace the root div must declare.
const XHTMLNamespace = "http://www.w3.org/1999/xhtml"

const (
	// narrMaxName bounds how many bytes of a name taken from the input can
	// appear in one Detail slot.
	narrMaxName = 32
	// narrMaxIssues bounds the (deduplicated) issues returned for one div so
	// that hostile input cannot amplify into huge error responses; when it
	// is reached a final narrDetailTooMany issue is appended and checking
	// stops.
	narrMaxIssues = 100
)

// Detail templates. Every Detail is exactly one of these with each %s
// replaced by a sanitised name (see narrSafeName). Templates contain no
// single quote other than the ones around %s.
const (
	narrDetailElement     = "element '%s' is not allowed in narrative"
	narrDetailAttribute   = "attribute '%s' is not allowed on element '%s'"
	narrDetailEvent       = "event handler attribute '%s' on element '%s'"
	narrDetailScheme      = "URL scheme '%s' is not allowed in attribute '%s' on element '%s'"
	narrDetailImgExternal = "attribute '%s' on element '%s' must be a local fragment, a relative reference or a data:image URL"
	narrDetailImgData     = "data URL in attribute '%s' on element '%s' is not a permitted image type"
	narrDetailStyle       = "unsafe construct in style attribute on element '%s'"
	narrDetailEmpty       = "narrative div has no non-whitespace content"
	narrDetailNoRoot      = "no root div element"
	narrDetailRootName    = "root element must be div, found '%s'"
	narrDetailRootNoNS    = "root div does not declare xmlns=" + XHTMLNamespace
	narrDetailRootBadNS   = "root div declares a namespace other than " + XHTMLNamespace
	narrDetailNestedNS    = "element '%s' declares a namespace other than " + XHTMLNamespace
	narrDetailBefore      = "content before the root div"
	narrDetailAfter       = "content after the root div"
	narrDetailUnclosed    = "element '%s' is not closed"
	narrDetailMismatch    = "end tag '%s' does not match open element '%s'"
	narrDetailUnexpected  = "unexpected end tag '%s'"
	narrDetailBadTag      = "malformed start tag or attribute syntax on element '%s'"
	narrDetailBadEndTag   = "malformed end tag '%s'"
	narrDetailDupAttr     = "duplicate attribute '%s' on element '%s'"
	narrDetailLtInAttr    = "unescaped less-than sign in attribute '%s' on element '%s'"
	narrDetailEntity      = "entity '%s' is not an XML predefined entity (only amp, lt, gt, quot, apos)"
	narrDetailBareAmp     = "unescaped ampersand (not a valid entity or character reference)"
	narrDetailBadCharRef  = "character reference to a character not allowed in XML"
	narrDetailLtInText    = "unescaped less-than sign in text"
	narrDetailCDATAEnd    = "CDATA end marker in text"
	narrDetailCDATAOpen   = "unterminated CDATA section"
	narrDetailComment     = "malformed comment"
	narrDetailDoctype     = "DOCTYPE is not allowed in narrative"
	narrDetailBogus       = "processing instruction or malformed markup declaration"
	narrDetailTruncated   = "unterminated markup at end of input"
	narrDetailInvalidUTF8 = "invalid UTF-8"
	narrDetailInvalidChar = "character not allowed in XML"
	narrDetailTooMany     = "too many issues; further checking stopped"
)

// narrDetailFormats lists every Detail template (used by tests to prove
// that Details carry no input text beyond sanitised names).
var narrDetailFormats = []string{
	narrDetailElement, narrDetailAttribute, narrDetailEvent, narrDetailScheme,
	narrDetailImgExternal, narrDetailImgData, narrDetailStyle, narrDetailEmpty,
	narrDetailNoRoot, narrDetailRootName, narrDetailRootNoNS, narrDetailRootBadNS,
	narrDetailNestedNS, narrDetailBefore, narrDetailAfter, narrDetailUnclosed,
	narrDetailMismatch, narrDetailUnexpected, narrDetailBadTag, narrDetailBadEndTag,
	narrDetailDupAttr, narrDetailLtInAttr, narrDetailEntity, narrDetailBareAmp,
	narrDetailBadCharRef, narrDetailLtInText, narrDetailCDATAEnd, narrDetailCDATAOpen,
	narrDetailComment, narrDetailDoctype, narrDetailBogus, narrDetailTruncated,
	narrDetailInvalidUTF8, narrDetailInvalidChar, narrDetailTooMany,
}

// narrElements is the txt-1 element list: the R4 XPath list plus address,
// bdo, kbd (HTML 4 chapters 7-9, accepted by the reference validator) and
// map/area (image maps, accepted by the reference validator). ins and del
// (HTML 4 section 9.4) are excluded by R4.
var narrElements = narrSet(
	"a", "abbr", "acronym", "b", "big", "blockquote", "br", "caption", "cite",
	"code", "col", "colgroup", "dd", "dfn", "div", "dl", "dt", "em",
	"h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p",
	"pre", "q", "samp", "small", "span", "strong", "sub", "sup", "table",
	"tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var",
	"address", "bdo", "kbd", "map", "area",
)

// narrAttributes is the txt-1 attribute list from the R4 XPath, plus
// xml:lang, usemap, ismap and nohref (reference validator). xmlns and
// xmlns:* are namespace declarations and handled separately.
var narrAttributes = narrSet(
	"abbr", "accesskey", "align", "alt", "axis", "bgcolor", "border",
	"cellhalign", "cellpadding", "cellspacing", "cellvalign", "char",
	"charoff", "charset", "cite", "class", "colspan", "compact", "coords",
	"dir", "frame", "headers", "height", "href", "hreflang", "hspace", "id",
	"lang", "longdesc", "name", "nowrap", "rel", "rev", "rowspan", "rules",
	"scope", "shape", "span", "src", "start", "style", "summary", "tabindex",
	"title", "type", "valign", "value", "vspace", "width",
	"xml:lang", "usemap", "ismap", "nohref",
)

// narrLinkAttributes hold URLs that are followed on user action.
var narrLinkAttributes = narrSet("href", "cite", "longdesc", "usemap")

// narrLinkSchemes are the URL schemes permitted in link attributes.
var narrLinkSchemes = narrSet("http", "https", "mailto")

// narrPredefinedEntities are the only named entities XML knows.
var narrPredefinedEntities = narrSet("amp", "lt", "gt", "quot", "apos")

func narrSet(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// CheckNarrative checks an R4 Narrative.div value (the XHTML string as it appears in JSON) against
// R4's rules (http://hl7.org/fhir/R4/narrative.html#xhtml and constraints txt-1, txt-2) and returns every violation.
//
// Issues are deduplicated (same Rule and Detail reported once) and capped
// at narrMaxIssues. A nil result means the div is acceptable.
func CheckNarrative(div string) []NarrativeIssue {
	c := &narrChecker{seen: make(map[NarrativeIssue]bool)}
	c.run(div)
	return c.issues
}

type narrChecker struct {
	issues     []NarrativeIssue
	seen       map[NarrativeIssue]bool
	full       bool
	stack      []string
	rootSeen   bool
	hasContent bool
}

// add records an issue; args must already be sanitised names.
func (c *narrChecker) add(rule, format string, names ...string) {
	if c.full {
		return
	}
	args := make([]any, len(names))
	for i, n := range names {
		args[i] = narrDisplayName(n)
	}
	is := NarrativeIssue{Rule: rule, Detail: format}
	if len(args) > 0 {
		is.Detail = fmt.Sprintf(format, args...)
	}
	if c.seen[is] {
		return
	}
	c.seen[is] = true
	if len(c.issues) >= narrMaxIssues {
		c.issues = append(c.issues, NarrativeIssue{Rule: NarrativeRuleXHTML, Detail: narrDetailTooMany})
		c.full = true
		return
	}
	c.issues = append(c.issues, is)
}

// narrKnownSchemes are URL schemes whose names may appear in a Detail.
var narrKnownSchemes = narrSet(
	"javascript", "vbscript", "livescript", "mocha", "data", "file", "ftp",
	"http", "https", "mailto", "tel", "sms", "fax", "callto", "about", "blob",
	"filesystem", "jar", "mhtml", "ms-its", "res", "view-source", "chrome",
	"urn", "ws", "wss", "ldap", "news", "nntp", "gopher", "telnet", "ssh",
	"sftp", "irc", "xmpp", "geo", "intent", "cid", "mid",
)

// narrKnownPrefixes are namespace prefixes whose names may appear in a
// Detail.
var narrKnownPrefixes = narrSet("xml", "xmlns", "xlink", "xhtml", "html", "h", "svg", "math", "xsi")

// narrDisplayName returns how a name taken from the input is shown in a
// Detail. Markup names can be text content in disguise (a clinician typing
// "Tom&Jerry;" or "x<Smith" produces an entity or element name), so only
// names from public vocabularies are shown: HTML element and attribute
// names (golang.org/x/net/html/atom plus the R4 lists), HTML named
// entities and well-known URL schemes. Anything else is shown as "?"
// ("on?" / "data-?" for unknown event-handler / data attributes).
func narrDisplayName(s string) string {
	if narrKnownWord(s) {
		return narrSafeName(s)
	}
	if i := strings.IndexByte(s, ':'); i > 0 && narrKnownPrefixes[s[:i]] && narrKnownWord(s[i+1:]) {
		return narrSafeName(s)
	}
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(lower, "on"):
		return "on?"
	case strings.HasPrefix(lower, "data-"):
		return "data-?"
	}
	return "?"
}

func narrKnownWord(s string) bool {
	if s == "" || len(s) > narrMaxName {
		return false
	}
	lower := strings.ToLower(s)
	if atom.Lookup([]byte(lower)) != 0 || narrElements[lower] || narrAttributes[lower] ||
		narrKnownSchemes[lower] || narrPredefinedEntities[s] {
		return true
	}
	// A complete HTML named entity decodes to something without the ';'.
	ref := "&" + s + ";"
	dec := html.UnescapeString(ref)
	return dec != ref && !strings.HasSuffix(dec, ";")
}

// narrSafeName reduces a name taken from the input to [A-Za-z0-9:._-]
// (other bytes become '?') and at most narrMaxName bytes (then "...").
func narrSafeName(s string) string {
	n := len(s)
	if n > narrMaxName {
		n = narrMaxName
	}
	b := make([]byte, 0, n+3)
	for i := 0; i < n; i++ {
		ch := s[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' ||
			ch == ':' || ch == '.' || ch == '_' || ch == '-' {
			b = append(b, ch)
		} else {
			b = append(b, '?')
		}
	}
	if len(s) > narrMaxName {
		b = append(b, "..."...)
	}
	return string(b)
}

func (c *narrChecker) run(div string) {
	c.checkChars(div)

	z := html.NewTokenizer(strings.NewReader(div))
	z.AllowCDATA(true)
	consumed := 0
	for !c.full {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		raw := string(z.Raw())
		consumed += len(raw)
		switch tt {
		case html.TextToken:
			c.text(z, raw)
		case html.StartTagToken, html.SelfClosingTagToken:
			c.startTag(z, raw, tt == html.SelfClosingTagToken)
			// XHTML is XML: no raw-text elements (script, style, textarea,
			// title, ...), their content is markup like everywhere else.
			z.NextIsNotRawText()
		case html.EndTagToken:
			c.endTag(raw)
		case html.CommentToken:
			c.comment(raw)
		case html.DoctypeToken:
			c.add(NarrativeRuleXHTML, narrDetailDoctype)
		}
	}
	if c.full {
		return
	}
	if consumed < len(div) {
		// The tokenizer drops a tag cut off by the end of input.
		c.add(NarrativeRuleXHTML, narrDetailTruncated)
	}
	for i := len(c.stack) - 1; i >= 0; i-- {
		c.add(NarrativeRuleXHTML, narrDetailUnclosed, c.stack[i])
	}
	if !c.rootSeen {
		c.add(NarrativeRuleXHTML, narrDetailNoRoot)
	}
	if !c.hasContent {
		c.add(NarrativeRuleTxt2, narrDetailEmpty)
	}
}

// checkChars reports invalid UTF-8 and characters outside the XML Char
// production anywhere in the input.
func (c *narrChecker) checkChars(s string) {
	badUTF8, badChar := false, false
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r == utf8.RuneError && size == 1 {
			badUTF8 = true
			continue
		}
		if !narrXMLChar(rune(r)) {
			badChar = true
		}
	}
	if badUTF8 {
		c.add(NarrativeRuleXHTML, narrDetailInvalidUTF8)
	}
	if badChar {
		c.add(NarrativeRuleXHTML, narrDetailInvalidChar)
	}
}

// narrXMLChar reports whether r matches the XML 1.0 Char production.
func narrXMLChar(r rune) bool {
	return r == 0x9 || r == 0xA || r == 0xD ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

func narrIsSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func narrAllSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		if !narrIsSpace(s[i]) {
			return false
		}
	}
	return true
}

// outside reports content that is not inside the root element.
func (c *narrChecker) outside() {
	if c.rootSeen {
		c.add(NarrativeRuleXHTML, narrDetailAfter)
	} else {
		c.add(NarrativeRuleXHTML, narrDetailBefore)
	}
}

func (c *narrChecker) text(z *html.Tokenizer, raw string) {
	if strings.HasPrefix(raw, "<![CDATA[") {
		if len(c.stack) == 0 {
			c.outside()
			return
		}
		inner := raw[len("<![CDATA["):]
		if strings.HasSuffix(inner, "]]>") {
			inner = inner[:len(inner)-3]
		} else {
			c.add(NarrativeRuleXHTML, narrDetailCDATAOpen)
		}
		if !narrAllSpace(inner) {
			c.hasContent = true
		}
		return
	}
	if len(c.stack) == 0 {
		if !narrAllSpace(raw) {
			c.outside()
		}
		return
	}
	c.scanRefs(raw)
	if strings.IndexByte(raw, '<') >= 0 {
		c.add(NarrativeRuleXHTML, narrDetailLtInText)
	}
	if strings.Contains(raw, "]]>") {
		c.add(NarrativeRuleXHTML, narrDetailCDATAEnd)
	}
	if !c.hasContent && !narrAllSpace(string(z.Text())) {
		c.hasContent = true
	}
}

// scanRefs checks every '&' in raw markup: only the five XML predefined
// entities and numeric references to XML characters are allowed.
func (c *narrChecker) scanRefs(raw string) {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '&' {
			continue
		}
		j := i + 1
		if j < len(raw) && raw[j] == '#' {
			j++
			base := 10
			if j < len(raw) && raw[j] == 'x' {
				base = 16
				j++
			}
			start, val := j, 0
			for j < len(raw) {
				d := narrDigit(raw[j], base)
				if d < 0 {
					break
				}
				if val <= 0x10FFFF {
					val = val*base + d
				}
				j++
			}
			if j == start || j >= len(raw) || raw[j] != ';' {
				c.add(NarrativeRuleXHTML, narrDetailBareAmp)
				continue
			}
			if val > 0x10FFFF || !narrXMLChar(rune(val)) {
				c.add(NarrativeRuleXHTML, narrDetailBadCharRef)
			}
			i = j
			continue
		}
		start := j
		if j < len(raw) && narrNameStart(raw[j]) {
			j++
			for j < len(raw) && narrNameByte(raw[j]) {
				j++
			}
		}
		if j == start || j >= len(raw) || raw[j] != ';' {
			c.add(NarrativeRuleXHTML, narrDetailBareAmp)
			continue
		}
		if name := raw[start:j]; !narrPredefinedEntities[name] {
			c.add(NarrativeRuleXHTML, narrDetailEntity, name)
		}
		i = j
	}
}

func narrDigit(b byte, base int) int {
	switch {
	case b >= '0' && b <= '9':
		return int(b - '0')
	case base == 16 && b >= 'a' && b <= 'f':
		return int(b-'a') + 10
	case base == 16 && b >= 'A' && b <= 'F':
		return int(b-'A') + 10
	}
	return -1
}

// narrNameStart / narrNameByte approximate the XML Name production on
// bytes (every non-ASCII byte is accepted as part of a name).
func narrNameStart(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '_' || b == ':' || b >= 0x80
}

func narrNameByte(b byte) bool {
	return narrNameStart(b) || b >= '0' && b <= '9' || b == '-' || b == '.'
}

func narrValidName(s string) bool {
	if s == "" || !narrNameStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !narrNameByte(s[i]) {
			return false
		}
	}
	return true
}

// narrRawAttr is one attribute as written in the markup.
type narrRawAttr struct {
	name, value string // value still escaped
}

// narrTagName returns the element name exactly as written after "<" or
// "</" (the same bytes the tokenizer uses, before it lower-cases them).
func narrTagName(raw string, skip int) string {
	i := skip
	for i < len(raw) {
		switch raw[i] {
		case ' ', '\n', '\r', '\t', '\f', '/', '>':
			return raw[skip:i]
		}
		i++
	}
	return raw[skip:i]
}

// narrScanStartTag parses a start tag with XML syntax rules: quoted
// values, whitespace between attributes, "/>" or ">" at the end.
// ok is false when the tag is not well-formed XML.
func narrScanStartTag(raw string) (name string, attrs []narrRawAttr, ok bool) {
	name = narrTagName(raw, 1)
	if !narrValidName(name) {
		return name, nil, false
	}
	i := 1 + len(name)
	for {
		ws := i
		for i < len(raw) && narrIsSpace(raw[i]) {
			i++
		}
		if i >= len(raw) {
			return name, attrs, false
		}
		if raw[i] == '>' {
			return name, attrs, i == len(raw)-1
		}
		if raw[i] == '/' {
			return name, attrs, i == len(raw)-2 && raw[i+1] == '>'
		}
		if i == ws {
			return name, attrs, false // attributes must be separated by whitespace
		}
		start := i
		for i < len(raw) && !narrIsSpace(raw[i]) && raw[i] != '=' && raw[i] != '/' && raw[i] != '>' {
			i++
		}
		an := raw[start:i]
		if !narrValidName(an) {
			return name, attrs, false
		}
		for i < len(raw) && narrIsSpace(raw[i]) {
			i++
		}
		if i >= len(raw) || raw[i] != '=' {
			return name, attrs, false
		}
		i++
		for i < len(raw) && narrIsSpace(raw[i]) {
			i++
		}
		if i >= len(raw) || raw[i] != '"' && raw[i] != '\'' {
			return name, attrs, false
		}
		q := raw[i]
		end := strings.IndexByte(raw[i+1:], q)
		if end < 0 {
			return name, attrs, false
		}
		attrs = append(attrs, narrRawAttr{name: an, value: raw[i+1 : i+1+end]})
		i += end + 2
	}
}

// narrAttr is an attribute as an HTML renderer sees it (lower-cased name,
// decoded value).
type narrAttr struct {
	name, value string
}

func (c *narrChecker) startTag(z *html.Tokenizer, raw string, selfClosing bool) {
	name, rawAttrs, ok := narrScanStartTag(raw)

	// What an HTML renderer would see; used for the security checks.
	var attrs []narrAttr
	if _, more := z.TagName(); more {
		for more {
			var k, v []byte
			k, v, more = z.TagAttr()
			attrs = append(attrs, narrAttr{name: string(k), value: string(v)})
		}
	}

	isRoot := false
	if len(c.stack) == 0 {
		if c.rootSeen {
			c.add(NarrativeRuleXHTML, narrDetailAfter)
		} else {
			c.rootSeen, isRoot = true, true
		}
	}

	if !narrElements[name] {
		c.add(NarrativeRuleTxt1, narrDetailElement, name)
	}
	c.scanRefs(raw)

	// Syntax and attribute names exactly as written (XML is case-sensitive).
	var names []string
	if ok {
		dup := make(map[string]bool, len(rawAttrs))
		for _, a := range rawAttrs {
			if dup[a.name] {
				c.add(NarrativeRuleXHTML, narrDetailDupAttr, a.name, name)
			}
			dup[a.name] = true
			if strings.IndexByte(a.value, '<') >= 0 {
				c.add(NarrativeRuleXHTML, narrDetailLtInAttr, a.name, name)
			}
			names = append(names, a.name)
		}
	} else {
		c.add(NarrativeRuleXHTML, narrDetailBadTag, name)
		for _, a := range attrs {
			names = append(names, a.name)
		}
	}
	xmlns, hasXmlns := "", false
	for i, an := range names {
		switch {
		case strings.HasPrefix(strings.ToLower(an), "on"):
			// reported below as an event handler
		case an == "xmlns":
			hasXmlns = true
			if ok {
				xmlns = html.UnescapeString(rawAttrs[i].value)
			} else {
				xmlns = attrs[i].value
			}
		case strings.HasPrefix(an, "xmlns:"):
			// prefix declarations are harmless; prefixed names are not allowed
		case !narrAttributes[an]:
			c.add(NarrativeRuleTxt1, narrDetailAttribute, an, name)
		}
	}
	if isRoot {
		if name != "div" {
			c.add(NarrativeRuleXHTML, narrDetailRootName, name)
		}
		if !hasXmlns {
			c.add(NarrativeRuleXHTML, narrDetailRootNoNS)
		} else if xmlns != XHTMLNamespace {
			c.add(NarrativeRuleXHTML, narrDetailRootBadNS)
		}
	} else if hasXmlns && xmlns != XHTMLNamespace {
		c.add(NarrativeRuleXHTML, narrDetailNestedNS, name)
	}

	// Security checks on the attributes as a browser would interpret them.
	for _, a := range attrs {
		switch {
		case strings.HasPrefix(a.name, "on"):
			c.add(NarrativeRuleTxt1, narrDetailEvent, a.name, name)
		case a.name == "src":
			c.checkImageURL(a, name)
			if name == "img" {
				// txt-2 XPath: descendant::h:img[@src] counts as content.
				c.hasContent = true
			}
		case narrLinkAttributes[a.name]:
			c.checkLinkURL(a, name)
		case a.name == "style":
			if narrUnsafeStyle(a.value) {
				c.add(NarrativeRuleTxt1, narrDetailStyle, name)
			}
		}
	}

	if !selfClosing {
		c.stack = append(c.stack, name)
	}
}

func (c *narrChecker) endTag(raw string) {
	name := narrTagName(raw, 2)
	rest := raw[2+len(name):]
	wellFormed := narrValidName(name) && strings.HasSuffix(rest, ">") && narrAllSpace(rest[:len(rest)-1])
	if !wellFormed {
		c.add(NarrativeRuleXHTML, narrDetailBadEndTag, name)
	}
	n := len(c.stack)
	switch {
	case n == 0:
		c.add(NarrativeRuleXHTML, narrDetailUnexpected, name)
	case c.stack[n-1] == name:
		c.stack = c.stack[:n-1]
	default:
		for i := n - 2; i >= 0; i-- {
			if c.stack[i] == name {
				c.add(NarrativeRuleXHTML, narrDetailMismatch, name, c.stack[n-1])
				for j := n - 1; j > i; j-- {
					c.add(NarrativeRuleXHTML, narrDetailUnclosed, c.stack[j])
				}
				c.stack = c.stack[:i]
				return
			}
		}
		c.add(NarrativeRuleXHTML, narrDetailUnexpected, name)
	}
}

func (c *narrChecker) comment(raw string) {
	if len(c.stack) == 0 {
		c.outside()
	}
	switch {
	case strings.HasPrefix(raw, "<!--"):
		if len(raw) < len("<!---->") || !strings.HasSuffix(raw, "-->") {
			c.add(NarrativeRuleXHTML, narrDetailComment)
			return
		}
		inner := raw[4 : len(raw)-3]
		if strings.Contains(inner, "--") || strings.HasSuffix(inner, "-") {
			c.add(NarrativeRuleXHTML, narrDetailComment)
		}
	default:
		// <?pi?>, <!bogus>, </3>, </> ...
		c.add(NarrativeRuleXHTML, narrDetailBogus)
	}
}

// narrURL normalises a URL the way browsers do before resolving it and
// returns its lower-cased scheme ("" when relative) and whether it is
// network-path relative ("//host/...").
func narrURL(v string) (norm, scheme string, netPath bool) {
	v = strings.TrimFunc(v, func(r rune) bool { return r <= 0x20 })
	v = strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, v)
scan:
	for i := 0; i < len(v); i++ {
		ch := v[i]
		switch {
		case ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z':
		case i > 0 && (ch >= '0' && ch <= '9' || ch == '+' || ch == '-' || ch == '.'):
		case i > 0 && ch == ':':
			return v, strings.ToLower(v[:i]), false
		default:
			break scan
		}
	}
	netPath = len(v) >= 2 && (v[0] == '/' || v[0] == '\\') && (v[1] == '/' || v[1] == '\\')
	return v, "", netPath
}

func (c *narrChecker) checkLinkURL(a narrAttr, elem string) {
	_, scheme, _ := narrURL(a.value)
	if scheme != "" && !narrLinkSchemes[scheme] {
		c.add(NarrativeRuleTxt1, narrDetailScheme, scheme, a.name, elem)
	}
}

func (c *narrChecker) checkImageURL(a narrAttr, elem string) {
	v, scheme, netPath := narrURL(a.value)
	switch {
	case scheme == "data":
		if !narrDataImage(v) {
			c.add(NarrativeRuleTxt1, narrDetailImgData, a.name, elem)
		}
	case scheme == "http" || scheme == "https" || netPath:
		c.add(NarrativeRuleTxt1, narrDetailImgExternal, a.name, elem)
	case scheme != "":
		c.add(NarrativeRuleTxt1, narrDetailScheme, scheme, a.name, elem)
	}
}

// narrDataImage reports whether a data: URL (already normalised) carries a
// non-SVG image media type.
func narrDataImage(v string) bool {
	mt := strings.ToLower(v[len("data:"):])
	if i := strings.IndexAny(mt, ";,"); i >= 0 {
		mt = mt[:i]
	}
	mt = strings.TrimSpace(mt)
	return strings.HasPrefix(mt, "image/") && len(mt) > len("image/") && !strings.HasPrefix(mt, "image/svg")
}

// narrUnsafeStyle reports whether a style attribute value contains active
// or resource-loading CSS.
func narrUnsafeStyle(style string) bool {
	s := narrNormaliseCSS(style)
	for _, bad := range []string{
		"expression(", "javascript:", "vbscript:", "-moz-binding", "behavior:",
		"behaviour:", "@import", "image-set(", "image(", "src(",
	} {
		if strings.Contains(s, bad) {
			return true
		}
	}
	for rest := s; ; {
		i := strings.Index(rest, "url(")
		if i < 0 {
			return false
		}
		rest = rest[i+len("url("):]
		arg := strings.TrimLeft(rest, "\"'")
		if !strings.HasPrefix(arg, "data:") {
			return true
		}
		end := strings.IndexAny(arg, "\"')")
		if end < 0 {
			end = len(arg)
		}
		if !narrDataImage(arg[:end]) {
			return true
		}
	}
}

// narrNormaliseCSS resolves CSS escapes, drops comments and whitespace and
// lower-cases, so that obfuscated keywords (e.g. "exp\72 ession(" or
// "ex/**/pression(") are found by substring search.
func narrNormaliseCSS(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		ch := s[i]
		switch {
		case ch == '/' && i+1 < len(s) && s[i+1] == '*':
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				i = len(s)
			} else {
				i += end + 4
			}
		case ch == '\\':
			i++
			j, val := i, 0
			for j < len(s) && j-i < 6 && narrDigit(s[j], 16) >= 0 {
				val = val*16 + narrDigit(s[j], 16)
				j++
			}
			if j > i {
				if j < len(s) && narrIsSpace(s[j]) {
					j++
				}
				if val > 0 && val <= 0x10FFFF {
					b.WriteRune(rune(val))
				}
				i = j
			} else if i < len(s) {
				r, size := utf8.DecodeRuneInString(s[i:])
				b.WriteRune(r)
				i += size
			}
		case narrIsSpace(ch) || ch == '\f':
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			b.WriteRune(r)
			i += size
		}
	}
	return strings.ToLower(b.String())
}
