package backup

import (
	"fmt"

	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
)

// fitLimits makes a node the listing Writer refused for a limit (err)
// writable: a vault refuses a listing with a node over the limits
// (internal/tree/limits.go), so one odd object must not fail every backup.
// A path over tree.MaxPathLen cannot be recorded: skip reports that the
// node (and so everything below it, whose paths are longer still) is left
// out. Over-long user or group names, which are hints beside the ids, are
// dropped. Anything else (too many chunks, extents or xattrs, an xattr or
// target too long) makes the node unreadable with the reason, without its
// content and attributes, so the version says it is not fully protected.
// The returned problem says what was done.
func fitLimits(n *tree.Node, err error) (skip bool, problem string) {
	le, _ := limit.As(err)
	switch {
	case len(n.Path) > tree.MaxPathLen:
		return true, fmt.Sprintf("%.200s...: not backed up: %v", n.Path, err)
	case le != nil && le.Limit == "tree.MaxOwnerLen":
		if len(n.User) > tree.MaxOwnerLen {
			n.User = ""
		}
		if len(n.Group) > tree.MaxOwnerLen {
			n.Group = ""
		}
		if n.CheckLimits() == nil {
			return false, fmt.Sprintf("%.200s: owner name left out (only the ids are recorded): %v", n.Path, err)
		}
	}
	n.Status, n.Err = tree.StatusUnreadable, fmt.Sprintf("not recorded: %v", err)
	n.Chunks, n.Extents, n.Sparse, n.Xattrs, n.Target, n.LinkTo = nil, nil, false, nil, nil, nil
	n.User, n.Group = "", ""
	return false, fmt.Sprintf("%.200s: %s", n.Path, n.Err)
}
