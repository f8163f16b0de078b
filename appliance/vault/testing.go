package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// The testing period (issue 12): during a configuration's first 24 hours
// the vault examines each new version of it and reports what a person
// should look at. The notifier (notify.go) runs the examination, keeps its
// warnings (All Computers shows them) and mails new ones to the computer's
// technical contact.

// Thresholds of the examination.
const (
	// imageMin is the size from which a swap file or VM image is worth a
	// warning.
	imageMin = 16 << 20
	// churnShare is the share of the protected data sent again per day
	// past which the change rate is "unexpectedly high"; churnMin the
	// bytes a day under which it never is.
	churnShare = 0.5
	churnMin   = 64 << 20
	// maxWarned bounds the paths one warning names.
	maxWarned = 5
)

// tempNames are directory names whose contents are temporary or caches.
var tempNames = map[string]bool{"tmp": true, "temp": true, "Temp": true, "TMP": true, ".cache": true, "cache": true, "Cache": true,
	"caches": true, "Caches": true, ".Trash": true, "Trash": true, ".thumbnails": true, "Temporary Internet Files": true}

// imageExts are the extensions of VM disk images; swapNames are swap and
// hibernation files.
var (
	imageExts = map[string]bool{".qcow2": true, ".qcow": true, ".vmdk": true, ".vdi": true, ".vhd": true, ".vhdx": true, ".img": true, ".raw": true}
	swapNames = map[string]bool{"swapfile": true, "swap.img": true, "pagefile.sys": true, "hiberfil.sys": true, "swapfile.sys": true}
)

// listingFacts is what the examination learns by reading a version's
// listing: at most maxWarned of each kind of path, and how many there were.
type listingFacts struct {
	bad       []string // unreadable or inconsistent files
	temp      []string // "dir (size)", largest first
	tempTotal int
	images    []imageFact
}

type imageFact struct {
	path  string
	size  int64
	print [32]byte // contentPrint
}

// examined remembers the listing facts of each configuration's newest
// version examined, by the listing's chunks: a version with the listing of
// the one examined before (a synchronization that found no change) is not
// read again (docs/performance.md, "The testing period's examination").
type examined struct {
	mu    sync.Mutex
	facts map[string]examinedFacts // computer + "/" + configuration
}

type examinedFacts struct {
	listing [32]byte // listingKey
	facts   *listingFacts
}

// listingKey identifies a listing by its chunks.
func listingKey(refs []tree.ChunkRef) [32]byte {
	h := sha256.New()
	for _, r := range refs {
		h.Write(r.ID[:])
	}
	return [32]byte(h.Sum(nil))
}

func sameListing(a, b []tree.ChunkRef) bool {
	return slices.EqualFunc(a, b, func(x, y tree.ChunkRef) bool { return x.ID == y.ID })
}

// examineConfig looks at the versions of one configuration and answers its
// warnings, most important first. ms are its versions, oldest first.
func (v *Vault) examineConfig(ctx context.Context, cp catalog.Computer, cfg wire.Config, ms []wire.Manifest) ([]string, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	newest := ms[len(ms)-1]
	memoKey, lkey := cp.ID+"/"+cfg.Name, listingKey(newest.Listing)
	v.examined.mu.Lock()
	memo, ok := v.examined.facts[memoKey]
	v.examined.mu.Unlock()
	var facts *listingFacts
	if ok && memo.listing == lkey {
		facts = memo.facts
	} else {
		var err error
		if facts, err = v.readListingFacts(ctx, cp.Company, cfg, newest); err != nil {
			return nil, err
		}
		v.examined.mu.Lock()
		if v.examined.facts == nil {
			v.examined.facts = map[string]examinedFacts{}
		}
		v.examined.facts[memoKey] = examinedFacts{listing: lkey, facts: facts}
		v.examined.mu.Unlock()
	}
	var warns []string
	if t := newest.Totals; t.Unreadable+t.Inconsistent > 0 {
		warns = append(warns, fmt.Sprintf("%d file(s) could not be read or kept changing while read, so the newest version is not complete: %s",
			t.Unreadable+t.Inconsistent, listNames(facts.bad, int(t.Unreadable+t.Inconsistent))))
	}
	if facts.tempTotal > 0 {
		warns = append(warns, fmt.Sprintf("temporary or cache directories are backed up; their contents are thrown away and remade, so they only cost space and time: %s. Exclude them (-exclude)",
			listNames(facts.temp, facts.tempTotal)))
	}
	if len(facts.images) > 0 {
		changed := map[string]bool{}
		if len(ms) > 1 && !sameListing(ms[len(ms)-2].Listing, newest.Listing) {
			prints := map[string][32]byte{}
			for _, im := range facts.images {
				prints[im.path] = im.print
			}
			_, err := v.walkListing(ctx, cp.Company, ms[len(ms)-2].Listing, func(n *tree.Node) bool {
				if p, ok := prints[string(n.Path)]; ok && p != contentPrint(n) {
					changed[string(n.Path)] = true
				}
				return false
			})
			if err != nil {
				return nil, err
			}
		}
		var names []string
		for _, im := range facts.images {
			s := fmt.Sprintf("%s (%s", im.path, humanBytes(im.size))
			if changed[im.path] {
				s += ", changed since the previous version"
			}
			names = append(names, s+")")
		}
		warns = append(warns, fmt.Sprintf("swap files or virtual machine images are backed up; they change constantly, so every synchronization sends them again: %s. Exclude them, or back up the machines inside",
			listNames(names, len(names))))
	}

	// The change rate after the first complete version.
	first := -1
	for i, m := range ms {
		if m.Complete() {
			first = i
			break
		}
	}
	if first >= 0 && first < len(ms)-1 {
		var sent int64
		for _, m := range ms[first+1:] {
			sent += m.Totals.BytesSent
		}
		span := newest.Finished.Sub(ms[first].Finished)
		protected := newest.Totals.Bytes
		if span >= time.Hour && protected > 0 {
			perDay := int64(float64(sent) / span.Hours() * 24)
			if perDay >= churnMin && float64(perDay) > churnShare*float64(protected) {
				warns = append(warns, fmt.Sprintf("an unexpectedly high change rate: about %s a day is sent again (%.0f%% of the %s protected); look for logs, databases or images that are rewritten whole",
					humanBytes(perDay), 100*float64(perDay)/float64(protected), humanBytes(protected)))
			}
		}
	}
	return warns, nil
}

// readListingFacts reads a version's listing once for the examination.
func (v *Vault) readListingFacts(ctx context.Context, company string, cfg wire.Config, m wire.Manifest) (*listingFacts, error) {
	g := factsGatherer{roots: cfgRoots(cfg.Paths)}
	_, err := v.walkListing(ctx, company, m.Listing, func(n *tree.Node) bool {
		g.add(n)
		return false
	})
	if err != nil {
		return nil, err
	}
	return g.finish(), nil
}

// rememberFacts keeps the listing facts a commit gathered while it checked
// the listing, for the examination of that version.
func (v *Vault) rememberFacts(computer, config string, listing []tree.ChunkRef, f *listingFacts) {
	v.examined.mu.Lock()
	defer v.examined.mu.Unlock()
	if v.examined.facts == nil {
		v.examined.facts = map[string]examinedFacts{}
	}
	v.examined.facts[computer+"/"+config] = examinedFacts{listing: listingKey(listing), facts: f}
}

// factsGatherer gathers a listing's facts node by node.
type factsGatherer struct {
	roots     [][]byte // the configuration's roots as listing paths: what they are under is not examined
	f         listingFacts
	tempBytes map[string]int64
	tempOrder []string
}

func (g *factsGatherer) add(n *tree.Node) {
	if (n.Status == tree.StatusUnreadable || n.Status == tree.StatusInconsistent) && len(g.f.bad) < maxWarned {
		g.f.bad = append(g.f.bad, string(n.Path))
	}
	if n.Type != tree.TypeFile {
		return
	}
	if dir := g.tempDirOf(n.Path); dir != nil {
		if g.tempBytes == nil {
			g.tempBytes = map[string]int64{}
		}
		if _, ok := g.tempBytes[string(dir)]; !ok {
			g.tempOrder = append(g.tempOrder, string(dir))
		}
		g.tempBytes[string(dir)] += n.Size
	}
	if n.Size >= imageMin && len(g.f.images) < maxWarned {
		p := string(n.Path)
		base := path.Base(p)
		if swapNames[strings.ToLower(base)] || imageExts[strings.ToLower(path.Ext(base))] {
			g.f.images = append(g.f.images, imageFact{path: p, size: n.Size, print: contentPrint(n)})
		}
	}
}

// merge adds what o gathered from the nodes after g's (a commit's second
// half, commit_split.go), as if g had been handed them in turn: the first
// files of each kind in listing order, the directories' sizes summed and
// kept in the order first met.
func (g *factsGatherer) merge(o *factsGatherer) {
	for _, b := range o.f.bad {
		if len(g.f.bad) < maxWarned {
			g.f.bad = append(g.f.bad, b)
		}
	}
	for _, im := range o.f.images {
		if len(g.f.images) < maxWarned {
			g.f.images = append(g.f.images, im)
		}
	}
	for _, d := range o.tempOrder {
		if g.tempBytes == nil {
			g.tempBytes = map[string]int64{}
		}
		if _, ok := g.tempBytes[d]; !ok {
			g.tempOrder = append(g.tempOrder, d)
		}
		g.tempBytes[d] += o.tempBytes[d]
	}
}

func (g *factsGatherer) finish() *listingFacts {
	f := g.f
	slices.SortStableFunc(g.tempOrder, func(a, b string) int { return int(min(max(g.tempBytes[b]-g.tempBytes[a], -1), 1)) })
	f.tempTotal = len(g.tempOrder)
	for _, d := range g.tempOrder[:min(len(g.tempOrder), maxWarned)] {
		f.temp = append(f.temp, fmt.Sprintf("%s (%s)", d, humanBytes(g.tempBytes[d])))
	}
	return &f
}

// cfgRoots answers a configuration's roots as they begin listing paths
// (without the leading slash; "" for the whole system).
func cfgRoots(paths []string) [][]byte {
	roots := make([][]byte, 0, len(paths))
	for _, p := range paths {
		roots = append(roots, []byte(strings.Trim(path.Clean("/"+p), "/")))
	}
	return roots
}

// tempDirOf answers the outermost temporary or cache directory holding p
// beneath the configuration's root that holds it: a root the operator chose
// under /tmp, or named cache, is what they asked for, not a mistake.
func (g *factsGatherer) tempDirOf(p []byte) []byte {
	start := 0
	for _, r := range g.roots {
		if len(r) == 0 || !bytes.HasPrefix(p, r) || len(p) <= len(r) || p[len(r)] != '/' {
			continue
		}
		start = max(start, len(r)+1)
	}
	if dir := tempDirOf(p[start:]); dir != nil {
		return p[:start+len(dir)]
	}
	return nil
}

// tempDirOf answers the outermost temporary or cache directory holding p,
// as a prefix of p (nil when none), without allocating.
func tempDirOf(p []byte) []byte {
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '/')
		if j < 0 {
			return nil // the last part is the file's own name
		}
		if tempNames[string(p[i:i+j])] {
			return p[:i+j]
		}
		i += j + 1
	}
}

// contentPrint identifies a file's content: its size, time and chunks.
func contentPrint(n *tree.Node) [32]byte {
	h := sha256.New()
	fmt.Fprintf(h, "%d %d.%d", n.Size, n.Mtime.Sec, n.Mtime.Nsec)
	for _, c := range n.Chunks {
		h.Write(c.ID[:])
	}
	return [32]byte(h.Sum(nil))
}

func listNames(names []string, total int) string {
	if len(names) > maxWarned {
		names = names[:maxWarned]
	}
	s := strings.Join(names, ", ")
	if total > len(names) {
		s += fmt.Sprintf(" and %d more", total-len(names))
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// walkListing reads a version's listing and answers the nodes keep chose
// (at most maxWarned kept).
func (v *Vault) walkListing(ctx context.Context, company string, listing []tree.ChunkRef, keep func(*tree.Node) bool) ([]*tree.Node, error) {
	k, err := v.companyKeys(company)
	if err != nil {
		return nil, err
	}
	lr := v.listingReader(company, k, listing, nil)
	defer lr.Close()
	rd, err := tree.NewListingReader(lr, listing)
	if err != nil {
		return nil, fmt.Errorf("read listing: %w", err)
	}
	var out []*tree.Node
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := rd.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read listing: %w", err)
		}
		if keep(n) && len(out) < maxWarned {
			out = append(out, n)
		}
	}
}
