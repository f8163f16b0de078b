package vault

import (
	"context"
	"errors"
	"hash/fnv"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// The agents' command channel (docs/protocol.md, "Commands"; DESIGN.md):
// the portal (or any caller with the right capability) enqueues a command
// for a computer; the computer's agent long-polls for it, runs it, and
// posts progress and a result. The queue lives in the catalog (catalog
// commands enqueue_agent_command and update_agent_command), so a vault
// restart loses none; the latest progress of each running command is kept
// in memory only.
//
// The Go API for other parts of the vault (the portal's restore pages):
//
//	cmd, err := v.Enqueue(ctx, p, computer, wire.AgentCommand{Kind: wire.CmdRestore, Restore: &wire.RestoreArgs{...}})
//	cmd, err = v.WaitCommand(ctx, p, computer, cmd.ID, 20*time.Second) // until it finishes or the wait passes
//	cmd, err = v.Command(ctx, p, computer, cmd.ID)                     // now: state, progress, result
//	cmds, err := v.Commands(ctx, p, computer)                          // the computer's recent commands

// Bounds of the command queues.
const (
	// MaxCommandsPerComputer and MaxCommandsPerCompany bound the
	// unfinished commands (queued or running) of one computer and of one
	// company: one company cannot fill the vault's catalog or memory.
	MaxCommandsPerComputer = wire.MaxRunningCommands
	MaxCommandsPerCompany  = 1000
	// MaxPolls bounds the polls waiting at once in the whole vault (one
	// per computer: a computer's new poll ends its older one). Past it a
	// poll is answered at once, empty, and the agent polls again later.
	MaxPolls = 20000
)

// CommandView is a command as the portal and the Go API see it: its
// record and, while it runs, the latest progress its agent reported.
type CommandView struct {
	catalog.AgentCommand
	Progress *wire.CommandProgress `json:"progress,omitempty"`
}

// cmdQueue is the vault's in-memory side of the queues: who is waiting
// for what, and the latest progress of running commands.
type cmdQueue struct {
	mu       sync.Mutex
	bells    map[string]chan struct{}        // computer -> closed (and dropped) on any change of its commands
	polls    map[string]uint64               // computer -> generation of its current poll
	waiting  int                             // polls waiting now
	gen      uint64                          // last poll generation handed out
	progress map[string]wire.CommandProgress // computer/id -> latest progress of a running command
	deliver  [64]sync.Mutex                  // by computer: one delivery at a time per computer, so an older and a newer poll never hand out the same command

	maxPolls, maxComputer, maxCompany int // MaxPolls, MaxCommandsPerComputer, MaxCommandsPerCompany

	stopping chan struct{} // closed when the vault shuts down: waits end at once
	stopOnce sync.Once
}

// shutdown ends every waiting poll and WaitCommand (answered as they are).
func (q *cmdQueue) shutdown() { q.stopOnce.Do(func() { close(q.stopping) }) }

func newCmdQueue() *cmdQueue {
	return &cmdQueue{bells: map[string]chan struct{}{}, polls: map[string]uint64{},
		progress: map[string]wire.CommandProgress{},
		maxPolls: MaxPolls, maxComputer: MaxCommandsPerComputer, maxCompany: MaxCommandsPerCompany, stopping: make(chan struct{})}
}

// bell returns the channel closed at the next change of computer's
// commands.
func (q *cmdQueue) bell(computer string) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	ch := q.bells[computer]
	if ch == nil {
		ch = make(chan struct{})
		q.bells[computer] = ch
	}
	return ch
}

// ring tells everyone waiting on computer's commands that they changed.
func (q *cmdQueue) ring(computer string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ch := q.bells[computer]; ch != nil {
		close(ch)
		delete(q.bells, computer)
	}
}

// commandCap is the capability a kind of command needs. Browsing live
// files is for configuring (choosing what to back up): configure_backup,
// never restore or plain view; a restore browses the version on the vault
// (ops_browse.go), not the computer's live files.
func commandCap(kind string) Capability {
	switch kind {
	case wire.CmdRestore, wire.CmdCompare:
		return CapRestore
	}
	return CapConfigure
}

func mayCommand(p *Principal, kind string) bool { return p.Has(commandCap(kind)) }

// commandComputer finds the computer ref that p may send a command of
// kind to (or read such a command of).
func (v *Vault) commandComputer(p *Principal, kind, ref string) (catalog.Computer, error) {
	need := commandCap(kind)
	if p.Kind == Agent {
		return catalog.Computer{}, fail(http.StatusForbidden, wire.CodeForbidden, "%s is a computer: commands are sent to agents, not by them", p)
	}
	if !mayCommand(p, kind) {
		return catalog.Computer{}, forbid(p, need)
	}
	return v.computerFor(p, need, ref)
}

// Enqueue adds a command for the computer ref and wakes its agent's poll.
// The kind decides the capability: browse, backup and config_changed configure_backup; restore and compare
// restore. A queue at its bound answers busy.
func (v *Vault) Enqueue(ctx context.Context, p *Principal, ref string, cmd wire.AgentCommand) (CommandView, error) {
	cp, err := v.commandComputer(p, cmd.Kind, ref)
	if err != nil {
		return CommandView{}, err
	}
	if cp.Revoked != nil {
		return CommandView{}, fail(http.StatusConflict, wire.CodeRevoked, "computer %s is revoked: it takes no commands", cp.ID)
	}
	now := v.clk.Now()
	cmd.ID, cmd.Attempt, cmd.Created = catalog.NewAgentCommandID(now), 0, now
	if err := wire.CheckCommand(&cmd); err != nil {
		return CommandView{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	if cmd.Kind == wire.CmdBackup { // restore and compare may name a deleted configuration's versions
		if _, err := v.Catalog.Config(cp.ID, cmd.Backup.Config); err != nil {
			return CommandView{}, catalogErr(err)
		}
	}
	rec, err := v.Catalog.EnqueueAgentCommand(catalog.AgentCommand{AgentCommand: cmd, Computer: cp.ID, Company: cp.Company, By: p.String()},
		v.cmds.maxComputer, v.cmds.maxCompany)
	if errors.Is(err, catalog.ErrLimit) {
		return CommandView{}, &apiError{status: http.StatusServiceUnavailable, code: wire.CodeBusy, retryAfter: 10 * time.Second, msg: err.Error()}
	}
	if err != nil {
		return CommandView{}, catalogErr(err)
	}
	v.log.Info("command queued", zap.String("computer", cp.ID), zap.String("id", rec.ID), zap.String("kind", rec.Kind), zap.String("by", p.String()))
	v.cmds.ring(cp.ID)
	return CommandView{AgentCommand: rec}, nil
}

// Command returns one command of the computer ref, with its progress.
func (v *Vault) Command(ctx context.Context, p *Principal, ref, id string) (CommandView, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return CommandView{}, err
	}
	rec, err := v.Catalog.AgentCommand(cp.ID, id)
	if err != nil {
		return CommandView{}, catalogErr(err)
	}
	if _, err := v.commandComputer(p, rec.Kind, cp.ID); err != nil {
		return CommandView{}, err
	}
	return v.view(rec), nil
}

func (v *Vault) view(rec catalog.AgentCommand) CommandView {
	out := CommandView{AgentCommand: rec}
	if rec.State == wire.CmdRunning {
		v.cmds.mu.Lock()
		if pr, ok := v.cmds.progress[rec.Computer+"/"+rec.ID]; ok {
			out.Progress = &pr
		}
		v.cmds.mu.Unlock()
	}
	return out
}

// WaitCommand returns the command id of the computer ref once it has
// finished, or as it is when wait (at most wire.MaxCommandWait) passes or
// ctx ends.
func (v *Vault) WaitCommand(ctx context.Context, p *Principal, ref, id string, wait time.Duration) (CommandView, error) {
	wait = min(max(wait, 0), wire.MaxCommandWait)
	cv, err := v.Command(ctx, p, ref, id)
	if err != nil || cv.Finished() || wait == 0 {
		return cv, err
	}
	t := v.clk.NewTimer(wait)
	defer t.Stop()
	for {
		bell := v.cmds.bell(cv.Computer)
		// Read again after taking the bell: a change between the read and
		// the bell would otherwise be missed.
		if cv, err = v.Command(ctx, p, ref, id); err != nil || cv.Finished() {
			return cv, err
		}
		select {
		case <-bell:
		case <-t.C():
			return cv, nil
		case <-ctx.Done():
			return cv, nil
		case <-v.cmds.stopping:
			return cv, nil
		}
	}
}

// Commands lists the recent commands of the computer ref that p may read
// (the kinds it may send), newest first.
func (v *Vault) Commands(ctx context.Context, p *Principal, ref string) ([]CommandView, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return nil, err
	}
	recs, err := v.Catalog.AgentCommands(cp.ID)
	if err != nil {
		return nil, err
	}
	out := []CommandView{}
	for _, rec := range slices.Backward(recs) {
		if mayCommand(p, rec.Kind) {
			out = append(out, v.view(rec))
		}
	}
	return out, nil
}

// PollCommands is an agent's long-poll: it returns the commands to run,
// waiting up to poll.WaitMS (at most wire.MaxCommandWait) for one. A
// command the vault delivered before that the poll does not name as
// running was lost on the way or with an agent's restart: it is delivered
// again, or after wire.MaxCommandAttempts deliveries recorded as
// interrupted.
func (v *Vault) PollCommands(ctx context.Context, p *Principal, poll wire.CommandPoll) (wire.CommandBatch, error) {
	c, err := self(p, CapBackup)
	if err != nil {
		return wire.CommandBatch{}, err
	}
	if len(poll.Running) > wire.MaxRunningCommands {
		return wire.CommandBatch{}, fail(http.StatusBadRequest, wire.CodeLimit, "a poll names %d running commands, over the limit of %d", len(poll.Running), wire.MaxRunningCommands)
	}
	wait := min(max(time.Duration(poll.WaitMS)*time.Millisecond, 0), wire.MaxCommandWait)
	q := v.cmds
	q.mu.Lock()
	if q.waiting >= q.maxPolls {
		wait = 0
	}
	q.gen++
	gen := q.gen
	q.polls[c.ID] = gen
	q.waiting++
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.waiting--
		if q.polls[c.ID] == gen {
			delete(q.polls, c.ID)
		}
		q.mu.Unlock()
	}()
	q.ring(c.ID) // an older poll of this computer ends (its connection may be gone)
	t := v.clk.NewTimer(wait)
	defer t.Stop()
	for {
		bell := q.bell(c.ID)
		q.mu.Lock()
		current := q.polls[c.ID] == gen
		q.mu.Unlock()
		if !current {
			return wire.CommandBatch{Commands: []wire.AgentCommand{}}, nil // a newer poll took over
		}
		out, err := v.deliver(c, poll.Running)
		if err != nil || len(out) > 0 || wait == 0 {
			return wire.CommandBatch{Commands: out}, err
		}
		select {
		case <-bell:
		case <-t.C():
			return wire.CommandBatch{Commands: []wire.AgentCommand{}}, nil
		case <-ctx.Done():
			return wire.CommandBatch{Commands: []wire.AgentCommand{}}, nil
		case <-q.stopping:
			return wire.CommandBatch{Commands: []wire.AgentCommand{}}, nil
		}
	}
}

// deliver moves c's queued commands, and its running ones the agent no
// longer runs, to running (or interrupted) and returns those to run.
func (v *Vault) deliver(c *caller, running []string) ([]wire.AgentCommand, error) {
	q := v.cmds
	h := fnv.New32a()
	h.Write([]byte(c.ID))
	mu := &q.deliver[h.Sum32()%uint32(len(q.deliver))]
	mu.Lock()
	defer mu.Unlock()
	recs, err := v.Catalog.AgentCommands(c.ID)
	if err != nil {
		return nil, err
	}
	var out []wire.AgentCommand
	changed := false
	for _, rec := range recs {
		if rec.State == wire.CmdRunning && slices.Contains(running, rec.ID) {
			continue
		}
		if rec.State != wire.CmdQueued && rec.State != wire.CmdRunning {
			continue
		}
		u := catalog.UpdateAgentCmd{Computer: c.ID, ID: rec.ID, From: []string{rec.State}, State: wire.CmdRunning,
			Attempt: rec.Attempt + 1, Time: v.clk.Now()}
		if rec.Attempt >= wire.MaxCommandAttempts {
			u.State, u.Attempt = wire.CmdInterrupted, rec.Attempt
			u.Result = &wire.CommandResult{State: wire.CmdInterrupted,
				Error: "the agent did not finish the command after " + strconv.Itoa(rec.Attempt) + " deliveries (restarts or lost connections): send it again"}
		} else if len(out) >= wire.MaxRunningCommands-len(running) {
			continue // the agent runs enough: later
		}
		upd, err := v.Catalog.UpdateAgentCommand(u)
		if errors.Is(err, catalog.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		changed = true
		if upd.State == wire.CmdRunning {
			if rec.State == wire.CmdRunning {
				v.log.Warn("command delivered again: the agent no longer runs it", zap.String("computer", c.ID), zap.String("id", rec.ID), zap.Int("attempt", upd.Attempt))
			}
			out = append(out, upd.AgentCommand)
		} else {
			v.log.Warn("command interrupted", zap.String("computer", c.ID), zap.String("id", rec.ID))
			v.dropProgress(c.ID, rec.ID)
		}
	}
	if changed {
		v.cmds.ring(c.ID)
	}
	return out, nil
}

func (v *Vault) dropProgress(computer, id string) {
	v.cmds.mu.Lock()
	delete(v.cmds.progress, computer+"/"+id)
	v.cmds.mu.Unlock()
}

// running is the running command id of the agent p, or a not-found refusal.
func (v *Vault) running(p *Principal, id string) (*caller, catalog.AgentCommand, error) {
	c, err := self(p, CapBackup)
	if err != nil {
		return nil, catalog.AgentCommand{}, err
	}
	rec, err := v.Catalog.AgentCommand(c.ID, id)
	if err != nil {
		return nil, rec, catalogErr(err)
	}
	return c, rec, nil
}

// CommandProgress records the latest progress of a running command of the
// agent p (in memory).
func (v *Vault) CommandProgress(ctx context.Context, p *Principal, id string, pr wire.CommandProgress) error {
	c, rec, err := v.running(p, id)
	if err != nil {
		return err
	}
	if rec.State != wire.CmdRunning {
		return fail(http.StatusConflict, wire.CodeFinished, "command %s is %s: stop it", id, rec.State)
	}
	if len(pr.Message) > wire.MaxCommandText {
		pr.Message = pr.Message[:wire.MaxCommandText]
	}
	pr.Time = v.clk.Now()
	v.cmds.mu.Lock()
	v.cmds.progress[c.ID+"/"+id] = pr
	v.cmds.mu.Unlock()
	v.cmds.ring(c.ID)
	return nil
}

// FinishCommand records the result of a command of the agent p. A result
// for a command already finished (sent again after a lost answer) is
// accepted and changes nothing.
func (v *Vault) FinishCommand(ctx context.Context, p *Principal, id string, res wire.CommandResult) (catalog.AgentCommand, error) {
	c, rec, err := v.running(p, id)
	if err != nil {
		return rec, err
	}
	if rec.Finished() {
		return rec, nil
	}
	if res.State != wire.CmdDone && res.State != wire.CmdFailed {
		return rec, fail(http.StatusBadRequest, wire.CodeBadRequest, "result state %q: want %s or %s", res.State, wire.CmdDone, wire.CmdFailed)
	}
	if len(res.Failures) > wire.MaxCommandFailures {
		return rec, fail(http.StatusBadRequest, wire.CodeLimit, "result lists %d failures, over the limit of %d (count the others in failed_count)", len(res.Failures), wire.MaxCommandFailures)
	}
	upd, err := v.Catalog.UpdateAgentCommand(catalog.UpdateAgentCmd{Computer: c.ID, ID: id, From: []string{wire.CmdRunning, wire.CmdQueued},
		State: res.State, Attempt: rec.Attempt, Time: v.clk.Now(), Result: &res})
	if errors.Is(err, catalog.ErrConflict) {
		return upd, nil // finished meanwhile
	}
	if err != nil {
		return upd, catalogErr(err)
	}
	v.dropProgress(c.ID, id)
	v.cmds.ring(c.ID)
	v.log.Info("command finished", zap.String("computer", c.ID), zap.String("id", id), zap.String("kind", upd.Kind), zap.String("state", upd.State))
	return upd, nil
}

// PutConfigNudge saves a configuration (PutConfig) and tells the agent to
// fetch it now rather than at its next poll.
func (v *Vault) PutConfigNudge(ctx context.Context, p *Principal, ref string, cfg wire.Config) (wire.Config, error) {
	out, err := v.PutConfig(ctx, p, ref, cfg)
	if err != nil {
		return out, err
	}
	v.nudge(ctx, p, ref)
	return out, nil
}

// nudge queues a config_changed command for the computer ref; the agent
// picks the change up at its next poll anyway, so a full queue is only
// logged.
func (v *Vault) nudge(ctx context.Context, p *Principal, ref string) {
	// One queued nudge is enough: saves made while the agent is away do
	// not fill its queue.
	if cp, err := v.computerFor(p, CapConfigure, ref); err == nil {
		if recs, err := v.Catalog.AgentCommands(cp.ID); err == nil && slices.ContainsFunc(recs, func(c catalog.AgentCommand) bool {
			return c.Kind == wire.CmdConfigChanged && c.State == wire.CmdQueued
		}) {
			return
		}
	}
	if _, err := v.Enqueue(ctx, p, ref, wire.AgentCommand{Kind: wire.CmdConfigChanged}); err != nil {
		v.log.Info("configuration saved; the agent is not nudged and takes it at its next poll", zap.String("computer", ref), zap.Error(err))
	}
}

// interruptCommands ends the unfinished commands of a computer that will
// never poll again (revoked), so they leave its company's count.
func (v *Vault) interruptCommands(computer, why string) error {
	recs, err := v.Catalog.AgentCommands(computer)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if rec.Finished() {
			continue
		}
		_, err := v.Catalog.UpdateAgentCommand(catalog.UpdateAgentCmd{Computer: computer, ID: rec.ID, From: []string{wire.CmdQueued, wire.CmdRunning},
			State: wire.CmdInterrupted, Attempt: rec.Attempt, Time: v.clk.Now(), Result: &wire.CommandResult{State: wire.CmdInterrupted, Error: why}})
		if err != nil && !errors.Is(err, catalog.ErrConflict) {
			return err
		}
		v.dropProgress(computer, rec.ID)
	}
	v.cmds.ring(computer)
	return nil
}
