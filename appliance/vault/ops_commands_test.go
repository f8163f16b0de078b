package vault

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

func recordComputer(t *testing.T, v *Vault, id, company string) *Principal {
	t.Helper()
	cp := catalog.Computer{ID: id, Company: company, Name: id, Enrolled: time.Now()}
	if err := v.Catalog.RecordComputer(cp); err != nil {
		t.Fatal(err)
	}
	return agentPrincipal(&caller{Computer: cp})
}

func browseCmd(path string) wire.AgentCommand {
	return wire.AgentCommand{Kind: wire.CmdBrowse, Browse: &wire.BrowseArgs{Path: path}}
}

func poll(t *testing.T, v *Vault, p *Principal, running ...string) []wire.AgentCommand {
	t.Helper()
	b, err := v.PollCommands(context.Background(), p, wire.CommandPoll{Running: running})
	if err != nil {
		t.Fatal(err)
	}
	return b.Commands
}

func wantCmdCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) || ae.code != code {
		t.Errorf("%s: got %v, want %s", what, err, code)
	}
}

// TestCommandDelivery: a queued command is delivered once to a poll; a
// delivered command the next poll does not name as running is delivered
// again, and after MaxCommandAttempts recorded interrupted with a reason;
// a result is kept and a second one changes nothing.
func TestCommandDelivery(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := recordComputer(t, v, "pc-a", "acme")
	q, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/etc"))
	if err != nil {
		t.Fatal(err)
	}
	if q.State != wire.CmdQueued {
		t.Fatalf("new command is %s", q.State)
	}
	for attempt := 1; attempt <= wire.MaxCommandAttempts; attempt++ {
		got := poll(t, v, a)
		if len(got) != 1 || got[0].ID != q.ID || got[0].Attempt != attempt || got[0].Browse.Path != "/etc" {
			t.Fatalf("poll %d delivered %+v", attempt, got)
		}
		if again := poll(t, v, a, q.ID); len(again) != 0 {
			t.Fatalf("a poll naming the running command got it again: %+v", again)
		}
	}
	if got := poll(t, v, a); len(got) != 0 {
		t.Fatalf("delivered a %d-th time: %+v", wire.MaxCommandAttempts+1, got)
	}
	cv, err := v.Command(ctx, operator, "pc-a", q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cv.State != wire.CmdInterrupted || cv.Result == nil || cv.Result.Error == "" {
		t.Fatalf("after %d deliveries: %+v", wire.MaxCommandAttempts, cv)
	}
	if _, err := v.FinishCommand(ctx, a, q.ID, wire.CommandResult{State: wire.CmdDone}); err != nil {
		t.Fatalf("a late result for an interrupted command: %v", err)
	}
	if cv, _ := v.Command(ctx, operator, "pc-a", q.ID); cv.State != wire.CmdInterrupted {
		t.Fatalf("a late result changed an interrupted command to %s", cv.State)
	}
	wantCmdCode(t, "progress of an interrupted command", v.CommandProgress(ctx, a, q.ID, wire.CommandProgress{}), wire.CodeFinished)

	// A command run to its end, with progress on the way.
	q2, err := v.Enqueue(ctx, operator, "pc-a", browseCmd(""))
	if err != nil {
		t.Fatal(err)
	}
	if got := poll(t, v, a); len(got) != 1 || got[0].ID != q2.ID {
		t.Fatalf("poll delivered %+v", got)
	}
	if err := v.CommandProgress(ctx, a, q2.ID, wire.CommandProgress{Files: 3, Bytes: 10}); err != nil {
		t.Fatal(err)
	}
	if cv, _ := v.Command(ctx, operator, "pc-a", q2.ID); cv.Progress == nil || cv.Progress.Files != 3 {
		t.Fatalf("progress not shown: %+v", cv)
	}
	res := wire.CommandResult{State: wire.CmdDone, Browse: &wire.BrowseResult{Entries: []wire.BrowseEntry{{Name: "/", Type: "dir"}}}}
	if _, err := v.FinishCommand(ctx, a, q2.ID, res); err != nil {
		t.Fatal(err)
	}
	if _, err := v.FinishCommand(ctx, a, q2.ID, wire.CommandResult{State: wire.CmdFailed, Error: "late"}); err != nil {
		t.Fatalf("a result sent twice: %v", err)
	}
	cv, err = v.WaitCommand(ctx, operator, "pc-a", q2.ID, time.Second)
	if err != nil || cv.State != wire.CmdDone || cv.Result.Browse == nil || cv.Result.Browse.Entries[0].Name != "/" || cv.Progress != nil {
		t.Fatalf("finished command: %+v %v", cv, err)
	}
	list, err := v.Commands(ctx, operator, "pc-a")
	if err != nil || len(list) != 2 || list[0].ID != q2.ID {
		t.Fatalf("commands, newest first: %+v %v", list, err)
	}
}

// TestCommandLongPoll: a waiting poll returns with a command queued while
// it waits (it would otherwise return empty after its wait); a computer's
// second poll ends its first.
func TestCommandLongPoll(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := recordComputer(t, v, "pc-a", "acme")
	got := make(chan wire.CommandBatch, 1)
	go func() {
		b, _ := v.PollCommands(ctx, a, wire.CommandPoll{WaitMS: wire.MaxCommandWait.Milliseconds()})
		got <- b
	}()
	waitPolls(t, v, 1)
	q, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/"))
	if err != nil {
		t.Fatal(err)
	}
	if b := <-got; len(b.Commands) != 1 || b.Commands[0].ID != q.ID {
		t.Fatalf("the waiting poll returned %+v", b)
	}

	first := make(chan wire.CommandBatch, 1)
	go func() {
		b, _ := v.PollCommands(ctx, a, wire.CommandPoll{Running: []string{q.ID}, WaitMS: wire.MaxCommandWait.Milliseconds()})
		first <- b
	}()
	waitPolls(t, v, 1)
	second := make(chan wire.CommandBatch, 1)
	go func() {
		b, _ := v.PollCommands(ctx, a, wire.CommandPoll{Running: []string{q.ID}, WaitMS: wire.MaxCommandWait.Milliseconds()})
		second <- b
	}()
	if b := <-first; len(b.Commands) != 0 {
		t.Fatalf("the superseded poll delivered %+v", b)
	}
	q2, _ := v.Enqueue(ctx, operator, "pc-a", browseCmd("/"))
	if b := <-second; len(b.Commands) != 1 || b.Commands[0].ID != q2.ID {
		t.Fatalf("the current poll returned %+v", b)
	}
}

func waitPolls(t *testing.T, v *Vault, n int) {
	t.Helper()
	for i := 0; ; i++ {
		v.cmds.mu.Lock()
		w := v.cmds.waiting
		v.cmds.mu.Unlock()
		if w == n {
			return
		}
		if i > 5000 {
			t.Fatalf("%d polls waiting, want %d", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCommandScope: the kind decides the capability (browse is never plain
// view), the principal's company and computers bound it, agents send no
// commands and act only on their own computer's.
func TestCommandScope(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	if err := v.NewCompany("globex"); err != nil {
		t.Fatal(err)
	}
	a := recordComputer(t, v, "pc-a", "acme")
	recordComputer(t, v, "pc-a2", "acme")
	b := recordComputer(t, v, "pc-b", "globex")
	user := func(caps []Capability, computers ...string) *Principal {
		p := &Principal{Kind: User, Name: "user of acme", Company: "acme", Caps: append([]Capability{CapView}, caps...)}
		if len(computers) > 0 {
			p.Computers = computers
		}
		return p
	}
	backup := wire.AgentCommand{Kind: wire.CmdBackup, Backup: &wire.BackupArgs{Config: "home"}}
	restore := wire.AgentCommand{Kind: wire.CmdRestore, Restore: &wire.RestoreArgs{Config: "home", To: "/tmp/r"}}
	cases := []struct {
		who  string
		p    *Principal
		ref  string
		cmd  wire.AgentCommand
		code string // "" allowed
	}{
		{"view only, browse", user(nil), "pc-a", browseCmd("/"), wire.CodeForbidden},
		{"configure, browse", user([]Capability{CapConfigure}), "pc-a", browseCmd("/"), ""},
		{"restore, browse", user([]Capability{CapRestore}), "pc-a", browseCmd("/"), wire.CodeForbidden}, // live files are for configuring
		{"restore, back up now", user([]Capability{CapRestore}), "pc-a", backup, wire.CodeForbidden},
		{"configure, restore", user([]Capability{CapConfigure}), "pc-a", restore, wire.CodeForbidden},
		{"restore, restore", user([]Capability{CapRestore}), "pc-a", restore, ""},
		{"configure, other company's computer", user([]Capability{CapConfigure}), "pc-b", browseCmd("/"), wire.CodeNotFound},
		{"configure, unassigned computer", user([]Capability{CapConfigure}, "pc-a2"), "pc-a", browseCmd("/"), wire.CodeNotFound},
		{"configure, assigned computer", user([]Capability{CapConfigure}, "pc-a2"), "pc-a2", browseCmd("/"), ""},
		{"an agent, its own computer", a, "pc-a", browseCmd("/"), wire.CodeForbidden},
		{"bad path", user([]Capability{CapConfigure}), "pc-a", browseCmd("etc/../x"), wire.CodeBadRequest},
	}
	var ids = map[string]string{}
	for _, c := range cases {
		cv, err := v.Enqueue(ctx, c.p, c.ref, c.cmd)
		if c.code == "" {
			if err != nil {
				t.Errorf("%s: %v", c.who, err)
			}
			ids[c.ref] = cv.ID
			continue
		}
		wantCmdCode(t, c.who, err, c.code)
	}
	// Reading a command back needs the capability to send it.
	_, err := v.Command(ctx, user(nil), "pc-a", ids["pc-a"])
	wantCmdCode(t, "view only reads a browse command", err, wire.CodeForbidden)
	if list, err := v.Commands(ctx, user(nil), "pc-a"); err != nil || len(list) != 0 {
		t.Errorf("view only lists browse and restore commands: %+v %v", list, err)
	}
	// Another computer's agent knows nothing of pc-a's commands.
	got := poll(t, v, a)
	if len(got) == 0 {
		t.Fatal("pc-a got no command")
	}
	_, err = v.FinishCommand(ctx, b, got[0].ID, wire.CommandResult{State: wire.CmdDone})
	wantCmdCode(t, "another company's agent finishes pc-a's command", err, wire.CodeNotFound)
	wantCmdCode(t, "another agent reports progress", v.CommandProgress(ctx, b, got[0].ID, wire.CommandProgress{}), wire.CodeNotFound)
	// A revoked computer takes no commands, and its unfinished ones end.
	if _, err := v.Revoke(ctx, operator, "pc-a2"); err != nil {
		t.Fatal(err)
	}
	for _, cv := range mustCommands(t, v, "pc-a2") {
		if cv.State != wire.CmdInterrupted {
			t.Errorf("a revoked computer's command is %s", cv.State)
		}
	}
	_, err = v.Enqueue(ctx, operator, "pc-a2", browseCmd("/"))
	wantCmdCode(t, "a revoked computer", err, wire.CodeRevoked)
}

// TestCommandBounds: a computer's unfinished commands are bounded (busy
// past it) and a finished one frees its place; the company's bound holds
// across its computers.
func TestCommandBounds(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := recordComputer(t, v, "pc-a", "acme")
	recordComputer(t, v, "pc-a2", "acme")
	for i := 0; i < MaxCommandsPerComputer; i++ {
		if _, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/")); err != nil {
			t.Fatalf("command %d: %v", i+1, err)
		}
	}
	_, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/"))
	wantCmdCode(t, "one past the computer's bound", err, wire.CodeBusy)
	got := poll(t, v, a)
	if len(got) != MaxCommandsPerComputer {
		t.Fatalf("delivered %d of %d", len(got), MaxCommandsPerComputer)
	}
	if _, err := v.FinishCommand(ctx, a, got[0].ID, wire.CommandResult{State: wire.CmdDone}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/")); err != nil {
		t.Fatalf("after one finished: %v", err)
	}

	// The company's bound, through the catalog command (its limit is a
	// parameter of the command).
	mk := func(computer string) catalog.AgentCommand {
		now := time.Now()
		return catalog.AgentCommand{AgentCommand: wire.AgentCommand{ID: catalog.NewAgentCommandID(now), Kind: wire.CmdBrowse,
			Browse: &wire.BrowseArgs{}, Created: now}, Computer: computer, Company: "acme"}
	}
	open := MaxCommandsPerComputer // pc-a's
	if _, err := v.Catalog.EnqueueAgentCommand(mk("pc-a2"), 100, open+1); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog.EnqueueAgentCommand(mk("pc-a2"), 100, open+1); !errors.Is(err, catalog.ErrLimit) {
		t.Fatalf("past the company's bound: %v", err)
	}
}

// TestCommandsSurviveRestart: queued and delivered commands are in the
// catalog: after the vault reopens, the queued one is delivered and the
// delivered one, not named by the agent's poll, is delivered again.
func TestCommandsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := recordComputer(t, v, "pc-a", "acme")
	ctx := context.Background()
	first, _ := v.Enqueue(ctx, operator, "pc-a", browseCmd("/"))
	if got := poll(t, v, a); len(got) != 1 {
		t.Fatalf("delivered %+v", got)
	}
	second, _ := v.Enqueue(ctx, operator, "pc-a", browseCmd("/etc"))
	v.Close()
	v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := poll(t, v, a)
	if len(got) != 2 || got[0].ID != first.ID || got[0].Attempt != 2 || got[1].ID != second.ID || got[1].Attempt != 1 {
		t.Fatalf("after the restart the agent got %+v", got)
	}
}

func mustCommands(t *testing.T, v *Vault, computer string) []CommandView {
	t.Helper()
	list, err := v.Commands(context.Background(), operator, computer)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatalf("%s has no commands", computer)
	}
	return list
}

// TestNudgeOnce: configurations saved while the agent is away queue one
// config_changed command, not one per save.
func TestNudgeOnce(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := recordComputer(t, v, "pc-a", "acme")
	for i := 0; i < 2*MaxCommandsPerComputer; i++ {
		if _, err := v.PutConfigNudge(ctx, operator, "pc-a", wire.Config{Name: "home", Paths: []string{"/home"}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := poll(t, v, a); len(got) != 1 || got[0].Kind != wire.CmdConfigChanged {
		t.Fatalf("after many saves the agent got %+v, want one config_changed", got)
	}
	if _, err := v.Enqueue(ctx, operator, "pc-a", browseCmd("/")); err != nil {
		t.Fatalf("a browse after many saves: %v", err)
	}
}

// TestShutdownEndsPolls: an agent's poll waiting when the vault shuts down
// is answered at once, so Serve returns cleanly instead of waiting out its
// shutdown deadline.
func TestShutdownEndsPolls(t *testing.T) {
	dir := t.TempDir()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.NewCompany("acme")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- v.Serve(ctx, func(a string) { ready <- a }) }()
	addr := <-ready
	sv := &servedVault{Vault: v, dir: dir, addr: addr}
	c, _ := sv.agentClient(t, "acme", "a")
	polled := make(chan int, 1)
	go func() {
		resp, err := c.Post("https://"+addr+wire.PathCommandPoll, "application/json", strings.NewReader(`{"wait_ms":25000}`))
		if err != nil {
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	waitPolls(t, v, 1)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve with a poll waiting: %v", err)
	}
	if st := <-polled; st != 200 {
		t.Errorf("the waiting poll got %d, want 200 (an empty batch)", st)
	}
}
