package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// target is one goal of issue 2 and whether this run met it.
type target struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Want   string  `json:"want"`
	Status string  `json:"status"` // PASS, MISS or n/a
	Detail string  `json:"detail"`
}

func (r *results) find(tool, phase string) *phaseResult {
	for _, p := range r.Phases {
		if p.Tool == tool && p.Phase == phase && p.Error == "" {
			return p
		}
	}
	return nil
}

func (r *results) failure(tool, phase string) string {
	for _, p := range r.Phases {
		if p.Tool == tool && p.Phase == phase && p.Error != "" {
			return tool + " " + phase + " failed"
		}
	}
	return tool + " " + phase + " not run"
}

func status(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// evaluate checks the targets of issue 16 (issue 2's, raised): initial
// backup 3x restic (2x on many small files), incremental and no-change 5x,
// full restore 2.5x, the agent's peak RSS no higher than restic's.
func evaluate(r *results) []target {
	var ts []target
	speed := func(name, phase string, want float64) {
		t := target{Name: name, Want: fmt.Sprintf(">= %gx restic's speed", want), Status: "n/a"}
		v, rs := r.find("vaultnode", phase), r.find("restic", phase)
		switch {
		case v == nil:
			t.Detail = r.failure("vaultnode", phase)
		case rs == nil:
			t.Detail = r.failure("restic", phase)
		default:
			t.Value = rs.WallSeconds / v.WallSeconds
			t.Status = status(t.Value >= want)
			t.Detail = fmt.Sprintf("vaultnode %.2f s, restic %.2f s", v.WallSeconds, rs.WallSeconds)
		}
		ts = append(ts, t)
	}

	initial := 3.0
	if r.Shape == "small-files" && r.Tree == "" {
		initial = 2
	}
	speed("initial backup throughput", phaseInitial, initial)
	speed("incremental backup speed", phaseIncremental, 5)

	t := target{Name: "initial backup peak RSS (agent alone)", Want: "<= restic's", Status: "n/a"}
	if v, rs := r.find("vaultnode", phaseInitial), r.find("restic", phaseInitial); v != nil && rs != nil && rs.PeakRSSBytes > 0 {
		t.Value = float64(v.ClientPeakRSSBytes) / float64(rs.PeakRSSBytes)
		t.Status = status(t.Value <= 1)
		t.Detail = fmt.Sprintf("agent %s vs restic %s", mb(v.ClientPeakRSSBytes), mb(rs.PeakRSSBytes))
	} else {
		t.Detail = "needs both initial backups"
	}
	ts = append(ts, t)

	t = target{Name: "initial backup peak RSS (agent + vault)", Want: "<= restic's", Status: "n/a"}
	if v, rs := r.find("vaultnode", phaseInitial), r.find("restic", phaseInitial); v != nil && rs != nil && rs.PeakRSSBytes > 0 {
		t.Value = float64(v.PeakRSSBytes) / float64(rs.PeakRSSBytes)
		t.Status = status(t.Value <= 1)
		t.Detail = fmt.Sprintf("agent %s + vault %s vs restic %s (agent alone: %.2fx)",
			mb(v.ClientPeakRSSBytes), mb(v.ServerPeakRSSBytes), mb(rs.PeakRSSBytes),
			float64(v.ClientPeakRSSBytes)/float64(rs.PeakRSSBytes))
	} else {
		t.Detail = "needs both initial backups"
	}
	ts = append(ts, t)

	speed("no-change backup speed", phaseNoChange, 5)

	m := r.Mutation
	budget := m.BytesChanged + int64(m.Edits)*avgChunk
	t = target{Name: "incremental bytes sent", Want: "<= 1.2x (bytes changed + 1 MiB per edit)", Status: "n/a"}
	if v := r.find("vaultnode", phaseIncremental); v != nil && budget > 0 {
		t.Value = float64(v.BytesSent) / float64(budget)
		t.Status = status(t.Value <= 1.2)
		t.Detail = fmt.Sprintf("sent %s on the wire; changed %s in %d edits, allowance %s",
			mb(v.BytesSent), mb(m.BytesChanged), m.Edits, mb(int64(1.2*float64(budget))))
		if v.ReportedBytesSent != nil {
			t.Detail += fmt.Sprintf("; agent reports %s", mb(*v.ReportedBytesSent))
		}
		if rs := r.find("restic", phaseIncremental); rs != nil {
			t.Detail += fmt.Sprintf("; restic added %s (%.2fx)", mb(rs.BytesSent), float64(rs.BytesSent)/float64(budget))
		}
	} else if v != nil && m.Touched > 0 {
		t.Detail = fmt.Sprintf("no content changed (%d files touched); sent %s on the wire", m.Touched, mb(v.BytesSent))
	} else {
		t.Detail = r.failure("vaultnode", phaseIncremental)
	}
	ts = append(ts, t)

	speed("full restore speed", phaseRestore, 2.5)
	if c, ok := r.Restores["vaultnode"]; ok && !c.Identical {
		last := &ts[len(ts)-1]
		if last.Status == "PASS" {
			last.Status = "MISS"
		}
		last.Detail += "; the vaultnode restore differs from the corpus"
	}
	return ts
}

func mb(b int64) string {
	switch {
	case b >= 1e9 || b <= -1e9:
		return fmt.Sprintf("%.2f GB", float64(b)/1e9)
	case b >= 1e6 || b <= -1e6:
		return fmt.Sprintf("%.1f MB", float64(b)/1e6)
	case b >= 1e3 || b <= -1e3:
		return fmt.Sprintf("%.1f kB", float64(b)/1e3)
	}
	return fmt.Sprintf("%d B", b)
}

func mbCol(b int64) string { return fmt.Sprintf("%.1f", float64(b)/1e6) }

func printReport(w io.Writer, r *results) {
	c := r.Corpus
	if r.Tree != "" {
		fmt.Fprintf(w, "\ntree %s: %d files (%d sparse), %d dirs, %d symlinks; %s of data, %s apparent\n",
			r.Tree, c.Files, c.SparseFiles, c.Dirs, c.Symlinks, mb(c.DataBytes), mb(c.Bytes))
		if m := r.Mutation; m.Touched > 0 {
			fmt.Fprintf(w, "mutation of a copy: every file's times set, content kept (%d files)\n", m.Touched)
		} else if m.Edits > 0 {
			fmt.Fprintf(w, "mutation of a copy: %d files with an insertion, %d added, %d deleted, rename %s; %s of new content in %d edits\n",
				m.FilesEdited, m.Added, m.Deleted, m.RenamedDir, mb(m.BytesChanged), m.Edits)
		}
	} else {
		fmt.Fprintf(w, "\ncorpus: shape %s%s, scale %g seed %d: %d files (%d source-like, %d images, %d sparse), %d dirs; %s of data, %s apparent\n",
			r.Shape, map[bool]string{true: " without sparse files"}[r.NoSparse], r.Scale, r.Seed, c.Files, c.SmallFiles, c.LargeFiles, c.SparseFiles, c.Dirs, mb(c.DataBytes), mb(c.Bytes))
		if m := r.Mutation; m.Touched > 0 {
			fmt.Fprintf(w, "mutation: every file's times set, content kept (%d files)\n", m.Touched)
		} else {
			fmt.Fprintf(w, "mutation: %d files edited, %d insertions, %d append, %d hole write, %d added, %d deleted, rename %s; %s of new content in %d edits\n",
				m.FilesEdited, m.Insertions, m.Appends, m.HoleWrites, m.Added, m.Deleted, m.RenamedDir, mb(m.BytesChanged), m.Edits)
		}
	}
	fmt.Fprintf(w, "caches: %s\n", r.Caches)
	if r.RestoreFS != "" {
		fmt.Fprintf(w, "restores: %s\n", r.RestoreFS)
	}
	if r.Order != "" {
		fmt.Fprintf(w, "order: %s\n", r.Order)
	}
	fmt.Fprintf(w, "host: %s\n\n", hostLine(r.Host))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\ttool\twall s\tMB/s\tCPU s\t(agent+vault)\tother CPU s\tpeak RSS MB\t(agent+vault)\tsent MB\trecv MB\tstore +MB\t")
	for _, ph := range phases {
		for _, p := range r.Phases {
			if p.Phase != ph {
				continue
			}
			if p.Error != "" {
				fmt.Fprintf(tw, "%s\t%s\tFAILED\t\t\t\t\t\t\t\t\t\t\n", p.Phase, p.Tool)
				continue
			}
			split := func(a, b float64, f string) string {
				if p.Tool == "restic" {
					return ""
				}
				return fmt.Sprintf(f+"+"+f, a, b)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.0f\t%.2f\t%s\t%.2f\t%.0f\t%s\t%s\t%s\t%s\t\n",
				p.Phase, p.Tool, p.WallSeconds, p.MBPerSecond, p.CPUSeconds,
				split(p.ClientCPUSeconds, p.ServerCPUSeconds, "%.2f"), p.OtherCPUSeconds,
				float64(p.PeakRSSBytes)/1e6,
				split(float64(p.ClientPeakRSSBytes)/1e6, float64(p.ServerPeakRSSBytes)/1e6, "%.0f"),
				mbCol(p.BytesSent), recvCol(p), mbCol(p.StoreBytesAdded))
		}
	}
	tw.Flush()
	if n := len(r.Runs); n > 1 {
		fmt.Fprintf(w, "each row is the median of %d runs by wall time; all wall times:\n", n)
		for _, p := range r.Phases {
			fmt.Fprintf(w, "  %-11s %-9s %s\n", p.Phase, p.Tool, strings.Trim(fmt.Sprintf("%.2f", p.AllWallSeconds), "[]"))
		}
	}
	for _, p := range r.Phases {
		if p.CommitSeconds > 0 {
			fmt.Fprintf(w, "%s %s: the commit took %.3f s of the wall time\n", p.Tool, p.Phase, p.CommitSeconds)
		}
		if p.ServerPeakAnonBytes > 0 {
			fmt.Fprintf(w, "%s %s: the vault's peak RSS %s, of it anonymous (heap, stacks; the rest: mapped files, its program and the index) %s\n",
				p.Tool, p.Phase, mb(p.ServerPeakRSSBytes), mb(p.ServerPeakAnonBytes))
		}
	}
	for _, p := range r.Phases {
		switch {
		case p.Tool == "vaultnode" && p.ClientMinorFaults+p.ServerMinorFaults > 0:
			fmt.Fprintf(w, "%s %s: minor page faults %d+%d (agent+vault)\n", p.Tool, p.Phase, p.ClientMinorFaults, p.ServerMinorFaults)
		case p.ClientMinorFaults > 0:
			fmt.Fprintf(w, "%s %s: minor page faults %d\n", p.Tool, p.Phase, p.ClientMinorFaults)
		}
	}
	fmt.Fprintln(w, "restic's sent = its repository growth (local repository); vaultnode's = bytes on the wire, TLS included, as the vault counted them on its agent connections")
	fmt.Fprintln(w, "other CPU s = CPU the rest of the machine used during the phase; when it is large, other work competed and the timings are noisy")

	fmt.Fprintln(w, "\nvaultnode / restic:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tspeed (restic wall / ours)\tCPU (ours / restic)\tpeak RSS (ours / restic)\tsent (ours / restic)\tstore growth (ours / restic)\t")
	for _, ph := range phases {
		v, rs := r.find("vaultnode", ph), r.find("restic", ph)
		if v == nil || rs == nil {
			fmt.Fprintf(tw, "%s\tn/a\t\t\t\t\t\n", ph)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", ph,
			ratio(rs.WallSeconds, v.WallSeconds), ratio(v.CPUSeconds, rs.CPUSeconds),
			ratio(float64(v.PeakRSSBytes), float64(rs.PeakRSSBytes)),
			ratio(float64(v.BytesSent), float64(rs.BytesSent)),
			ratio(float64(v.StoreBytesAdded), float64(rs.StoreBytesAdded)))
	}
	tw.Flush()

	if len(r.Restores) > 0 {
		fmt.Fprintln(w, "\nrestore check (content, size, mode, file mtime, symlinks):")
		for _, name := range []string{"vaultnode", "restic", "vaultnode" + rollbackSuffix, "restic" + rollbackSuffix} {
			c, ok := r.Restores[name]
			if !ok {
				continue
			}
			if c.Identical {
				fmt.Fprintf(w, "  %s: identical to the corpus; the restored tree takes %s on disk\n", name, mb(c.AllocatedBytes))
				continue
			}
			fmt.Fprintf(w, "  %s: DIFFERS (%s, %s on disk):\n    %s\n", name, c.Root, mb(c.AllocatedBytes), strings.Join(c.Differences, "\n    "))
		}
	}

	errs := false
	for _, name := range []string{"vaultnode", "restic"} {
		if e, ok := r.SetupErrors[name]; ok {
			if !errs {
				fmt.Fprintln(w, "\nfailures:")
				errs = true
			}
			fmt.Fprintf(w, "  %s setup: %s\n", name, e)
		}
	}
	for _, p := range r.Phases {
		if p.Error != "" && p.Error != "setup failed" {
			if !errs {
				fmt.Fprintln(w, "\nfailures:")
				errs = true
			}
			fmt.Fprintf(w, "  %s %s: %s\n", p.Tool, p.Phase, p.Error)
		}
		for _, n := range p.Notes {
			fmt.Fprintf(w, "  note (%s %s): %s\n", p.Tool, p.Phase, n)
		}
	}

	fmt.Fprintln(w, "\ntargets (issue 16):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range r.Targets {
		val := ""
		if t.Status != "n/a" {
			val = fmt.Sprintf("%.2fx", t.Value)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\twant %s\t%s\n", t.Status, t.Name, val, t.Want, t.Detail)
	}
	tw.Flush()
}

func recvCol(p *phaseResult) string {
	if p.Tool == "restic" {
		return "-"
	}
	return mbCol(p.BytesReceived)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func hostLine(h map[string]string) string {
	return fmt.Sprintf("%s CPUs, load %s at start, kernel %s, %s, %s", h["cpus"], h["loadavg_at_start"], h["kernel"], h["go"], h["restic"])
}
