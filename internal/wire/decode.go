package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"

	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
)

// Limits of what agent and vault decode from each other, beside the
// request limits above and the listing limits of internal/tree
// (docs/protocol.md, "Limits"). A decoder that refuses an input for one of
// them returns an error wrapping limit.ErrExceeded that names it; the vault
// answers CodeLimit.
const (
	// MaxAnswer bounds a JSON answer the agent reads (identity,
	// configurations, sessions, settings, commits): they hold a few
	// configurations.
	MaxAnswer = 1 << 20
	// MaxListAnswer bounds the answers that grow with a configuration's
	// history, the versions and journal lists (each manifest carries its
	// listing's references, about 130 bytes each in JSON): 1,000 versions
	// of a listing of 1,000 chunks.
	MaxListAnswer = 128 << 20
	// MaxJSONDepth bounds the nesting of arrays and objects in any JSON
	// message (the deepest, a versions answer, nests 6).
	MaxJSONDepth = 16
	// MaxFramePayload bounds a frame's payload on the wire: a chunk of
	// MaxPlain that zstd could not shrink, with zstd's worst-case overhead.
	MaxFramePayload = MaxPlain + MaxPlain/64 + 1024
	// MaxReason bounds the reason a download frame of status damaged
	// carries; the agent cuts a longer one.
	MaxReason = 1024
	// MaxTokenLen bounds an enrolment token as typed (the token is 75
	// characters).
	MaxTokenLen = 256
	// MaxManifestBytes bounds an encoded manifest: MaxListingRefs
	// references of 42 bytes and a few names and counters.
	MaxManifestBytes = 1 << 20
	// MaxManifestName bounds the company, computer and configuration names
	// in a manifest (the catalog allows 64 bytes at most).
	MaxManifestName = 64
)

// CodeLimit answers a request that broke one of the documented limits;
// the message names the limit (e.g. "tree.MaxPathLen").
const CodeLimit = "over_limit"

// ErrJSON is wrapped by every JSON decoding error that is not a limit.
var ErrJSON = errors.New("malformed JSON")

// DecodeJSON reads one JSON value of at most max bytes (the limit named
// name, e.g. "wire.MaxJSONBody") from r into v, and nothing after it but
// white space. Strict refuses unknown fields (the vault reading an agent);
// an agent reading a vault's answer ignores them, so a newer vault can add
// fields. It holds the raw value (at most max bytes) while decoding.
func DecodeJSON(r io.Reader, max int64, name string, v any, strict bool) error {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return fmt.Errorf("read JSON: %w", err)
	}
	if err := limit.Check(name, "JSON bytes", uint64(len(b)), uint64(max)); err != nil {
		return err
	}
	return UnmarshalJSON(b, v, strict)
}

// UnmarshalJSON decodes b as DecodeJSON does; len(b) is the caller's to
// bound.
func UnmarshalJSON(b []byte, v any, strict bool) error {
	if err := checkJSONDepth(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrJSON, err)
	}
	if dec.InputOffset() != int64(len(bytes.TrimRight(b, " \t\r\n"))) {
		return fmt.Errorf("%w: data after the value at byte %d", ErrJSON, dec.InputOffset())
	}
	return nil
}

// checkJSONDepth refuses arrays and objects nested deeper than MaxJSONDepth.
func checkJSONDepth(b []byte) error {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			if depth > MaxJSONDepth {
				return limit.New("wire.MaxJSONDepth", "JSON nesting depth", uint64(depth), MaxJSONDepth)
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return nil
}

// ErrManifest is wrapped by every manifest decoding error.
var ErrManifest = errors.New("malformed manifest")

var manifestDec cbor.DecMode

func init() {
	var err error
	manifestDec, err = cbor.DecOptions{
		MaxArrayElements:  tree.MaxListingRefs,
		MaxMapPairs:       16, // the library's least; a manifest has 9 fields
		MaxNestedLevels:   4,  // manifest, listing, reference, (id)
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// DecodeManifest decodes a manifest as stored in a pack (kind 3), within
// its limits: MaxManifestBytes, MaxManifestName, and the listing limits of
// its references (tree.CheckRefs).
func DecodeManifest(b []byte) (*Manifest, error) {
	if err := limit.Check("wire.MaxManifestBytes", "manifest bytes", uint64(len(b)), MaxManifestBytes); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	var m Manifest
	if err := manifestDec.Unmarshal(b, &m); err != nil {
		var me *cbor.MaxArrayElementsError
		if errors.As(err, &me) {
			err = limit.New("tree.MaxListingRefs", "manifest listing references", uint64(tree.MaxListingRefs)+1, tree.MaxListingRefs)
		}
		return nil, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if m.Magic != ManifestMagic {
		return nil, fmt.Errorf("%w: magic %.40q, want %q", ErrManifest, m.Magic, ManifestMagic)
	}
	for _, f := range []struct{ what, s string }{{"company", m.Company}, {"computer", m.Computer}, {"configuration", m.Config}} {
		if err := limit.Check("wire.MaxManifestName", f.what+" name length", uint64(len(f.s)), MaxManifestName); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrManifest, err)
		}
	}
	if len(m.Listing) > 0 { // an empty listing is never committed, but says nothing hostile
		if err := tree.CheckRefs(m.Listing); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrManifest, err)
		}
	}
	return &m, nil
}
