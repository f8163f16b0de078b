package firmware

import (
	"fmt"
	"strings"
	"time"
)

// pairText is the status screen's pair section, read from vaultd's admin
// socket (GET /admin/pair, docs/pair.md): this member's role, the leader,
// the term and log index, and each member's lag; "" when vaultd does not
// answer or is a single vault.
func pairText(dataDir string) string {
	var st struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Leader  string `json:"leader"`
		Term    uint64 `json:"term"`
		Last    uint64 `json:"last_index"`
		Commit  uint64 `json:"commit_index"`
		Applied uint64 `json:"applied_index"`
		Members []struct {
			ID          string `json:"id"`
			Witness     bool   `json:"witness"`
			Voter       bool   `json:"voter"`
			LagCommands int64  `json:"lag_commands"`
			LagBytes    int64  `json:"lag_bytes"`
			Contact     string `json:"last_contact"`
		} `json:"members"`
		Behind []struct {
			Member string    `json:"member"`
			Since  time.Time `json:"since"`
			Reason string    `json:"reason"`
		} `json:"behind"`
	}
	// vaultd asks each other member for its status (3 s at most each).
	if !adminGet(dataDir, "/admin/pair", 8*time.Second, &st) || st.ID == "" {
		return ""
	}
	var b strings.Builder
	leader := st.Leader
	if leader == "" {
		leader = "none known"
	}
	fmt.Fprintf(&b, "pair: member %s, %s; leader %s, term %d, log index %d (commit %d, applied %d)\n",
		st.ID, strings.ToLower(st.State), leader, st.Term, st.Last, st.Commit, st.Applied)
	for _, m := range st.Members {
		role := "data"
		if m.Witness {
			role = "witness"
		}
		if !m.Voter {
			role += ", not voting yet"
		}
		lag := "lag unknown"
		if m.LagCommands >= 0 {
			lag = fmt.Sprintf("lag %d entries", m.LagCommands)
			if !m.Witness {
				lag += fmt.Sprintf(", %d MiB", m.LagBytes>>20)
			}
		}
		contact := m.Contact
		if m.ID == st.ID {
			contact = "this member"
		} else if strings.HasPrefix(contact, "unreachable") {
			contact = "UNREACHABLE"
		}
		if m.ID == st.Leader {
			role += ", leader"
		}
		fmt.Fprintf(&b, "  %-10s %-28s %-26s %s\n", m.ID, role, lag, contact)
	}
	for _, bh := range st.Behind {
		fmt.Fprintf(&b, "  ! %s is behind since %s (%s): the catch-up job copies what it lacks\n", bh.Member, bh.Since.UTC().Format("2006-01-02 15:04"), bh.Reason)
	}
	return b.String()
}
