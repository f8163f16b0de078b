package main

import (
	"testing"

	"vaultnode/agentkit/treediff"
	"vaultnode/internal/testtree"
)

func TestJudge(t *testing.T) {
	man := testtree.Manifest{Made: []string{testtree.CaseRegular, testtree.CaseFlags, testtree.CaseSocket}}
	diffs := []treediff.Difference{
		{Path: []byte("flags/nodump"), Field: "flags", Want: "d", Got: "-"},
		{Path: []byte("regular/one"), Field: "xattr user.a", Want: "x", Got: "absent"},
		{Path: []byte("socket/listener.sock"), Field: "missing", Want: "socket", Got: "nothing"},
	}
	tool := &ToolRun{Name: "x", restored: "/somewhere", diffs: diffs, SocketRecorded: true}
	tests := []struct {
		p    property
		want string
		n    int
	}{
		{property{"flags", []string{testtree.CaseFlags}, []string{"flags"}, nil}, "lost", 1},
		{property{"flags elsewhere", []string{testtree.CaseRegular}, []string{"flags"}, nil}, "kept", 0},
		{property{"user xattrs", nil, []string{"xattr user."}, nil}, "lost", 1},
		{property{"trusted xattrs", nil, []string{"xattr trusted."}, nil}, "kept", 0},
		{property{"sockets", []string{testtree.CaseSocket}, []string{"missing", "type"}, nil}, "recorded, not recreated", 1},
		{property{"nothing missing", nil, []string{"missing", "extra"}, []string{testtree.CaseSocket}}, "kept", 0},
		{property{"devices", []string{testtree.CaseDevices}, nil, nil}, "not tested", 0},
		{property{"any in regular", []string{testtree.CaseRegular}, nil, nil}, "lost", 1},
	}
	for _, tc := range tests {
		got := judge(tc.p, tool, man)
		if got.State != tc.want || got.Differences != tc.n {
			t.Errorf("%s: %+v, want %s with %d differences", tc.p.name, got, tc.want, tc.n)
		}
	}
	if got := judge(tests[0].p, &ToolRun{Name: "y", BackupError: "boom"}, man); got.State != "lost" {
		t.Errorf("a tool without a restore: %+v", got)
	}
}
