package catalog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// The agents' command queues (docs/protocol.md, "Commands"): a vault
// restart loses none, since every enqueue, delivery and result is a
// catalog command. Progress reports are not kept here (the vault holds the
// latest in memory): they come every few seconds and say nothing a
// result does not.

var (
	bAgentCmds    = []byte("agent_commands")      // computer id / command id: AgentCommand
	bAgentCmdOpen = []byte("agent_commands_open") // company: u64 BE count of unfinished commands
)

// Commands of the queues.
const (
	KindEnqueueAgentCmd Kind = "enqueue_agent_command"
	KindUpdateAgentCmd  Kind = "update_agent_command"
)

// MaxFinishedAgentCmds is how many finished commands a computer keeps; an
// enqueue drops the oldest beyond it.
const MaxFinishedAgentCmds = 32

// AgentCommand is a command in a computer's queue, with its state.
type AgentCommand struct {
	wire.AgentCommand
	Computer string              `json:"computer"`
	Company  string              `json:"company"`
	By       string              `json:"by"` // the principal who asked
	State    string              `json:"state"`
	Updated  time.Time           `json:"updated"`
	Result   *wire.CommandResult `json:"result,omitempty"`
}

// Finished reports whether the command has ended.
func (c AgentCommand) Finished() bool {
	return c.State != wire.CmdQueued && c.State != wire.CmdRunning
}

// Payloads of the queue commands.
type (
	// EnqueueAgentCmd adds a command unless the computer already has
	// MaxComputer unfinished ones or its company MaxCompany (ErrLimit).
	EnqueueAgentCmd struct {
		Command     AgentCommand `json:"command"`
		MaxComputer int          `json:"max_computer"`
		MaxCompany  int          `json:"max_company"`
	}
	// UpdateAgentCmd moves a command from one of From to State (with its
	// attempt count and result); it fails with ErrConflict when the
	// command is in none of From.
	UpdateAgentCmd struct {
		Computer string              `json:"computer"`
		ID       string              `json:"id"`
		From     []string            `json:"from"`
		State    string              `json:"state"`
		Attempt  int                 `json:"attempt"`
		Time     time.Time           `json:"time"`
		Result   *wire.CommandResult `json:"result,omitempty"`
	}
)

// ErrLimit refuses a command past a queue's bound.
var ErrLimit = fmt.Errorf("%w: queue full", ErrInvalid)

func init() {
	appliers[KindEnqueueAgentCmd] = typed(applyEnqueueAgentCmd)
	appliers[KindUpdateAgentCmd] = typed(applyUpdateAgentCmd)
}

func agentCmdKey(computer, id string) []byte { return []byte(computer + "/" + id) }

func cmdBuckets(tx *bbolt.Tx) (cmds, open *bbolt.Bucket, err error) {
	if cmds, err = tx.CreateBucketIfNotExists(bAgentCmds); err != nil {
		return nil, nil, err
	}
	open, err = tx.CreateBucketIfNotExists(bAgentCmdOpen)
	return cmds, open, err
}

func openCount(open *bbolt.Bucket, company string) uint64 {
	if v := open.Get([]byte(company)); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func setOpenCount(open *bbolt.Bucket, company string, n uint64) error {
	return open.Put([]byte(company), binary.BigEndian.AppendUint64(nil, n))
}

func applyEnqueueAgentCmd(c *Catalog, tx *bbolt.Tx, p EnqueueAgentCmd) (any, error) {
	cmd := p.Command
	if err := ValidComputerID(cmd.Computer); err != nil {
		return nil, err
	}
	if cmd.ID == "" || len(cmd.ID) > 64 || bytes.ContainsAny([]byte(cmd.ID), "/\x00") {
		return nil, fmt.Errorf("%w: command id %q", ErrInvalid, cmd.ID)
	}
	if err := wire.CheckCommand(&cmd.AgentCommand); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	cp, err := getComputer(tx, cmd.Computer)
	if err != nil {
		return nil, fmt.Errorf("computer %q: %w", cmd.Computer, err)
	}
	if cp.Company != cmd.Company {
		return nil, fmt.Errorf("%w: command for computer %s of %q names company %q", ErrInvalid, cp.ID, cp.Company, cmd.Company)
	}
	b, open, err := cmdBuckets(tx)
	if err != nil {
		return nil, err
	}
	k := agentCmdKey(cmd.Computer, cmd.ID)
	if b.Get(k) != nil {
		return nil, fmt.Errorf("command %s: %w", cmd.ID, ErrExists)
	}
	var unfinished int
	var finished [][]byte
	cur := b.Cursor()
	prefix := []byte(cmd.Computer + "/")
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		var old AgentCommand
		if err := decodeJSON(bAgentCmds, k, v, &old); err != nil {
			finished = append(finished, bytes.Clone(k)) // damaged: dropped with the finished ones
			continue
		}
		if old.Finished() {
			finished = append(finished, bytes.Clone(k))
		} else {
			unfinished++
		}
	}
	if p.MaxComputer > 0 && unfinished >= p.MaxComputer {
		return nil, fmt.Errorf("%w: computer %s has %d unfinished commands, the limit: wait for them to finish", ErrLimit, cp.ID, unfinished)
	}
	n := openCount(open, cmd.Company)
	if p.MaxCompany > 0 && n >= uint64(p.MaxCompany) {
		return nil, fmt.Errorf("%w: company %s has %d unfinished commands, the limit: wait for them to finish", ErrLimit, cmd.Company, n)
	}
	// Ids grow with time (NewAgentCommandID), so the first keys are the
	// oldest.
	for len(finished) >= MaxFinishedAgentCmds {
		if err := b.Delete(finished[0]); err != nil {
			return nil, err
		}
		finished = finished[1:]
	}
	cmd.State, cmd.Updated, cmd.Result = wire.CmdQueued, cmd.Created, nil
	if err := setOpenCount(open, cmd.Company, n+1); err != nil {
		return nil, err
	}
	return cmd, put(b, bAgentCmds, k, cmd)
}

func applyUpdateAgentCmd(c *Catalog, tx *bbolt.Tx, p UpdateAgentCmd) (any, error) {
	b, open, err := cmdBuckets(tx)
	if err != nil {
		return nil, err
	}
	k := agentCmdKey(p.Computer, p.ID)
	v := b.Get(k)
	if v == nil {
		return nil, fmt.Errorf("command %s of computer %s: %w", p.ID, p.Computer, ErrNotFound)
	}
	var cmd AgentCommand
	if err := decodeJSON(bAgentCmds, k, v, &cmd); err != nil {
		return nil, err
	}
	if !slices.Contains(p.From, cmd.State) {
		return cmd, fmt.Errorf("command %s is %s: %w", p.ID, cmd.State, ErrConflict)
	}
	switch p.State {
	case wire.CmdQueued, wire.CmdRunning, wire.CmdDone, wire.CmdFailed, wire.CmdInterrupted:
	default:
		return nil, fmt.Errorf("%w: command state %q", ErrInvalid, p.State)
	}
	was := cmd.Finished()
	cmd.State, cmd.Attempt, cmd.Updated = p.State, p.Attempt, p.Time
	if p.Result != nil {
		cmd.Result = p.Result
	}
	if !was && cmd.Finished() {
		if n := openCount(open, cmd.Company); n > 0 {
			if err := setOpenCount(open, cmd.Company, n-1); err != nil {
				return nil, err
			}
		}
	}
	return cmd, put(b, bAgentCmds, k, cmd)
}

// NewAgentCommandID returns an id that sorts after the ids made before it
// (the time, then randomness).
func NewAgentCommandID(now time.Time) string {
	return fmt.Sprintf("%016x", uint64(now.UnixNano())) + NewComputerID()[3:11]
}

// EnqueueAgentCommand adds cmd (its ID, Computer, Company and Created made
// by the caller) to its computer's queue within the bounds.
func (c *Catalog) EnqueueAgentCommand(cmd AgentCommand, maxComputer, maxCompany int) (AgentCommand, error) {
	res, err := c.apply(KindEnqueueAgentCmd, EnqueueAgentCmd{Command: cmd, MaxComputer: maxComputer, MaxCompany: maxCompany})
	if err != nil {
		return cmd, err
	}
	return res.(AgentCommand), nil
}

// UpdateAgentCommand applies u and returns the command as it is now.
func (c *Catalog) UpdateAgentCommand(u UpdateAgentCmd) (AgentCommand, error) {
	res, err := c.apply(KindUpdateAgentCmd, u)
	if err != nil {
		return AgentCommand{}, err
	}
	return res.(AgentCommand), nil
}

// AgentCommand returns one command of a computer.
func (c *Catalog) AgentCommand(computer, id string) (AgentCommand, error) {
	var cmd AgentCommand
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bAgentCmds)
		var v []byte
		if b != nil {
			v = b.Get(agentCmdKey(computer, id))
		}
		if v == nil {
			return fmt.Errorf("command %s: %w", id, ErrNotFound)
		}
		return decodeJSON(bAgentCmds, agentCmdKey(computer, id), v, &cmd)
	})
	return cmd, err
}

// AgentCommands lists a computer's commands, oldest first.
func (c *Catalog) AgentCommands(computer string) ([]AgentCommand, error) {
	var out []AgentCommand
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bAgentCmds)
		if b == nil {
			return nil
		}
		prefix := []byte(computer + "/")
		cur := b.Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			var cmd AgentCommand
			if err := decodeJSON(bAgentCmds, k, v, &cmd); err != nil {
				c.skip(err)
				continue
			}
			out = append(out, cmd)
		}
		return nil
	})
	return out, err
}
