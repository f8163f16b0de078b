package meta

import (
	"bytes"
	"testing"
)

func FuzzParseACL(f *testing.F) {
	f.Add(EncodeACL([]ACLEntry{{Tag: ACLUserObj, Perm: 6}, {Tag: ACLUser, Perm: 5, ID: 65534}, {Tag: ACLGroupObj, Perm: 4}, {Tag: ACLMask, Perm: 5}, {Tag: ACLOther, Perm: 4}}))
	f.Add([]byte{2, 0, 0, 0})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := ParseACL(b)
		if err != nil {
			return
		}
		enc := EncodeACL(es)
		es2, err := ParseACL(enc)
		if err != nil || !bytes.Equal(EncodeACL(es2), enc) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
		_ = ACLText(b)
	})
}

func FuzzParseACLText(f *testing.F) {
	f.Add("user::rw-,user:65534:r-x,group::r--,mask::r-x,other::r--")
	f.Add("other::---")
	f.Fuzz(func(t *testing.T, s string) {
		es, err := ParseACLText(s)
		if err != nil {
			return
		}
		back, err := ParseACLText(ACLText(EncodeACL(es)))
		if err != nil || !bytes.Equal(EncodeACL(back), EncodeACL(es)) {
			t.Fatalf("%q does not round trip through ACLText: %v", s, err)
		}
	})
}
